"""`kernelgpt train`: train a GPT on text (kernelgpt.train does the work)."""
from __future__ import annotations

import dataclasses

from ..model import GPTConfig
from ..train import MODEL_PRESETS, TrainConfig, train
from ._common import add_threads_argument, positive_int

# --flag help for each TrainConfig field the command exposes (their defaults are added).
TRAIN_HELP = {
    "batch_size": "sequences per micro-batch",
    "grad_accum": "micro-batches whose gradients are added up before each optimizer step "
                  "(a step sees batch_size x grad_accum sequences)",
    "max_iters": "optimizer steps in the whole run (with --resume: extends or shortens it)",
    "learning_rate": "peak learning rate, reached after the warmup",
    "min_lr": "learning rate at the end of the cosine decay",
    "warmup_iters": "steps of linear warmup from 0 to --learning-rate",
    "lr_decay_iters": "step at which the cosine decay reaches --min-lr (default: --max-iters)",
    "weight_decay": "AdamW weight decay of the weight matrices and token embeddings (not "
                    "of biases, norms or position embeddings)",
    "beta1": "AdamW beta1: decay of the gradient's running mean",
    "beta2": "AdamW beta2: decay of the squared gradient's running mean",
    "grad_clip": "clip the global gradient norm to this; 0 = no clipping",
    "eval_interval": "estimate the validation loss and write a checkpoint every N steps",
    "eval_iters": "batches averaged for each loss estimate",
    "log_interval": "log (log.csv, and a line with --no-progress) every N steps",
    "keep_checkpoints": "checkpoints kept in --out (older ones are deleted)",
    "seed": "random seed: initial weights and batch order",
    "val_fraction": "fraction of the data held out for the validation loss",
}
_NOT_FLAGS = ("data", "out", "tokenizer", "bpe_vocab_size", "progress", "plot", "device",
              "precision")


def add_arguments(p) -> None:
    p.description = (p.description or "") + (
        "\n\nWith --resume the run's saved settings are used: an option given on the command "
        "line overrides them (the defaults below are those of a new run).")
    p.add_argument("--data", nargs="+", default=["shakespeare"], metavar="PATH",
                   help="'shakespeare' (built in) or text files / directories")
    p.add_argument("--out", default="runs/kernelgpt",
                   help="checkpoint directory (also log.csv and loss.png)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--tokenizer", default="char", choices=["char", "bpe", "cl100k_base"],
                   help="char: one token per character; bpe: a BPE vocabulary trained on the "
                        "data; cl100k_base: GPT-4's vocabulary")
    p.add_argument("--bpe-vocab-size", type=positive_int, default=1024, metavar="N",
                   help="vocabulary size for --tokenizer bpe")
    p.add_argument("--preset", default="baby", choices=sorted(MODEL_PRESETS),
                   help="model size: " + "; ".join(
                       f"{name} = " + ", ".join(f"{k} {v}" for k, v in preset.items())
                       for name, preset in sorted(MODEL_PRESETS.items())))
    model_help = {"n_layer": "transformer blocks", "n_head": "attention heads",
                  "n_kv_head": "key/value heads (fewer than --n-head: grouped-query attention)",
                  "n_embd": "embedding width", "block_size": "context length in tokens"}
    for name, text in model_help.items():
        p.add_argument("--" + name.replace("_", "-"), type=positive_int, default=None,
                       metavar="N", help=text + " (default: from --preset)")
    d = GPTConfig()
    p.add_argument("--positions", choices=["learned", "sinusoidal", "rope"], default=None,
                   help=f"position encoding (default: {d.positions})")
    p.add_argument("--norm", choices=["layernorm", "rmsnorm"], default=None,
                   help=f"normalization; rmsnorm also drops the biases (default: {d.norm})")
    p.add_argument("--activation", choices=["gelu", "swiglu", "relu"], default=None,
                   help=f"MLP activation (default: {d.activation})")
    for f in dataclasses.fields(TrainConfig):
        if f.name in _NOT_FLAGS:
            continue
        typ = {int: int, float: float}.get(type(f.default), float)
        if f.name == "lr_decay_iters":
            typ = int
        text = TRAIN_HELP.get(f.name, f"TrainConfig.{f.name}")
        if "(default" not in text:
            text += f" (default: {f.default})"
        p.add_argument("--" + f.name.replace("_", "-"), type=typ, default=None,
                       metavar="N" if typ is int else "X", help=text)
    p.add_argument("--device", choices=["cpu", "cuda", "emu"], default=None,
                   help="cpu: C++ kernels; cuda: the CUDA kernels on a GPU through "
                        "CuPy (pip install '.[cuda]'); emu: the same CUDA kernels on the CPU "
                        "emulator (slow, for checking the GPU path without a GPU) (default: cpu)")
    p.add_argument("--precision", choices=["fp32", "bf16", "auto"], default=None,
                   help="bf16: every matrix product with bf16 operands and fp32 accumulation "
                        "(AVX512-BF16 on the CPU, tensor cores on a GPU), fp32 master weights, "
                        "gradients and optimizer state; auto: bf16 where the processor "
                        "multiplies bf16 natively (default: fp32)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar: print one plain line every --log-interval steps "
                        "(step, loss, validation loss when estimated, tokens/s, time)")
    p.add_argument("--no-plot", action="store_true", help="do not draw loss.png")
    add_threads_argument(p)


def main(args) -> int:
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                 if getattr(args, f.name, None) is not None and f.name not in ("data", "out")}
    tc = TrainConfig(data=list(args.data), out=args.out, tokenizer=args.tokenizer,
                     bpe_vocab_size=args.bpe_vocab_size,
                     progress="lines" if args.no_progress else True, plot=not args.no_plot)
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
