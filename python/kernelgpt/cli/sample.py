"""`kernelgpt sample`: stream text from a checkpoint (default: the shipped Shakespeare model)."""
from __future__ import annotations

import sys

from ..checkpoint import load_checkpoint
from ..generate import GenerationStats, default_model_dir, generate
from ..sampling import SamplingConfig


def add_arguments(p) -> None:
    p.add_argument("--ckpt", default=None,
                   help="checkpoint directory (default: the Shakespeare model shipped with kernelgpt)")
    p.add_argument("--prompt", default="\n", help="text to continue")
    p.add_argument("--max-new-tokens", type=int, default=500)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--min-p", type=float, default=0.0)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--stats", action="store_true", help="print tokens/s at the end")


def main(args) -> int:
    path = args.ckpt or default_model_dir()
    model, tokenizer, _, _, _ = load_checkpoint(path)
    stats = GenerationStats()
    cfg = SamplingConfig(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                         min_p=args.min_p, repetition_penalty=args.repetition_penalty)
    sys.stdout.write(args.prompt)
    for piece in generate(model, tokenizer, args.prompt, args.max_new_tokens, cfg, seed=args.seed,
                          stop_strings=args.stop, stats=stats):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    if args.stats:
        print(f"[{stats.prompt_tokens} prompt tokens in {stats.prefill_seconds * 1e3:.1f} ms, "
              f"{len(stats.new_tokens)} new tokens at {stats.decode_tokens_per_second:.1f} tok/s]",
              file=sys.stderr)
    return 0
