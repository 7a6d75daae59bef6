"""Training: the loop, the learning-rate schedule, clipping and evaluation.

    kernelgpt train --data shakespeare --out runs/shakespeare
    kernelgpt train --resume --out runs/shakespeare      # continue exactly where it stopped

One step: for each of ``grad_accum`` micro-batches, forward + backward (model.forward_backward
adds gradients); clip the global gradient norm; AdamW with linear warmup then cosine decay of
the learning rate. Every ``eval_interval`` steps the validation loss is estimated and a
checkpoint written; a CSV log and a loss-curve PNG sit beside it.

Checkpoints (checkpoint.py) are written atomically: a kill at any moment leaves the previous
one usable. A resumed run continues bit-identically: the same losses as an uninterrupted run,
for the same thread count, however the run is split (``stop_after`` / ``--stop-after``): the
schedule's length (lr_decay_iters, max_iters by default) is saved with the run. Ctrl-C stops
at the end of the current step and saves a checkpoint (a second Ctrl-C quits at once). The
output folder is checked, locked against a second trainer and cleaned of a crashed run's
leftovers before the first step (io/run_dir.py). The data (tokenized once into
OUT/tokens.bin) comes from data.py.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import math
import os
import signal
import socket
import sys
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Union

import numpy as np
from tqdm import tqdm

from . import _version, ops
from . import tokenizer as bpe
from .checkpoint import (CheckpointError, check_resume_state, latest_checkpoint, load_checkpoint,
                         save_checkpoint)
from .data import CharTokenizer, TokenData, read_texts
from .device import array_module, to_numpy
from .distributed import (Communicator, DistributedSetupError, GradReducer, communicator_for,
                          one_fails_all_stop, shard_bounds)
from .io.atomic import atomic_write_bytes
from .io.run_dir import open_run_dir
from .model import GPT, GPTConfig

# load_checkpoint and save_checkpoint live in checkpoint.py; they stay importable from here.
__all__ = ["TrainConfig", "train", "load_checkpoint", "save_checkpoint", "latest_checkpoint",
           "FIXED_ON_RESUME"]

# Settings a resumed run cannot change: they decide the data, its split and the tokenizer.
FIXED_ON_RESUME = ("data", "tokenizer", "bpe_vocab_size", "seed", "val_fraction")


@dataclass
class TrainConfig:
    data: List[str] = field(default_factory=lambda: ["shakespeare"])
    tokenizer: str = "char"          # "char" | "bpe" (trained on the data) | "cl100k_base"
    bpe_vocab_size: int = 1024
    out: str = "runs/kernelgpt"
    batch_size: int = 12
    grad_accum: int = 1
    max_iters: int = 2000
    learning_rate: float = 1e-3
    min_lr: float = 1e-4
    warmup_iters: int = 100
    lr_decay_iters: Optional[int] = None  # None: = max_iters
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0           # 0 disables clipping
    eval_interval: int = 250
    eval_iters: int = 20
    log_interval: int = 10
    keep_checkpoints: int = 2
    seed: int = 1337
    val_fraction: float = 0.1
    progress: Union[bool, str] = True  # True: a tqdm bar; "lines": a line per log_interval
    plot: bool = True
    device: str = "cpu"              # "cpu" | "cuda" (CuPy, a GPU) | "emu" (the CUDA emulator)
    precision: str = "fp32"          # "bf16": bf16 matrix products, fp32 master weights; "auto"

    def validate(self):
        checks = [
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.grad_accum >= 1, "grad_accum must be >= 1"),
            (self.max_iters >= 0, "max_iters must be >= 0"),
            (self.learning_rate > 0 and math.isfinite(self.learning_rate), "learning_rate must be > 0"),
            (0 <= self.min_lr <= self.learning_rate, "min_lr must be in [0, learning_rate]"),
            (self.warmup_iters >= 0, "warmup_iters must be >= 0"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "betas must be in [0, 1)"),
            (self.grad_clip >= 0, "grad_clip must be >= 0"),
            (self.eval_interval >= 1 and self.eval_iters >= 1, "eval_interval, eval_iters >= 1"),
            (0 < self.val_fraction < 1, "val_fraction must be in (0, 1)"),
            (self.tokenizer in ("char", "bpe", "cl100k_base"), f"unknown tokenizer {self.tokenizer!r}"),
            (self.device in ("cpu", "cuda", "emu"), f"device must be cpu, cuda or emu, got {self.device!r}"),
            (self.precision in ("fp32", "bf16", "auto"),
             f"precision must be fp32, bf16 or auto, got {self.precision!r}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"TrainConfig: {msg}")
        return self


def learning_rate(step: int, tc: TrainConfig) -> float:
    """Linear warmup to learning_rate, cosine decay to min_lr at lr_decay_iters."""
    decay_iters = tc.lr_decay_iters or tc.max_iters
    if step < tc.warmup_iters:
        return tc.learning_rate * (step + 1) / (tc.warmup_iters + 1)
    if step >= decay_iters:
        return tc.min_lr
    ratio = (step - tc.warmup_iters) / max(1, decay_iters - tc.warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))
    return tc.min_lr + coeff * (tc.learning_rate - tc.min_lr)


# ---- tokenizers ---------------------------------------------------------------------------------

def make_tokenizer(kind: str, text: str, vocab_size: int):
    if kind == "char":
        return CharTokenizer.from_text(text)
    if kind == "bpe":
        return bpe.train([text], vocab_size)
    return bpe.get_encoding(kind)


# ---- the loop -----------------------------------------------------------------------------------

def _prepare_data(tc: TrainConfig, out: Path, tokenizer=None):
    """Tokenizes the training text into OUT/tokens.bin once (reused on resume)."""
    token_file = out / "tokens.bin"
    if tokenizer is None:
        text = read_texts(tc.data)
        tokenizer = make_tokenizer(tc.tokenizer, text, tc.bpe_vocab_size)
        ids = tokenizer.encode(text) if tc.tokenizer == "char" else tokenizer.encode_ordinary(text)
        TokenData.write(token_file, ids, tokenizer.n_vocab)
    elif not token_file.exists():
        text = read_texts(tc.data)
        ids = tokenizer.encode(text) if tc.tokenizer == "char" else tokenizer.encode_ordinary(text)
        TokenData.write(token_file, ids, tokenizer.n_vocab)
    return tokenizer, TokenData(token_file, tokenizer.n_vocab, tc.val_fraction)


def estimate_loss(model: GPT, data: TokenData, tc: TrainConfig, block: int, seed: int,
                  comm: Optional[Communicator] = None) -> Dict[str, float]:
    """Mean loss over eval_iters batches of each split, drawn with a fixed seed (the same
    batches every time, so the curve is comparable and resuming does not perturb training).
    With N data-parallel ranks each batch has N x batch_size sequences, each rank evaluating
    its share."""
    comm = comm or Communicator()
    out = {}
    for split in ("train", "val"):
        rng = np.random.default_rng([seed, 1 if split == "train" else 2])
        losses = [model.loss(*data.batch(split, tc.batch_size, block, rng, part=(comm.rank, comm.size)))
                  for _ in range(tc.eval_iters)]
        out[split] = comm.sum_scalars([float(np.mean(losses)) / comm.size])[0]
    return out


_PLOT_HINT_SHOWN = False


def _plot(log_rows: List[dict], path: Path) -> None:
    """Draws the loss curves into `path` (loss.png). matplotlib is optional (the `[plot]`
    extra): without it training goes on and one line, once, says how to get the picture."""
    global _PLOT_HINT_SHOWN
    try:
        from matplotlib.figure import Figure   # no pyplot: no backend chosen, nothing left open
    except ImportError:
        if not _PLOT_HINT_SHOWN:
            _PLOT_HINT_SHOWN = True
            tqdm.write(f"not writing {path.name}: plots need matplotlib: "
                       "pip install 'kernelgpt[plot]'", file=sys.stderr)
        return

    def series(key):
        rows = [r for r in log_rows if r.get(key) not in (None, "")]
        return [int(r["step"]) for r in rows], [float(r[key]) for r in rows]

    fig = Figure(figsize=(8, 4.5), dpi=110, layout="constrained")
    ax = fig.subplots()
    steps, losses = series("loss")
    ax.plot(steps, losses, label="train (each step's batch)", lw=0.8, alpha=0.6)
    tsteps, tloss = series("train_loss")
    if tsteps:
        ax.plot(tsteps, tloss, "s-", ms=4, label="train (estimate at evaluation)", lw=1.5)
    vsteps, vloss = series("val_loss")
    if vsteps:
        ax.plot(vsteps, vloss, "o-", ms=4, label="validation", lw=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (cross-entropy, nats / token)")
    last = f" (at step {vsteps[-1]}: validation {vloss[-1]:.3f})" if vsteps else ""
    ax.set_title(f"training and validation loss{last}")
    ax.grid(alpha=0.3)
    if steps or vsteps:
        ax.legend()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    os.replace(tmp, path)


class _StopOnCtrlC:
    """While active (main thread only): the first Ctrl-C asks the loop to stop after the
    current step and save; the handler is then restored, so a second Ctrl-C quits at once."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True
        signal.signal(signal.SIGINT, self._previous or signal.default_int_handler)
        tqdm.write("\nCtrl-C: stopping after this step and saving a checkpoint "
                   "(Ctrl-C again to quit at once, without saving)", file=sys.stderr)

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


