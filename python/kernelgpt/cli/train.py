"""`kernelgpt train`: train a GPT on text (kernelgpt.train does the work)."""
from __future__ import annotations

import dataclasses

from ..model import GPTConfig
from ..train import MODEL_PRESETS, TrainConfig, train


def add_arguments(p) -> None:
    p.add_argument("--data", nargs="+", default=["shakespeare"],
                   help="'shakespeare' (built in) or text files / directories (default: shakespeare)")
    p.add_argument("--out", default="runs/kernelgpt", help="checkpoint directory")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--tokenizer", default="char", choices=["char", "bpe", "cl100k_base"])
    p.add_argument("--bpe-vocab-size", type=int, default=1024)
    p.add_argument("--preset", default="baby", choices=sorted(MODEL_PRESETS),
                   help="model size (default: baby = nanoGPT's CPU config)")
    for name, typ in [("n_layer", int), ("n_head", int), ("n_kv_head", int), ("n_embd", int),
                      ("block_size", int)]:
        p.add_argument("--" + name.replace("_", "-"), type=typ, default=None)
    p.add_argument("--positions", choices=["learned", "sinusoidal", "rope"], default=None)
    p.add_argument("--norm", choices=["layernorm", "rmsnorm"], default=None)
    p.add_argument("--activation", choices=["gelu", "swiglu", "relu"], default=None)
    for f in dataclasses.fields(TrainConfig):
        if f.name in ("data", "out", "tokenizer", "bpe_vocab_size", "progress", "plot", "device",
                      "precision"):
            continue
        typ = {int: int, float: float}.get(type(f.default), float)
        if f.name == "lr_decay_iters":
            typ = int
        p.add_argument("--" + f.name.replace("_", "-"), type=typ, default=None)
    p.add_argument("--device", choices=["cpu", "cuda", "emu"], default=None,
                   help="cpu (default): C++ kernels; cuda: the CUDA kernels on a GPU through "
                        "CuPy (pip install '.[cuda]'); emu: the same CUDA kernels on the CPU "
                        "emulator (slow, for checking the GPU path without a GPU)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default=None,
                   help="bf16 (with --device cuda/emu): matrix products on bf16 tensor cores, "
                        "fp32 master weights, gradients and optimizer state")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-plot", action="store_true")


def main(args) -> int:
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                 if getattr(args, f.name, None) is not None and f.name not in ("data", "out")}
    tc = TrainConfig(data=list(args.data), out=args.out, tokenizer=args.tokenizer,
                     bpe_vocab_size=args.bpe_vocab_size, progress=not args.no_progress,
                     plot=not args.no_plot)
    max_iters = overrides.pop("max_iters", None)
    tc = dataclasses.replace(tc, **overrides)
    if args.resume:
        result = train(tc, resume=True, max_iters=max_iters)
    else:
        model_kwargs = dict(MODEL_PRESETS[args.preset])
        for name in ("n_layer", "n_head", "n_kv_head", "n_embd", "block_size", "positions",
                     "norm", "activation"):
            if getattr(args, name, None) is not None:
                model_kwargs[name] = getattr(args, name)
        if model_kwargs.get("norm") == "rmsnorm":
            model_kwargs.setdefault("bias", False)
        result = train(tc, GPTConfig(vocab_size=1, **model_kwargs), max_iters=max_iters)
    val = result["val_loss"]
    print(f"step {result['step']}: train loss {result['loss']:.4f}"
          + (f", val loss {val:.4f}" if val is not None else "")
          + f" ({result['seconds']:.1f} s); checkpoint in {result['out']}")
    return 0
