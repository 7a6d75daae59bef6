"""`kernelgpt generate`: continue a prompt with a GGUF model (default: SmolLM2-135M-Instruct).

Also the options `kernelgpt chat` shares (model, weights, context, template, sampling,
device, threads).
"""
from __future__ import annotations

import sys

from ..generate import GenerationStats
from ..llama import load_model
from ._common import (add_max_tokens_argument, add_sampling_arguments, add_threads_argument,
                      positive_int, sampling_settings)

__all__ = ["add_model_arguments", "sampling_settings", "print_stats", "load_model_from_args"]


def add_model_arguments(p, max_new_tokens: int = 256) -> None:
    p.add_argument("--model", default="smollm2",
                   help="'smollm2' (kernelgpt fetch smollm2), a .gguf path or a checkpoint "
                        "directory written by kernelgpt train")
    p.add_argument("--weights", choices=["quantized", "fp32", "bf16"], default="quantized",
                   help="quantized: as stored in the GGUF; fp32: dequantized; bf16: rounded to "
                        "bfloat16")
    p.add_argument("--max-context", type=positive_int, default=None, metavar="N",
                   help="a shorter context than the model's, in tokens: smaller KV caches "
                        "(default: the model's context length)")
    p.add_argument("--kv-dtype", choices=["float16", "float32"], default=None,
                   help="the KV cache's dtype (default: float16 with quantized weights, as "
                        "llama.cpp; float32 otherwise)")
    p.add_argument("--template", default=None, metavar="NAME|FILE|JINJA",
                   help="the chat template: 'chatml', a Jinja template file or string "
                        "(default: the model file's tokenizer.chat_template)")
    add_max_tokens_argument(p, max_new_tokens)
    add_sampling_arguments(p)
    p.add_argument("--stats", action="store_true", help="print prefill and decode speed")
    p.add_argument("--device", choices=["cpu", "cuda", "emu"], default="cpu",
                   help="cpu: C++ kernels; cuda: CUDA kernels on a GPU (CuPy); emu: "
                        "the CUDA kernels on the CPU emulator (very slow, for checking)")
    add_threads_argument(p)


def load_model_from_args(args):
    """The model the options name (after checking the sampling options, which is quick)."""
    sampling_settings(args)
    return load_model(args.model, weights=args.weights, max_context=args.max_context,
                      device=args.device, template=args.template, kv_dtype=args.kv_dtype)


def print_stats(stats) -> None:
    print(f"[{stats.prompt_tokens} prompt tokens in {stats.prefill_seconds * 1e3:.0f} ms "
          f"({stats.prompt_tokens / max(stats.prefill_seconds, 1e-9):.0f} tok/s), "
          f"{len(stats.new_tokens)} new tokens at {stats.decode_tokens_per_second:.1f} tok/s]",
          file=sys.stderr)


def print_cut_note(stats, max_new_tokens: int, what: str = "text") -> None:
    """On stderr, why a reply ended before it was finished, if it did."""
    if stats.stop_reason == "length":
        print(f"[{what} cut at {max_new_tokens} tokens: --max-new-tokens]", file=sys.stderr)
    elif stats.stop_reason == "context":
        print(f"[{what} cut: the context is full (--max-context)]", file=sys.stderr)


def add_arguments(p) -> None:
    add_model_arguments(p)
    p.add_argument("--prompt", required=True, help="text to continue (no chat template)")
    p.add_argument("--chat", action="store_true", help="wrap the prompt as one user message")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--json-schema", metavar="FILE|JSON", default=None,
                   help="the text is JSON that follows this schema (a file or the schema "
                        "itself; needs the structured extra)")
    g.add_argument("--regex", metavar="RE", default=None,
                   help="the text matches this regular expression")
    g.add_argument("--grammar", metavar="FILE|TEXT", default=None,
                   help="the text follows this Lark or GBNF grammar (a file or the text)")


def structured_settings(args) -> dict:
    """--json-schema / --regex / --grammar as generate()'s keyword arguments."""
    import json
    import pathlib
    out = {}
    if args.json_schema is not None:
        text = args.json_schema
        if not text.lstrip().startswith("{") and pathlib.Path(text).is_file():
            text = pathlib.Path(text).read_text(encoding="utf-8")
        try:
            out["json_schema"] = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"--json-schema is neither a JSON object nor a file of one: {e}") \
                from None
    if args.regex is not None:
        out["regex"] = args.regex
    if args.grammar is not None:
        text = args.grammar
        if "\n" not in text and pathlib.Path(text).is_file():
            text = pathlib.Path(text).read_text(encoding="utf-8")
        out["grammar"] = text
    return out


def main(args) -> int:
    structured = structured_settings(args)
    model = load_model_from_args(args)
    stats = GenerationStats()
    if args.chat:
        pieces = model.chat([{"role": "user", "content": args.prompt}], args.max_new_tokens,
                            seed=args.seed, stats=stats, **structured, **sampling_settings(args))
    else:
        if not structured:
            sys.stdout.write(args.prompt)
        pieces = model.generate(args.prompt, args.max_new_tokens, stream=True, seed=args.seed,
                                stats=stats, **structured, **sampling_settings(args))
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    print_cut_note(stats, args.max_new_tokens)
    if args.stats:
        print_stats(stats)
    return 0