def _resume_config(saved: TrainConfig, tc: TrainConfig, overrides: dict, where) -> TrainConfig:
    """The resumed run's settings: the saved ones, with this call's device, precision and
    output options and the explicit `overrides` (training settings; those that fix the data
    cannot change)."""
    if saved.lr_decay_iters is None:  # a run saved before the schedule length was stored
        saved = dataclasses.replace(saved, lr_decay_iters=saved.max_iters)
    fixed = [k for k in overrides if k in FIXED_ON_RESUME and overrides[k] != getattr(saved, k)]
    if fixed:
        raise ValueError("a resumed run keeps its data and tokenizer: " + ", ".join(
            f"{k} is {getattr(saved, k)!r} in {where}, not {overrides[k]!r}" for k in fixed))
    unknown = set(overrides) - {f.name for f in dataclasses.fields(TrainConfig)}
    if unknown:
        raise ValueError(f"unknown training settings {sorted(unknown)}")
    changed = {k: v for k, v in overrides.items() if v != getattr(saved, k)}
    if changed:
        tqdm.write("resuming with changed settings: " + ", ".join(
            f"{k} {getattr(saved, k)} -> {v}" for k, v in changed.items()), file=sys.stderr)
    tc = dataclasses.replace(saved, out=tc.out, progress=tc.progress, plot=tc.plot,
                             device=tc.device, precision=tc.precision, **overrides)
    if tc.max_iters > tc.lr_decay_iters:
        tqdm.write(f"note: the learning rate decays to min_lr by step {tc.lr_decay_iters} (the "
                   f"run's saved schedule) and stays there up to --max-iters {tc.max_iters}; "
                   "--lr-decay-iters stretches it", file=sys.stderr)
    return tc.validate()


