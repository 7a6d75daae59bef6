"""`kernelgpt sample`: stream text from a checkpoint (default: the shipped Shakespeare model)."""
from __future__ import annotations

import sys

from ..checkpoint import load_checkpoint
from ..generate import GenerationStats, default_model_dir, generate
from ..sampling import SamplingConfig
from ._common import (add_max_tokens_argument, add_sampling_arguments, add_threads_argument,
                      sampling_settings)


def add_arguments(p) -> None:
    p.add_argument("--ckpt", default=None,
                   help="checkpoint directory written by kernelgpt train (default: the "
                        "Shakespeare model shipped with kernelgpt)")
    p.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    add_max_tokens_argument(p, 500)
    add_sampling_arguments(p)
    p.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="stop when the text contains TEXT (repeatable)")
    p.add_argument("--stats", action="store_true", help="print tokens/s at the end")
    add_threads_argument(p)


def main(args) -> int:
    cfg = SamplingConfig(**sampling_settings(args))
    path = args.ckpt or default_model_dir()
    model, tokenizer, _, _, _ = load_checkpoint(path)
    stats = GenerationStats()
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
