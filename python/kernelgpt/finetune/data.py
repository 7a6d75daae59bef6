"""Fine-tuning data: JSONL files read line by line, every problem named by file and line.

  SFT:              {"messages": [{"role": "user", "content": ...}, {"role": "assistant", ...}]}
  reward, DPO:      {"prompt": str or messages, "chosen": str or messages, "rejected": ...}
  PPO, GRPO:        {"prompt": str or messages}   (other fields are ignored, so a DPO file works)

Conversations are rendered with the model's chat template; the loss covers the assistant
turns only: each turn's span is the text between the conversation so far rendered with the
generation prompt and the same conversation with that turn added (its text and the
end-of-turn token the template closes it with).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..align import IGNORE

__all__ = ["DataError", "Example", "Pair", "Prompt", "conversation_tokens", "load_sft",
           "load_pairs", "load_prompts", "pad_batch", "answer_sequence", "file_sha256"]


class DataError(ValueError):
    """A bad line in a fine-tuning data file: names the file and the line."""

    def __init__(self, path, line: int, problem: str):
        super().__init__(f"{path}, line {line}: {problem}")
        self.path, self.line = path, line


@dataclass
class Example:
    """A tokenized conversation: ids, and which of them the loss covers (assistant turns)."""
    ids: np.ndarray   # int64 [T]
    mask: np.ndarray  # bool [T]: True for tokens the model is trained to produce


@dataclass
class Pair:
    """A tokenized preference pair: the shared prompt and the two answers' tokens."""
    prompt: np.ndarray
    chosen: np.ndarray
    rejected: np.ndarray


@dataclass
class Prompt:
    """A prompt for sampling (PPO, GRPO): its token ids (ending with the generation prompt)
    and its text (the user's last message), which the reward function sees."""
    ids: np.ndarray
    text: str