def _model_differences(saved: GPTConfig, asked: GPTConfig) -> List[str]:
    return [f"{f.name} {getattr(saved, f.name)!r} (asked {getattr(asked, f.name)!r})"
            for f in dataclasses.fields(GPTConfig) if f.name != "vocab_size"
            and getattr(saved, f.name) != getattr(asked, f.name)]


def train(tc: TrainConfig, model_config: Optional[GPTConfig] = None, resume: bool = False,
          stop_after: Optional[int] = None, max_iters: Optional[int] = None,
          overrides: Optional[dict] = None, comm: Optional[Communicator] = None,
          zero1: bool = False, bucket_mb: float = 4.0) -> dict:
    """Trains (or resumes from tc.out) and returns a summary dict.

    On resume the saved training settings are used, except device, precision, progress and
    plot (taken from tc) and `overrides` (a dict of TrainConfig fields to change, e.g.
    {"max_iters": 4000}; data, tokenizer, seed and val_fraction cannot change); max_iters, if
    given, is one such override. model_config on resume must match the saved model (else
    ValueError naming the differences). stop_after: stop after that many steps of this call
    (a run split this way resumes to exactly the losses of a straight one). The summary's
    "checkpoint" is the last checkpoint written (None if none) and "interrupted" says whether
    Ctrl-C stopped it.

    Data parallelism (distributed.py): under mpiexec with N > 1 ranks (or with `comm` given),
    every rank trains on its 1/N share of each global batch of N x batch_size sequences and the
    gradients are averaged across ranks; rank 0 alone writes the run folder. zero1 shards
    AdamW's moments across the ranks (ZeRO stage 1); bucket_mb sizes the gradient buckets."""
    overrides = dict(overrides or {})
    if max_iters is not None:
        overrides["max_iters"] = max_iters
    if stop_after is not None and stop_after < 1:
        raise ValueError(f"stop_after must be >= 1, got {stop_after}")
    if not (bucket_mb > 0 and math.isfinite(bucket_mb)):
        raise ValueError(f"bucket_mb must be > 0, got {bucket_mb}")
    if not resume:
        tc = dataclasses.replace(tc, **overrides)
    tc.validate()
    if comm is None:
        comm = communicator_for(tc.device)
    with one_fails_all_stop(comm):
        if comm.size > 1:
            _check_same_setup(comm, tc, model_config, resume, stop_after, overrides, zero1,
                              bucket_mb)
        return _train_one(tc, model_config, resume, stop_after, overrides, comm, zero1, bucket_mb)


