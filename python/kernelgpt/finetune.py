"""Fine-tuning a pretrained model (SmolLM2 or any Llama GGUF) on our own kernels:
supervised fine-tuning (SFT) on conversations and direct preference optimization (DPO) on
preference pairs, with LoRA adapters (lora.py) or every weight.

    kernelgpt finetune sft --task arithmetic --out runs/sft        # or --data chats.jsonl
    kernelgpt finetune dpo --task arithmetic --out runs/dpo --init runs/sft
    kernelgpt finetune eval --task arithmetic --adapters runs/dpo

Data (JSONL, one object per line, the formats TRL and OpenAI use):
  SFT:  {"messages": [{"role": "user", "content": ...}, {"role": "assistant", ...}, ...]}
        rendered with the model's chat template; the loss covers the assistant turns only
        (their text and the end-of-turn token the template closes them with).
  DPO:  {"prompt": str or messages, "chosen": str or messages, "rejected": str or messages}
A line that is not valid UTF-8 or JSON, lacks a field, has no assistant turn or does not fit
the context raises DataError naming the file and the line.

SFT minimizes the mean cross-entropy of the assistant tokens. DPO (see align.py) minimizes
-log sigmoid(beta * [(log p(chosen) - log p_ref(chosen)) - (log p(rejected) - log p_ref(rejected))])
with the reference log-probabilities computed once, before the first step, and cached in the
run directory.

A run directory holds log.csv, loss.png, run.json (the settings) and ckpt-<step>/ checkpoints
(trainable.safetensors: the adapters, or every weight for a full fine-tune; optimizer.safetensors;
state.json), each written to a temporary directory and renamed, `latest` naming the newest:
``--resume`` continues bit for bit as an unbroken run would.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import ops
from .align import IGNORE
from .io import safetensors
from .io.atomic import atomic_write_bytes, fsync_dir
from .lora import LoRA

__all__ = ["FinetuneConfig", "DataError", "Example", "Pair", "conversation_tokens",
           "load_sft", "load_pairs", "finetune", "load_tuned", "evaluate"]

METHODS = ("sft", "dpo")


class DataError(ValueError):
    """A bad line in a fine-tuning data file: names the file and the line."""

    def __init__(self, path, line: int, problem: str):
        super().__init__(f"{path}, line {line}: {problem}")
        self.path, self.line = path, line


@dataclass
class FinetuneConfig:
    method: str = "sft"            # "sft" | "dpo"
    model: str = "smollm2"         # a GGUF file or known name (load_model), loaded as fp32
    data: str = ""                 # a JSONL file (written from --task when given)
    init: str = ""                 # a finetune run whose adapters (or weights) to start from
    lora_rank: int = 8             # 0: full fine-tuning (every weight)
    lora_alpha: float = 16.0
    lora_targets: str = "all"      # lora.resolve_targets
    steps: int = 100
    batch_size: int = 8
    learning_rate: float = 1e-3
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1      # the cosine decay ends at learning_rate * this
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    beta: float = 0.1              # DPO's beta
    max_len: int = 512             # longest example in tokens (prompt + answer)
    seed: int = 0
    checkpoint_every: int = 50
    keep_checkpoints: int = 2

    def validate(self) -> "FinetuneConfig":
        checks = [
            (self.method in METHODS, f"method must be one of {', '.join(METHODS)}"),
            (self.lora_rank >= 0, "lora_rank must be >= 0 (0: full fine-tuning)"),
            (self.lora_alpha > 0 and math.isfinite(self.lora_alpha), "lora_alpha must be > 0"),
            (self.steps >= 1, "steps must be >= 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.learning_rate > 0 and math.isfinite(self.learning_rate),
             "learning_rate must be > 0"),
            (self.warmup_steps >= 0, "warmup_steps must be >= 0"),
            (0 <= self.min_lr_ratio <= 1, "min_lr_ratio must be in [0, 1]"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (self.grad_clip >= 0, "grad_clip must be >= 0 (0: no clipping)"),
            (self.beta > 0 and math.isfinite(self.beta), "beta must be > 0"),
            (self.max_len >= 2, "max_len must be >= 2"),
            (self.checkpoint_every >= 1, "checkpoint_every must be >= 1"),
            (self.keep_checkpoints >= 1, "keep_checkpoints must be >= 1"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"finetune: {msg}")
        return self


# ---- data ---------------------------------------------------------------------------------------

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
    assistant turns: each assistant turn's span is the text between the conversation so far
    rendered with the generation prompt and the same conversation with that turn added."""
    from .chat import normalize_messages
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
    tok = model.tokenizer
    ids: List[int] = []
    mask: List[bool] = []
    bos_id = getattr(tok, "bos_token_id", None)
    if getattr(tok, "add_bos_token", False) and bos_id is not None:
        ids.append(bos_id)
        mask.append(False)
    pos = 0
    for a, b in spans + [(len(full), len(full))]:
        for text, learn in ((full[pos:a], False), (full[a:b], True)):
            if text:
                piece = tok.encode(text, allowed_special="all")
                ids += piece
                mask += [learn] * len(piece)
        pos = b
    return Example(np.asarray(ids, np.int64), np.asarray(mask, bool))


