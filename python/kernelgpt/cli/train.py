"""`kernelgpt train`: train a GPT on text (kernelgpt.train does the work)."""
from __future__ import annotations

import dataclasses
import math

from ..model import GPTConfig
from ..train import FIXED_ON_RESUME, MODEL_PRESETS, TrainConfig, train
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
        "\n\nWith --resume the run's saved settings are used: a training option given on the "
        "command line overrides them; the model, the data and the tokenizer stay those of the "
        "run (a different value is an error). The defaults below are those of a new run. "
        "Ctrl-C stops after the current step and saves a checkpoint.")
    p.add_argument("--data", nargs="+", default=None, metavar="PATH",
                   help="'shakespeare' (built in) or text files / directories "
                        "(default: shakespeare)")
    p.add_argument("--out", default="runs/kernelgpt",
                   help="checkpoint directory (also log.csv and loss.png)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--stop-after", type=positive_int, default=None, metavar="N",
                   help="stop after N steps of this invocation, with a checkpoint (split a run: "
                        "--resume then continues exactly as an unbroken run would)")
    p.add_argument("--tokenizer", default=None, choices=["char", "bpe", "cl100k_base"],
                   help="char: one token per character; bpe: a BPE vocabulary trained on the "
                        "data; cl100k_base: GPT-4's vocabulary (default: char)")
    p.add_argument("--bpe-vocab-size", type=positive_int, default=None, metavar="N",
                   help="vocabulary size for --tokenizer bpe (default: 1024)")
    p.add_argument("--preset", default=None, choices=sorted(MODEL_PRESETS),
                   help="model size (default: baby): " + "; ".join(
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
    p.add_argument("--moe", type=_moe_spec, default=None, metavar="ExK",
                   help="every MLP a mixture of E experts, K per token (top-K routing, a "
                        "load-balancing loss, no token dropped), e.g. 8x2 (default: dense)")
    p.add_argument("--layers", type=_layers_spec, default=None, metavar="KINDS",
                   help="each block's sequence mixer, comma-separated: attn (attention) or ssm "
                        "(a Mamba-style state-space layer), e.g. ssm,attn,ssm,attn for a "
                        "hybrid; sets --n-layer (default: attn in every block)")
    p.add_argument("--ssm-state", type=positive_int, default=None, metavar="N",
                   help=f"state size per channel of the ssm layers (default: {d.ssm_state})")
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
    g = p.add_argument_group(
        "several processes (data parallel)",
        "Run under mpiexec (mpiexec -n N kernelgpt train ...; pip install 'kernelgpt[mpi]'), or "
        "give --nproc: every rank trains on its --batch-size share of each step's N x "
        "--batch-size sequences and the gradients are averaged (MPI on the CPU, NCCL with "
        "--device cuda). Rank 0 writes --out. Without --threads each rank gets its share of "
        "this machine's CPUs.")
    g.add_argument("--nproc", type=positive_int, default=None, metavar="N",
                   help="start N ranks on this machine through mpiexec (the MPI wheel's, or "
                        "the first on PATH)")
    g.add_argument("--zero1", action="store_true",
                   help="ZeRO stage 1: each rank keeps AdamW's moments for 1/N of the "
                        "parameters only (the same steps, N times less optimizer memory)")
    g.add_argument("--bucket-mb", type=float, default=4.0, metavar="X",
                   help="size of the gradient buckets all-reduced while the backward pass "
                        "goes on (default: 4)")


_MODEL_FLAGS = ("n_layer", "n_head", "n_kv_head", "n_embd", "block_size", "positions", "norm",
                "activation", "ssm_state")


def _moe_spec(text: str):
    """'8x2' -> (8, 2): experts, experts per token."""
    import argparse
    try:
        e, k = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected EXPERTSxACTIVE such as 8x2, got {text!r}") from None
    if e < 1 or not 1 <= k <= e:
        raise argparse.ArgumentTypeError(f"needs 1 <= active <= experts, got {text!r}")
    return e, k


def _layers_spec(text: str):
    """'ssm,attn' -> ('ssm', 'attn')."""
    import argparse
    kinds = tuple(k.strip() for k in text.split(","))
    bad = [k for k in kinds if k not in ("attn", "ssm")]
    if bad:
        raise argparse.ArgumentTypeError(f"layer kinds are attn and ssm, got {bad[0]!r} in {text!r}")
    return kinds


def _model_kwargs(args, explicit_only: bool) -> dict:
    """GPTConfig keywords from --preset and the model flags (only those given, if
    explicit_only)."""
    kwargs = {} if explicit_only and args.preset is None else dict(MODEL_PRESETS[args.preset or "baby"])
    for name in _MODEL_FLAGS:
        if getattr(args, name, None) is not None:
            kwargs[name] = getattr(args, name)
    if kwargs.get("norm") == "rmsnorm":
        kwargs.setdefault("bias", False)
    if getattr(args, "moe", None) is not None:
        kwargs["n_expert"], kwargs["n_expert_active"] = args.moe
    if getattr(args, "layers", None) is not None:
        kwargs["layers"] = args.layers
        if getattr(args, "n_layer", None) is None:
            kwargs["n_layer"] = len(args.layers)
    return kwargs


def _check_resume_flags(args, out) -> None:
    """--resume keeps the saved model, data and tokenizer: a flag asking for different ones
    is an error that names them (the same values, as in a repeated command line, are fine)."""
    from ..checkpoint import latest_checkpoint, load_config
    asked = _model_kwargs(args, explicit_only=True)
    data = {k: getattr(args, k, None) for k in FIXED_ON_RESUME}
    data = {k: v for k, v in data.items() if v is not None}
    if not asked and not data:
        return
    cfg, config = load_config(latest_checkpoint(out))  # the weights are read once, by train
    saved_train = cfg.get("train", {})
    wrong = [f"--{k.replace('_', '-')} {v} (the run has {getattr(config, k)})"
             for k, v in asked.items() if getattr(config, k) != v]
    wrong += [f"--{k.replace('_', '-')} {v} (the run has {saved_train.get(k)})"
              for k, v in data.items() if k in saved_train and saved_train[k] != v]
    if wrong:
        raise ValueError("--resume continues the run saved in " + str(out) + " with its own "
                         "model, data and tokenizer: " + "; ".join(wrong) +
                         ". Drop these flags, or train into a new --out")


def _relaunch(args) -> int:
    """--nproc N: this same command line under `mpiexec -n N`, with --threads set to each
    rank's share of the CPUs unless given."""
    import os
    import subprocess
    import sys

    from ..distributed import find_mpiexec, launched_by_mpi
    if launched_by_mpi():
        raise ValueError("--nproc starts mpiexec itself: drop it when running under mpiexec")
    cleaned, skip = [], False
    for a in args.argv:  # the command line as given, without --nproc N / --nproc=N
        if skip:
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        if a.startswith("--nproc="):
            continue
        cleaned.append(a)
    if args.threads is None:
        cleaned += ["--threads", str(max(1, _cpus() // args.nproc))]
    cmd = [find_mpiexec(), "-n", str(args.nproc), sys.executable, "-m", "kernelgpt"] + cleaned
    try:
        return subprocess.call(cmd, env=os.environ.copy())
    except KeyboardInterrupt:  # mpiexec forwarded it to the ranks, which save and stop
        return 130


def _cpus() -> int:
    import os
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def main(args) -> int:
    if args.nproc is not None and args.nproc > 1:
        return _relaunch(args)
    from ..distributed import communicator_for, one_fails_all_stop
    comm = communicator_for(args.device or "cpu")
    if comm.size > 1 and args.threads is None:  # share this machine's cores between its ranks
        from .. import set_num_threads
        set_num_threads(max(1, _cpus() // comm.local_size))
    with one_fails_all_stop(comm):
        return _run(args, comm)


def _run(args, comm) -> int:
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                 if getattr(args, f.name, None) is not None
                 and f.name not in ("data", "out") + FIXED_ON_RESUME}
    tc = TrainConfig(out=args.out, progress="lines" if args.no_progress else True,
                     plot=not args.no_plot)
    if args.resume:
        if comm.rank == 0:  # (only rank 0 has the run folder)
            _check_resume_flags(args, args.out)
        result = train(tc, resume=True, stop_after=args.stop_after, overrides=overrides,
                       comm=comm, zero1=args.zero1, bucket_mb=args.bucket_mb)
    else:
        new_run = {"data": list(args.data or ["shakespeare"]), "tokenizer": args.tokenizer or "char",
                   "bpe_vocab_size": args.bpe_vocab_size or 1024}
        if getattr(args, "seed", None) is not None:
            new_run["seed"] = args.seed
        if getattr(args, "val_fraction", None) is not None:
            new_run["val_fraction"] = args.val_fraction
        tc = dataclasses.replace(tc, **new_run)
        result = train(tc, GPTConfig(vocab_size=1, **_model_kwargs(args, explicit_only=False)),
                       stop_after=args.stop_after, overrides=overrides, comm=comm,
                       zero1=args.zero1, bucket_mb=args.bucket_mb)
    if comm.rank != 0:  # rank 0 reports for all
        return 130 if result.get("interrupted") else 0
    val = result["val_loss"]
    if result["checkpoint"]:
        where = f"checkpoint in {result['checkpoint']}"
    else:
        where = (f"nothing to train (the run is at step {result['step']} of --max-iters "
                 f"{result['max_iters']}), no checkpoint written")
    loss = "no step taken" if math.isnan(result["loss"]) else f"train loss {result['loss']:.4f}"
    print(f"step {result['step']}: {loss}"
          + (f", val loss {val:.4f}" if val is not None else "")
          + f" ({result['seconds']:.1f} s); {where}")
    return 130 if result.get("interrupted") else 0