def _check_same_setup(comm, tc, model_config, resume, stop_after, overrides, zero1, bucket_mb):
    """Every rank must have been started with the same run: same model, data (by content, as
    different machines may keep it at different paths), tokenizer and training settings.
    DistributedSetupError on every rank, naming each rank's differences from rank 0's."""
    mine = {"model": model_config.to_dict() if model_config is not None else None,
            "train": {k: v for k, v in dataclasses.asdict(tc).items()
                      if k not in ("out", "progress", "plot", "data")},
            "resume": resume, "stop_after": stop_after, "overrides": overrides,
            "zero1": zero1, "bucket_mb": bucket_mb, "kernelgpt": _version.__version__}
    if not resume:  # a resumed run's data is rank 0's tokens.bin
        text = read_texts(tc.data).encode("utf-8", "surrogatepass")
        mine["data"] = f"{hashlib.sha256(text).hexdigest()[:16]} ({len(text):,} bytes)"
    everyone = comm.allgather_object(_flatten(mine))
    problems = []
    for rank, theirs in enumerate(everyone[1:], start=1):
        ref = everyone[0]
        for key in sorted(set(ref) | set(theirs)):
            if ref.get(key) != theirs.get(key):
                problems.append(f"rank {rank} has {key} {theirs.get(key)!r} (rank 0: {ref.get(key)!r})")
    if problems:
        more = f"; and {len(problems) - 8} more" if len(problems) > 8 else ""
        raise DistributedSetupError(
            f"the {comm.size} ranks were started with different runs: " + "; ".join(problems[:8])
            + more + ". Start every rank with the same command line and data",
            quiet=comm.rank != 0)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _train_one(tc, model_config, resume, stop_after, overrides, comm, zero1, bucket_mb) -> dict:
    """Rank 0 (or the only process) opens the run folder and prepares the model, data and
    optimizer state; other ranks receive them from it."""
    out = Path(tc.out)
    run = open_run_dir(out) if comm.rank == 0 else None
    try:
        if comm.rank == 0:
            prepared = _prepare_run(tc, model_config, resume, overrides, out, run)
            tc, model, tokenizer, data, m, v, rng, step, log_rows, saved_size = prepared
            if comm.size != saved_size and step > 0:
                tqdm.write(f"note: the run was saved with {saved_size} rank(s) and continues with "
                           f"{comm.size}: each step now sees {comm.size * tc.batch_size} sequences "
                           f"(was {saved_size * tc.batch_size}), and the batches drawn from here "
                           "on differ from those the saved run would have drawn", file=sys.stderr)
        else:
            tokenizer = None  # (rank 0 alone writes checkpoints, with the tokenizer)
        if comm.size > 1:
            tc, model, data, m, v, rng, step, log_rows = _share_run(
                comm, out, tc, *((model, data, m, v, rng, step, log_rows) if comm.rank == 0
                                 else (None,) * 7))
        shards = shard_bounds(model.params.size, comm.size) if zero1 else None
        if shards:  # each rank keeps its shard of AdamW's moments
            m = comm.scatter_shards(m, shards)
            v = comm.scatter_shards(v, shards)
        with _StopOnCtrlC() as ctrl_c:
            return _train_loop(tc, out, model, tokenizer, data, m, v, rng, step, log_rows,
                               stop_after, ctrl_c, comm, shards,
                               max(1, int(bucket_mb * (1 << 20) / 4)))
    finally:
        if run is not None:
            run.release()