def _messages_field(obj, key, path, n, *, role: Optional[str] = None):
    if key not in obj:
        raise DataError(path, n, f"missing field {key!r}")
    v = obj[key]
    if isinstance(v, str):
        return [{"role": role or "user", "content": v}]
    if isinstance(v, list) and v and all(isinstance(m, dict) for m in v):
        return v
    raise DataError(path, n, f"{key!r} must be a string or a list of messages, got "
                    f"{type(v).__name__}")


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


def _check_length(n_tokens, max_len, model, path, n):
    limit = min(max_len, model.config.block_size)
    if n_tokens > limit:
        raise DataError(path, n, f"the example is {n_tokens} tokens long, over the limit of "
                        f"{limit} (max_len {max_len}, the model's context "
                        f"{model.config.block_size}): shorten it or raise --max-len")


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
        if len(p1) == 0:
            raise DataError(path, n, "the prompt is empty")
        out.append(Pair(p1, chosen, rejected))
    return out


def _sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ---- batches and steps ------------------------------------------------------------------------

def _order(n: int, step: int, batch: int, seed: int) -> List[int]:
    """The examples of step `step`: epoch after epoch, each a fresh permutation from the seed
    (so a resumed run picks the same ones)."""
    idx = []
    for k in range(step * batch, (step + 1) * batch):
        epoch, j = divmod(k, n)
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        idx.append(int(perm[j]))
    return idx