def file_sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _read_jsonl(path) -> List[Tuple[int, dict]]:
    path = Path(path)
    raw = path.read_bytes()
    out = []
    for n, line in enumerate(raw.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(path, n, f"not valid UTF-8 (byte {e.start})") from None
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(path, n, f"not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise DataError(path, n, f"expected a JSON object, got {type(obj).__name__}")
        out.append((n, obj))
    if not out:
        raise DataError(path, 1, "the file holds no examples")
    return out


def conversation_tokens(model, messages) -> Example:
    """The ids of `messages` rendered with the model's chat template, and the mask of the
    assistant turns (see the module docstring)."""
    from ..chat import normalize_messages
    fmt = model.chat_format()
    msgs = normalize_messages(messages)
    if not any(m["role"] == "assistant" for m in msgs):
        raise ValueError("the conversation has no assistant turn (nothing to learn)")
    if msgs[0]["role"] == "assistant":
        raise ValueError("the conversation starts with an assistant turn (no prompt before it)")
    full = fmt.render(msgs, add_generation_prompt=False)
    spans = []
    for k, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        before = fmt.render(msgs[:k], add_generation_prompt=True)
        through = fmt.render(msgs[:k + 1], add_generation_prompt=False)
        if not (through.startswith(before) and full.startswith(through)):
            raise ValueError("the chat template does not render the conversation turn by turn "
                             "(an earlier turn's text changes when a later one is added), so the "
                             "assistant tokens cannot be found")
        spans.append((len(before), len(through)))
    ids: List[int] = _bos(model)
    mask: List[bool] = [False] * len(ids)
    pos = 0
    for a, b in spans + [(len(full), len(full))]:
        for text, learn in ((full[pos:a], False), (full[a:b], True)):
            if text:
                piece = model.tokenizer.encode(text, allowed_special="all")
                ids += piece
                mask += [learn] * len(piece)
        pos = b
    return Example(np.asarray(ids, np.int64), np.asarray(mask, bool))


def _bos(model) -> List[int]:
    tok = model.tokenizer
    bos_id = getattr(tok, "bos_token_id", None)
    if getattr(tok, "add_bos_token", False) and bos_id is not None:
        return [bos_id]
    return []


def _messages_field(obj, key, path, n, *, role: Optional[str] = None):
    if key not in obj:
        raise DataError(path, n, f"missing field {key!r}")
    v = obj[key]
    if isinstance(v, str):
        if not v:
            raise DataError(path, n, f"{key!r} is empty")
        return [{"role": role or "user", "content": v}]
    if isinstance(v, list) and v and all(isinstance(m, dict) for m in v):
        return v
    raise DataError(path, n, f"{key!r} must be a string or a list of messages, got "
                    f"{type(v).__name__}")


def _check_length(n_tokens, max_len, model, path, n):
    limit = min(max_len, model.config.block_size)
    if n_tokens > limit:
        raise DataError(path, n, f"the example is {n_tokens} tokens long, over the limit of "
                        f"{limit} (max_len {max_len}, the model's context "
                        f"{model.config.block_size}): shorten it or raise --max-len")


def load_sft(model, path, max_len: int) -> List[Example]:
    """Tokenized SFT examples from a JSONL file of {"messages": [...]} lines."""
    out = []
    for n, obj in _read_jsonl(path):
        if "messages" not in obj:
            raise DataError(path, n, "missing field 'messages' (SFT lines are "
                            "{\"messages\": [{\"role\": ..., \"content\": ...}, ...]})")
        msgs = obj["messages"]
        if not isinstance(msgs, list):
            raise DataError(path, n, f"'messages' must be a list, got {type(msgs).__name__}")
        try:
            ex = conversation_tokens(model, msgs)
        except (TypeError, ValueError) as e:
            raise DataError(path, n, str(e)) from None
        _check_length(len(ex.ids), max_len, model, path, n)
        out.append(ex)
    return out


def load_pairs(model, path, max_len: int) -> List[Pair]:
    """Tokenized preference pairs from a JSONL file of {"prompt", "chosen", "rejected"}."""
    out = []
    for n, obj in _read_jsonl(path):
        prompt = _messages_field(obj, "prompt", path, n)
        answers = []
        for key in ("chosen", "rejected"):
            ans = _messages_field(obj, key, path, n, role="assistant")
            if ans[-1].get("role") != "assistant":
                raise DataError(path, n, f"{key!r} must end with an assistant message")
            try:
                ex = conversation_tokens(model, prompt + ans)
            except (TypeError, ValueError) as e:
                raise DataError(path, n, str(e)) from None
            _check_length(len(ex.ids), max_len, model, path, n)
            first = int(np.argmax(ex.mask))  # the prompt: everything before the first answer
            answers.append((ex.ids[:first], ex.ids[first:]))
        (p1, chosen), (p2, rejected) = answers
        if not np.array_equal(p1, p2):
            raise DataError(path, n, "the chosen and rejected answers render different prompts")
        out.append(Pair(p1, chosen, rejected))
    return out


def load_prompts(model, path, max_len: int) -> List[Prompt]:
    """Prompts for sampling from a JSONL file of {"prompt": ...} lines."""
    from ..chat import normalize_messages
    out = []
    for n, obj in _read_jsonl(path):
        msgs = _messages_field(obj, "prompt", path, n)
        try:
            msgs = normalize_messages(msgs)
            ids = model.encode_chat(msgs, add_generation_prompt=True)
        except (TypeError, ValueError) as e:
            raise DataError(path, n, str(e)) from None
        _check_length(len(ids) + 1, max_len, model, path, n)
        out.append(Prompt(np.asarray(ids, np.int64), msgs[-1]["content"]))
    return out


def pad_batch(seqs: Sequence[Tuple[np.ndarray, np.ndarray]], pad_id: int
              ) -> Tuple[np.ndarray, np.ndarray]:
    """(inputs, targets) [B, T] from (ids, mask) pairs: targets are the next tokens where the
    mask says learn, IGNORE elsewhere and in the padding, which follows each sequence up to the
    longest (as Hugging Face's collators pad)."""
    T = max(1, max(len(ids) for ids, _ in seqs) - 1)
    x = np.full((len(seqs), T), pad_id, np.int64)
    y = np.full((len(seqs), T), IGNORE, np.int64)
    for r, (ids, mask) in enumerate(seqs):
        n = len(ids) - 1
        x[r, :n] = ids[:-1]
        y[r, :n] = np.where(mask[1:], ids[1:], IGNORE)
    return x, y


def answer_sequence(prompt, answer) -> Tuple[np.ndarray, np.ndarray]:
    """(ids, mask) of a prompt followed by an answer, the mask on the answer."""
    ids = np.concatenate([prompt, answer]).astype(np.int64)
    mask = np.zeros(len(ids), bool)
    mask[len(prompt):] = True
    return ids, mask