def _prepare_run(tc, model_config, resume, overrides, out, run):
    """The model, data and optimizer state of a new or resumed run (rank 0's work)."""
    if resume:
        model, tokenizer, cfg, state, (m, v) = load_checkpoint(out, with_optimizer=True)
        ckpt = latest_checkpoint(out)
        check_resume_state(state, ckpt / "state.json")
        if "train" not in cfg:
            raise CheckpointError(ckpt / "config.json", "train",
                                  "missing, so the run cannot be resumed")
        differences = (_model_differences(model.config, model_config)
                       if model_config is not None else [])
        if differences:
            raise ValueError(f"the run in {out} has a different model: " +
                             ", ".join(differences) + "; a resumed run keeps its model")
        tc = _resume_config(TrainConfig(**cfg["train"]), tc, overrides, ckpt / "config.json")
        tokenizer, data = _prepare_data(tc, out, tokenizer)
        rng = np.random.default_rng()
        rng.bit_generator.state = state["rng"]
        step = state["step"]
        log_rows = state.get("log", [])
        saved_size = state.get("world_size", 1)
    else:
        if tc.lr_decay_iters is None:  # saved with the run: resuming keeps the schedule
            tc = dataclasses.replace(tc, lr_decay_iters=tc.max_iters)
        tokenizer, data = _prepare_data(tc, out)
        if model_config is None:
            model_config = GPTConfig(vocab_size=tokenizer.n_vocab)
        if model_config.vocab_size < tokenizer.n_vocab:
            model_config = dataclasses.replace(model_config, vocab_size=tokenizer.n_vocab)
        model = GPT(model_config, seed=tc.seed)
        m = np.zeros(model.params.size, np.float32)
        v = np.zeros(model.params.size, np.float32)
        rng = np.random.default_rng(tc.seed)
        step = 0
        log_rows = []
        saved_size = 1
        run.check_space(3 * 4 * model.params.size + (1 << 20))  # parameters, m and v
    return tc, model, tokenizer, data, m, v, rng, step, log_rows, saved_size


def _share_run(comm, out, tc, model, data, m, v, rng, step, log_rows):
    """Rank 0's run (settings, weights, optimizer state, tokens, data cursor) sent to every
    rank. Every rank shares one data generator: its state is the data cursor of them all."""
    head = None
    if comm.rank == 0:
        head = {"tc": dataclasses.asdict(tc), "model": model.config.to_dict(), "step": step,
                "rng": rng.bit_generator.state, "log": log_rows, "n_vocab": data.vocab_size,
                "tokens": (len(data.tokens), np.dtype(data.tokens.dtype).str)}
    head = comm.bcast_object(head)
    if comm.rank != 0:
        tc = dataclasses.replace(TrainConfig(**head["tc"]), out=tc.out, progress=False, plot=False)
        model = GPT(GPTConfig(**head["model"]), seed=None)
        n, dtype = head["tokens"]
        data = TokenData(out / "tokens.bin", head["n_vocab"], tc.val_fraction,
                         tokens=np.empty(n, np.dtype(dtype)))
        m = np.empty(model.params.size, np.float32)
        v = np.empty(model.params.size, np.float32)
        rng = np.random.default_rng()
        rng.bit_generator.state = head["rng"]
        step, log_rows = head["step"], head["log"]
        tokens = data.tokens
    else:
        tokens = np.ascontiguousarray(data.tokens)
    comm.bcast_array(tokens)
    comm.bcast_array(model.params.data)
    comm.bcast_array(m)  # (ZeRO-1 then keeps a shard of each)
    comm.bcast_array(v)
    return tc, model, data, m, v, rng, step, log_rows