def _pad(seqs: Sequence[Tuple[np.ndarray, np.ndarray]], pad_id: int) -> Tuple[np.ndarray, np.ndarray]:
    """(inputs, targets) [B, T] from (ids, mask) pairs: targets are the next tokens where the
    mask says learn, IGNORE elsewhere and in the padding (T rounded up to 16)."""
    T = max(len(ids) for ids, _ in seqs) - 1
    T = -(-T // 16) * 16
    x = np.full((len(seqs), T), pad_id, np.int64)
    y = np.full((len(seqs), T), IGNORE, np.int64)
    for r, (ids, mask) in enumerate(seqs):
        n = len(ids) - 1
        x[r, :n] = ids[:-1]
        y[r, :n] = np.where(mask[1:], ids[1:], IGNORE)
    return x, y


def _answer_batch(prompt, answer):
    ids = np.concatenate([prompt, answer])
    mask = np.zeros(len(ids), bool)
    mask[len(prompt):] = True
    return ids, mask


def sequence_logprobs(gpt, seqs, pad_id: int) -> np.ndarray:
    """log p(answer | prompt) of each (prompt, answer), forward passes only."""
    out = []
    for prompt, answer in seqs:
        x, y = _pad([_answer_batch(prompt, answer)], pad_id)
        out.append(-gpt.loss(x, y) * len(answer))
    return np.asarray(out, np.float64)


def _sft_step(gpt, examples, pad_id, grads) -> Dict[str, float]:
    x, y = _pad([(e.ids, e.mask) for e in examples], pad_id)
    loss = gpt.forward_backward(x, y)
    return {"loss": loss, "tokens": int(np.count_nonzero(y != IGNORE))}


def _dpo_step(gpt, pairs, refs, beta, pad_id, grads) -> Dict[str, float]:
    """Adds the DPO gradient of the batch of pairs into `grads` (zeroed by the caller)."""
    total = np.zeros_like(grads.data)
    losses, correct, margins, kls = [], 0, [], []
    for p, (ref_c, ref_r) in zip(pairs, refs):
        grads.zero()
        x, y = _pad([_answer_batch(p.prompt, p.chosen)], pad_id)
        logp_c = -gpt.forward_backward(x, y) * len(p.chosen)
        g_c = grads.data.copy()
        grads.zero()
        x, y = _pad([_answer_batch(p.prompt, p.rejected)], pad_id)
        logp_r = -gpt.forward_backward(x, y) * len(p.rejected)
        z = beta * ((logp_c - ref_c) - (logp_r - ref_r))
        losses.append(np.logaddexp(0.0, -z))       # -log sigmoid(z)
        coef = beta / (1.0 + math.exp(z)) / len(pairs)  # beta * sigmoid(-z) / batch
        # d loss / d theta = -coef * (d logp_c - d logp_r), d logp = -len * d(mean CE)
        total += np.float32(coef * len(p.chosen)) * g_c
        total -= np.float32(coef * len(p.rejected)) * grads.data
        correct += z > 0
        margins.append(z / beta)
        kls.append(((logp_c - ref_c) + (logp_r - ref_r)) / 2)
    grads.data[...] = total
    return {"loss": float(np.mean(losses)), "reward_accuracy": correct / len(pairs),
            "margin": float(np.mean(margins)), "logp_shift": float(np.mean(kls))}


# ---- the run ------------------------------------------------------------------------------------

def _lr(step: int, fc: FinetuneConfig) -> float:
    if step < fc.warmup_steps:
        return fc.learning_rate * (step + 1) / (fc.warmup_steps + 1)
    span = max(1, fc.steps - fc.warmup_steps)
    t = min(1.0, (step - fc.warmup_steps) / span)
    low = fc.learning_rate * fc.min_lr_ratio
    return low + 0.5 * (fc.learning_rate - low) * (1 + math.cos(math.pi * t))


def _latest(out: Path) -> Optional[Path]:
    pointer = out / "latest"
    if not pointer.exists():
        return None
    target = out / pointer.read_text().strip()
    if not (target / "state.json").exists():
        raise FileNotFoundError(f"{pointer} names {target}, which holds no state.json")
    return target


def _save(out: Path, step: int, params, m, v, state: dict, keep: int) -> Path:
    name = f"ckpt-{step:06d}"
    final, tmp = out / name, out / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        safetensors.save({n: np.asarray(params[n]) for n in params.names()},
                         tmp / "trainable.safetensors", metadata={"format": "np"})
        safetensors.save({"m": m, "v": v}, tmp / "optimizer.safetensors")
        (tmp / "state.json").write_text(json.dumps(state, indent=1))
        fsync_dir(tmp)
        shutil.rmtree(final, ignore_errors=True)
        tmp.replace(final)
        fsync_dir(out)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OSError(err.errno, f"could not save checkpoint {name} ({err.strerror or err}); "
                                 f"{out / 'latest'} still names the previous one") from None
    atomic_write_bytes(out / "latest", (name + "\n").encode())
    old = sorted(p for p in out.glob("ckpt-*") if p.is_dir() and p.name != name)
    for p in old[: max(0, len(old) - (keep - 1))]:
        shutil.rmtree(p, ignore_errors=True)
    return final


def _load_trainable(ckpt: Path, params, where: str) -> None:
    tensors, _ = safetensors.load(ckpt / "trainable.safetensors")
    for n in params.names():
        t = tensors.get(n)
        if t is None or tuple(t.shape) != tuple(params[n].shape):
            raise ValueError(f"{where}: {ckpt / 'trainable.safetensors'}: tensor {n!r} is "
                             f"missing or has another shape (a run of another model or LoRA "
                             "setting?)")
        params[n][...] = t


def load_tuned(run, model=None, weights: str = "fp32"):
    """The model a finetune run (its directory, or one of its ckpt-* directories) ends with:
    its base model (or `model`, already loaded with fp32 weights) with the adapters merged
    in (or the fully tuned weights). Returns a TextModel."""
    from .llama import load_model
    run = Path(run)
    ckpt = run if (run / "state.json").exists() else _latest(run)
    if ckpt is None:
        raise FileNotFoundError(f"no finetune checkpoint in {run} (no latest, no state.json)")
    state = json.loads((ckpt / "state.json").read_text())
    fc = state["config"]
    if model is None:
        model = load_model(fc["model"], weights=weights)
    _attach(model, state.get("lora"), ckpt, "load_tuned")
    return model


def _attach(model, lora_settings, ckpt: Path, where: str) -> None:
    """Applies checkpoint `ckpt` to `model`: its adapters merged in, or its full weights."""
    gpt = model.gpt
    if lora_settings:
        lora = LoRA(gpt, rank=lora_settings["rank"], alpha=lora_settings["alpha"],
                    targets=lora_settings["targets"], seed=None)
        _load_trainable(ckpt, lora.params, where)
        lora.merge()
    else:
        _load_trainable(ckpt, gpt.params, where)
    model._pool.clear()


def _progress(step, steps, row, t_start, stream) -> None:
    bits = ", ".join(f"{k} {row[k]:.4f}" for k in ("loss", "reward_accuracy", "margin")
                     if k in row)
    done = int(30 * step / steps)
    stream.write(f"\r[{'#' * done}{'.' * (30 - done)}] step {step}/{steps}: {bits}, "
                 f"{time.perf_counter() - t_start:.0f} s ")
    stream.flush()


def finetune(fc: FinetuneConfig, out, *, resume: bool = False, model=None,
             stop_after: Optional[int] = None, progress: bool = True, plot: bool = True) -> dict:
    """Runs `fc` into directory `out` (see the module docstring). model: the base model already
    loaded with fp32 weights (else fc.model is loaded). Returns a summary dict: the last
    step's metrics, the trainable parameter count and the seconds per step."""
    from .llama import load_model
    from .train import _write_csv
    fc.validate()
    out = Path(out)
    ckpt = _latest(out) if resume else None
    if resume and ckpt is None:
        raise FileNotFoundError(f"--resume: no checkpoint in {out}")
    if not resume and _latest(out) is not None:
        raise FileExistsError(f"{out} already holds a finetune run: --resume to continue it, or "
                              "choose another --out")
    if ckpt is not None:
        saved = json.loads((ckpt / "state.json").read_text())
        fixed = {k: v for k, v in saved["config"].items()
                 if k not in ("steps", "checkpoint_every", "keep_checkpoints")}
        fc = dataclasses.replace(FinetuneConfig(**fixed), steps=fc.steps,
                                 checkpoint_every=fc.checkpoint_every,
                                 keep_checkpoints=fc.keep_checkpoints).validate()
    if not fc.data:
        raise ValueError("finetune: no data (a JSONL file, or --task to generate one)")
    if model is None:
        model = load_model(fc.model, weights="fp32")
    if model.gpt.packed:
        raise ValueError("finetune needs fp32 weights: load the model with weights='fp32'")
    gpt = model.gpt
    if fc.init:
        init = Path(fc.init)
        init_ckpt = init if (init / "state.json").exists() else _latest(init)
        if init_ckpt is None:
            raise FileNotFoundError(f"--init: no finetune checkpoint in {init}")
        _attach(model, json.loads((init_ckpt / "state.json").read_text()).get("lora"),
                init_ckpt, "--init")
    lora = None
    if fc.lora_rank:
        lora = LoRA(gpt, rank=fc.lora_rank, alpha=fc.lora_alpha, targets=fc.lora_targets,
                    seed=fc.seed)
        params, grads = lora.params, lora.grads
    else:
        gpt.zero_grad()
        params, grads = gpt.params, gpt.grads
    tok = model.tokenizer
    pad_id = int(getattr(tok, "eos_token_id", None) or 0)
    data_hash = _sha256(fc.data)
    if fc.method == "sft":
        data = load_sft(model, fc.data, fc.max_len)
    else:
        data = load_pairs(model, fc.data, fc.max_len)
    m = np.zeros(params.size, np.float32)
    v = np.zeros(params.size, np.float32)
    step, rows = 0, []
    out.mkdir(parents=True, exist_ok=True)
    refs = None
    if fc.method == "dpo":
        ref_path = out / "reference_logps.json"
        if ref_path.exists():
            cached = json.loads(ref_path.read_text())
            if cached.get("data_sha256") == data_hash and len(cached["logps"]) == len(data):
                refs = [tuple(r) for r in cached["logps"]]
        if refs is None:
            if ckpt is not None:
                raise ValueError(f"{ref_path} is missing or does not match the data: the "
                                 "reference log-probabilities of a resumed DPO run must be "
                                 "the ones it started with")
            logps = sequence_logprobs(gpt, [(p.prompt, a) for p in data
                                            for a in (p.chosen, p.rejected)], pad_id)
            refs = [(float(logps[2 * i]), float(logps[2 * i + 1])) for i in range(len(data))]
            atomic_write_bytes(ref_path, json.dumps({"data_sha256": data_hash,
                                                     "logps": refs}).encode())
    if ckpt is not None:
        state = json.loads((ckpt / "state.json").read_text())
        if state.get("data_sha256") != data_hash:
            raise ValueError(f"--resume: {fc.data} changed since the run started")
        _load_trainable(ckpt, params, "--resume")
        o, _ = safetensors.load(ckpt / "optimizer.safetensors")
        m[...], v[...] = o["m"], o["v"]
        step = int(state["step"])
        rows = state["log"]
        if lora is not None:
            lora.apply()
    else:
        (out / "run.json").write_text(json.dumps(dataclasses.asdict(fc), indent=1))
    n_trainable = params.size
    fields = ["step", "lr", "loss", "grad_norm", "seconds", "tokens", "reward_accuracy",
              "margin", "logp_shift"]
    t_start = time.perf_counter()
    this_call = 0
    stream = sys.stderr
    while step < fc.steps and (stop_after is None or this_call < stop_after):
        t0 = time.perf_counter()
        lr = _lr(step, fc)
        grads.zero()
        idx = _order(len(data), step, fc.batch_size, fc.seed)
        batch = [data[i] for i in idx]
        if fc.method == "sft":
            row = _sft_step(gpt, batch, pad_id, grads)
        else:
            row = _dpo_step(gpt, batch, [refs[i] for i in idx], fc.beta, pad_id, grads)
        if not math.isfinite(row["loss"]):
            raise FloatingPointError(f"step {step}: the loss is {row['loss']} (lower the "
                                     "learning rate?)")
        gnorm = (ops.clip_grad_norm(grads.data, fc.grad_clip) if fc.grad_clip > 0
                 else ops.grad_norm(grads.data))
        ops.adamw_step(params.data, grads.data, m, v, step=step + 1, lr=lr,
                       weight_decay=fc.weight_decay)
        if lora is not None:
            lora.apply()
        step += 1
        this_call += 1
        row.update(step=step, lr=lr, grad_norm=float(gnorm),
                   seconds=time.perf_counter() - t0)
        rows.append({k: (round(x, 6) if isinstance(x, float) else x) for k, x in row.items()})
        if progress:
            _progress(step, fc.steps, row, t_start, stream)
        if step % fc.checkpoint_every == 0 or step == fc.steps or (
                stop_after is not None and this_call == stop_after):
            state = {"step": step, "config": dataclasses.asdict(fc), "data_sha256": data_hash,
                     "lora": lora.settings() if lora else None, "log": rows}
            _save(out, step, params, m, v, state, fc.keep_checkpoints)
            _write_csv(out / "log.csv", fields, rows)
            if plot:
                _plot(rows, out / "loss.png", fc.method)
    if progress:
        stream.write("\n")
    model._pool.clear()
    secs = [r["seconds"] for r in rows[-this_call:]] if this_call else []
    return {"step": step, "trainable": n_trainable, "last": rows[-1] if rows else {},
            "seconds_per_step": float(np.median(secs)) if secs else None,
            "model": model, "lora": lora}


def _plot(rows, path: Path, method: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    keys = ["loss"] + (["reward_accuracy", "logp_shift"] if method == "dpo" else [])
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.2), squeeze=False)
    steps = [r["step"] for r in rows]
    for ax, k in zip(axes[0], keys):
        ax.plot(steps, [r.get(k, float("nan")) for r in rows])
        ax.set_xlabel("step")
        ax.set_title({"loss": f"{method} loss", "reward_accuracy": "pairs ranked right",
                      "logp_shift": "mean log p shift from the reference (KL proxy)"}[k],
                     fontsize=9)
    fig.tight_layout()
    from .io.atomic import atomic_write
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=90))
    plt.close(fig)


# ---- evaluation ---------------------------------------------------------------------------------

def evaluate(model, tasks, max_tokens: int = 16) -> dict:
    """Greedy replies to each task's prompt, scored (align_tasks.score_reply): accuracy (the
    fraction exactly right in the form asked), mean score, and the replies."""
    replies, scores = [], []
    for t in tasks:
        r = model.chat(t.messages(), max_tokens=max_tokens, temperature=0, stream=False)
        text = str(r)
        replies.append(text)
        scores.append(t.score(text))
    scores = np.asarray(scores)
    return {"accuracy": float(np.mean(scores == 1.0)) if len(scores) else 0.0,
            "mean_score": float(np.mean(scores)) if len(scores) else 0.0,
            "n": len(tasks), "replies": replies}
