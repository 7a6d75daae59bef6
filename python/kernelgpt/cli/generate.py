"""`kernelgpt generate`: continue a prompt with a GGUF model (default: SmolLM2-135M-Instruct).

Also the options `kernelgpt chat` shares (model, weights, sampling, device).
"""
from __future__ import annotations

import sys

from ..generate import GenerationStats
from ..llama import load_model


def add_model_arguments(p) -> None:
    p.add_argument("--model", default="smollm2", help="'smollm2' (kernelgpt fetch smollm2) or a .gguf path")
    p.add_argument("--weights", choices=["quantized", "fp32", "bf16"], default="quantized",
                   help="quantized: as stored in the GGUF; fp32: dequantized; bf16: rounded to bfloat16")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--min-p", type=float, default=0.0)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stats", action="store_true", help="print prefill and decode speed")
    p.add_argument("--device", choices=["cpu", "cuda", "emu"], default="cpu",
                   help="cpu (default): C++ kernels; cuda: CUDA kernels on a GPU (CuPy); emu: "
                        "the CUDA kernels on the CPU emulator (very slow, for checking)")


def sampling_settings(args) -> dict:
    return dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                min_p=args.min_p, repetition_penalty=args.repetition_penalty)


def print_stats(stats) -> None:
    print(f"[{stats.prompt_tokens} prompt tokens in {stats.prefill_seconds * 1e3:.0f} ms "
          f"({stats.prompt_tokens / max(stats.prefill_seconds, 1e-9):.0f} tok/s), "
          f"{len(stats.new_tokens)} new tokens at {stats.decode_tokens_per_second:.1f} tok/s]",
          file=sys.stderr)


def add_arguments(p) -> None:
    add_model_arguments(p)
    p.add_argument("--prompt", required=True, help="text to continue (no chat template)")
    p.add_argument("--chat", action="store_true", help="wrap the prompt as one user message")


def main(args) -> int:
    model = load_model(args.model, weights=args.weights, device=args.device)
    stats = GenerationStats()
    if args.chat:
        pieces = model.chat([{"role": "user", "content": args.prompt}], args.max_new_tokens,
                            seed=args.seed, stats=stats, **sampling_settings(args))
    else:
        sys.stdout.write(args.prompt)
        pieces = model.generate(args.prompt, args.max_new_tokens, stream=True, seed=args.seed,
                                stats=stats, **sampling_settings(args))
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    if args.stats:
        print_stats(stats)
    return 0