def _train_loop(tc, out, model, tokenizer, data, m, v, rng, step, log_rows, stop_after, ctrl_c,
                comm: Optional[Communicator] = None, shards: Optional[List[int]] = None,
                bucket_elems: int = 1 << 20):
    """The steps. comm: the data-parallel ranks (one process by default); shards: the
    parameter offsets that cut AdamW's state across ranks (ZeRO-1), None for a full copy."""
    comm = comm or Communicator()
    N, rank, lead = comm.size, comm.rank, comm.rank == 0
    xp = array_module(tc.device)
    model.to(tc.device, precision=tc.precision)
    m, v = xp.asarray(m), xp.asarray(v)  # AdamW's moments live with the parameters
    c = model.config
    block = c.block_size
    nd = model.n_decayed
    P, Mom, Var = model.params.data, m, v
    lo, hi = (shards[rank], shards[rank + 1]) if shards else (0, P.size)
    model.zero_grad()  # (the gradient buffer is allocated once, buckets are views of it)
    # (with one process the buckets' collectives are no-ops; kept so one code path runs)
    reducer = GradReducer(comm, model.grads, model.grad_stages(), bucket_elems)
    csv_path = out / "log.csv"
    fields = ["step", "loss", "val_loss", "train_loss", "lr", "grad_norm", "tokens_per_s",
              "elapsed_s"] + (["comm_s"] if N > 1 else [])
    tokens_per_step = tc.batch_size * block * tc.grad_accum * N
    lines = tc.progress == "lines" and lead  # a plain line per log_interval instead of the bar
    progress = None
    if tc.progress and not lines and lead:
        progress = tqdm(total=tc.max_iters, initial=step, unit="step", dynamic_ncols=True,
                        file=sys.stderr)
    where = comm.allgather_object(f"{socket.gethostname()}:{os.getpid()}") if N > 1 else []
    if N > 1 and lead:
        per_rank = 2 * 4 * (hi - lo)
        tqdm.write(f"data parallel: {comm.description} (rank host:pid " +
                   ", ".join(f"{r} {w}" for r, w in enumerate(where)) + "), "
                   f"{tc.batch_size} sequences per rank "
                   f"({N * tc.batch_size} per step), {len(reducer.buckets)} gradient buckets; "
                   f"AdamW state {per_rank / 2**20:.1f} MiB per rank" +
                   (f" (ZeRO-1; {2 * 4 * P.size / 2**20:.1f} MiB unsharded)" if shards else ""),
                   file=sys.stderr)
    t_start = time.perf_counter()
    steps_this_call = 0
    line_steps, line_seconds = 0, 0.0  # training steps and time since the last plain line
    last_loss = float("nan")
    written = None
    stop = False  # Ctrl-C on any rank, agreed on by all

    def checkpoint(evaluate: bool):
        nonlocal written
        row = {"step": step}
        if evaluate:
            losses = estimate_loss(model, data, tc, block, tc.seed, comm)
            row.update(val_loss=losses["val"], train_loss=losses["train"])
            log_rows.append(row)
            if progress is not None:
                progress.set_postfix(loss=f"{last_loss:.4f}", val=f"{losses['val']:.4f}")
        if N > 1:
            _check_replicas_agree(comm, P)
        m_all = comm.gather_shards(Mom, shards) if shards else Mom
        v_all = comm.gather_shards(Var, shards) if shards else Var
        if lead:
            state = {"step": step, "rng": rng.bit_generator.state, "log": log_rows,
                     "tokens_seen": step * tokens_per_step, "world_size": N}
            written = save_checkpoint(out, model, tc, tokenizer, state, m_all, v_all,
                                      tc.keep_checkpoints)
            _write_csv(csv_path, fields, log_rows)
            if tc.plot:
                _plot(log_rows, out / "loss.png")

    def adamw(a, b, lr, weight_decay):  # AdamW on [a, b) of the parameters this rank updates
        a, b = max(a, lo), min(b, hi)
        if a < b:
            ops.adamw_step(P[a:b], G[a:b], Mom[a - lo:b - lo], Var[a - lo:b - lo], step=step + 1,
                           lr=lr, beta1=tc.beta1, beta2=tc.beta2, eps=1e-8,
                           weight_decay=weight_decay)

    while (step < tc.max_iters and (stop_after is None or steps_this_call < stop_after)
           and not stop):
        t0 = time.perf_counter()
        lr = learning_rate(step, tc)
        model.zero_grad()
        loss = 0.0
        for k in range(tc.grad_accum):
            x, y = data.batch("train", tc.batch_size, block, rng, part=(rank, N))
            if k == tc.grad_accum - 1:  # the last micro-batch's backward launches the buckets
                reducer.begin()
                model.grad_hook = reducer.on_stage
            try:
                loss += model.forward_backward(x, y, grad_scale=1.0 / (tc.grad_accum * N)) / tc.grad_accum
            finally:
                model.grad_hook = None
        comm_s = reducer.finish()  # seconds spent waiting on communication this step
        t_comm = time.perf_counter()
        loss, stop_votes = comm.sum_scalars([loss / N, float(ctrl_c.requested)])
        comm_s += time.perf_counter() - t_comm
        stop = stop_votes > 0
        G = model.grads.data
        gnorm = ops.clip_grad_norm(G, tc.grad_clip) if tc.grad_clip > 0 else ops.grad_norm(G)
        adamw(0, nd, lr, tc.weight_decay)
        adamw(nd, P.size, lr, 0.0)
        if shards:
            t_gather = time.perf_counter()
            comm.allgather_shards(P, shards)
            comm_s += time.perf_counter() - t_gather
        dt = time.perf_counter() - t0
        step += 1
        steps_this_call += 1
        last_loss = loss
        if not math.isfinite(loss):
            raise RuntimeError(f"training diverged at step {step}: loss {loss}")
        logged = step % tc.log_interval == 0 or step == 1
        if logged:
            row = {"step": step, "loss": loss, "lr": lr, "grad_norm": float(gnorm),
                   "tokens_per_s": tokens_per_step / dt, "elapsed_s": time.perf_counter() - t_start}
            if N > 1:
                row["comm_s"] = comm_s
            log_rows.append(row)
        if progress is not None:
            progress.update(1)
            postfix = dict(loss=f"{loss:.4f}", tok_s=f"{tokens_per_step / dt:,.0f}")
            if N > 1:
                postfix["comm"] = f"{100 * comm_s / dt:.0f}%"
            progress.set_postfix(**postfix)
        evaluated = step % tc.eval_interval == 0 or step == tc.max_iters
        if evaluated:
            checkpoint(evaluate=True)
        line_steps, line_seconds = line_steps + 1, line_seconds + dt
        if lines and (logged or evaluated):
            print(_progress_line(step, tc.max_iters, loss, log_rows[-1].get("val_loss") if
                                 evaluated else None, line_steps * tokens_per_step / max(line_seconds, 1e-9),
                                 time.perf_counter() - t_start), flush=True)
            line_steps, line_seconds = 0, 0.0
    if steps_this_call and step % tc.eval_interval != 0 and step != tc.max_iters:
        checkpoint(evaluate=False)  # stopped early (stop_after, Ctrl-C): keep the progress
    if progress is not None:
        progress.close()
    if stop and lead:
        tqdm.write(f"stopped by Ctrl-C at step {step}" + (f"; checkpoint {written}" if written
                   else "") + "; --resume continues", file=sys.stderr)
    vals = [r["val_loss"] for r in log_rows if "val_loss" in r]
    return {"step": step, "loss": last_loss, "val_loss": vals[-1] if vals else None,
            "out": str(out), "seconds": time.perf_counter() - t_start, "log": log_rows,
            "checkpoint": str(written) if written else None, "interrupted": stop,
            "max_iters": tc.max_iters, "world_size": N, "rank": rank,
            "comm_wait_s": reducer.wait_seconds}


def _check_replicas_agree(comm, P) -> None:
    """Every rank must hold the same parameters (the all-reduce gives each the same sum). A
    checksum per checkpoint catches a library that does not; rank 0's copy then wins."""
    digest = zlib.crc32(memoryview(np.ascontiguousarray(to_numpy(P))).cast("B"))
    digests = comm.allgather_object(digest)
    if len(set(digests)) > 1:
        if comm.rank == 0:
            tqdm.write("warning: the ranks' parameters had drifted apart (checksums "
                       f"{digests}); every rank now takes rank 0's", file=sys.stderr)
        comm.bcast_array(P)


def _progress_line(step: int, max_iters: int, loss: float, val_loss: Optional[float],
                   tokens_per_s: float, elapsed: float) -> str:
    """TrainConfig(progress="lines"): e.g. "step 250/2000: loss 1.8421, val loss 1.9033, 41,250
    tok/s, 12.3 s" (tok/s: the training steps since the previous line, evaluation left out)."""
    val = f", val loss {val_loss:.4f}" if val_loss is not None else ""
    return (f"step {step}/{max_iters}: loss {loss:.4f}{val}, {tokens_per_s:,.0f} tok/s, "
            f"{elapsed:.1f} s")


def _write_csv(path: Path, fields, rows) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    atomic_write_bytes(path, buf.getvalue().encode())


# ---- model sizes (kernelgpt train --preset) -------------------------------------------------------------------------------

MODEL_PRESETS = {
    # nanoGPT's CPU "baby" config and its shakespeare-char config
    "baby": dict(n_layer=4, n_head=4, n_embd=128, block_size=64),
    "shakespeare-char": dict(n_layer=6, n_head=6, n_embd=384, block_size=256),
    # the model shipped with the package (kernelgpt/models/shakespeare_char)
    "default": dict(n_layer=4, n_head=6, n_embd=192, block_size=128),
}
