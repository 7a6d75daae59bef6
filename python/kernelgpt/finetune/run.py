"""A fine-tuning run: the model, what is trained, the loop, checkpoints and resume.

A run directory holds run.json (the settings), log.csv, loss.png and ckpt-<step>/ checkpoints
(trainable.safetensors: the adapters or every weight, and the reward/value head;
optimizer.safetensors: AdamW's moments; state.json: the step and the log), each written to a
temporary directory and renamed, `latest` naming the newest. ``resume=True`` continues bit for
bit as an unbroken run would: the examples of a step, and the seeds of its samples, depend on
the seed and the step only.

The reference model of DPO, GRPO and PPO is the starting model (the base, or --init's
result): with LoRA the frozen base weights themselves, so it costs no memory.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.util
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np

from .. import ops
from ..io import safetensors
from ..io.atomic import atomic_write, atomic_write_bytes, fsync_dir
from ..lora import LoRA
from . import objectives as obj
from .data import file_sha256, load_pairs, load_prompts, load_sft

__all__ = ["FinetuneConfig", "finetune", "load_tuned", "load_reward_model", "evaluate",
           "reward_accuracy", "resolve_reward", "METHODS"]

METHODS = ("sft", "dpo", "reward", "grpo", "ppo")


@dataclass
class FinetuneConfig:
    method: str = "sft"            # sft | dpo | reward | grpo | ppo
    model: str = "smollm2"         # a GGUF file or known name (load_model), loaded as fp32
    data: str = ""                 # a JSONL file (see data.py for each method's lines)
    init: str = ""                 # a finetune run whose result to start from
    lora_rank: int = 8             # 0: full fine-tuning (every weight)
    lora_alpha: float = 16.0
    lora_targets: str = "all"      # lora.resolve_targets
    steps: int = 100
    batch_size: int = 8            # examples, pairs or prompts per step
    learning_rate: float = 1e-3
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1      # the cosine decay ends at learning_rate * this
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    beta: float = 0.1              # DPO's beta; GRPO's and PPO's KL coefficient
    max_len: int = 512             # longest example in tokens (prompt + answer)
    reward: str = ""               # GRPO / PPO: "module:function" (prompt, reply) -> float
    group: int = 4                 # GRPO: samples per prompt
    max_new_tokens: int = 24       # GRPO / PPO: longest sampled reply
    temperature: float = 1.0       # GRPO / PPO: sampling temperature
    ppo_epochs: int = 2            # PPO: updates per batch of samples
    clip: float = 0.2              # PPO: the ratio's clip range
    vf_coef: float = 0.1           # PPO: weight of the value loss
    precision: str = "fp32"        # "bf16": every matrix product in bf16 (GPT.to), fp32 master
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
            (self.beta >= 0 and math.isfinite(self.beta), "beta must be >= 0"),
            (self.method != "dpo" or self.beta > 0, "DPO needs beta > 0"),
            (self.max_len >= 2, "max_len must be >= 2"),
            (self.group >= 2 or self.method != "grpo", "GRPO needs group >= 2"),
            (self.max_new_tokens >= 1, "max_new_tokens must be >= 1"),
            (self.method not in ("grpo", "ppo") or self.max_new_tokens < self.max_len - 1,
             f"max_new_tokens ({self.max_new_tokens}) must be < max_len - 1 "
             f"({self.max_len - 1}): the prompt needs room in max_len"),
            (self.temperature > 0 and math.isfinite(self.temperature), "temperature must be > 0"),
            (self.ppo_epochs >= 1, "ppo_epochs must be >= 1"),
            (0 < self.clip < 1, "clip must be in (0, 1)"),
            (self.vf_coef >= 0, "vf_coef must be >= 0"),
            (self.precision in ("fp32", "bf16", "auto"), "precision must be fp32, bf16 or auto"),
            (self.method not in ("grpo", "ppo") or bool(self.reward),
             f"{self.method} needs a reward function (reward='module:function')"),
            (self.checkpoint_every >= 1, "checkpoint_every must be >= 1"),
            (self.keep_checkpoints >= 1, "keep_checkpoints must be >= 1"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"finetune: {msg}")
        return self


def resolve_reward(spec: str) -> Callable[[str, str], float]:
    """The function named by 'module:function' or 'path/to/file.py:function'."""
    if not isinstance(spec, str) or ":" not in spec:
        raise ValueError(f"reward must be 'module:function' or 'file.py:function', got {spec!r}")
    where, name = spec.rsplit(":", 1)
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise FileNotFoundError(f"reward: no such file {path}")
        loader = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(loader)
        loader.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ValueError(f"reward: {where} has no function {name!r}")
    return fn


# ---- checkpoints --------------------------------------------------------------------------------

def _latest(out: Path) -> Optional[Path]:
    pointer = out / "latest"
    if not pointer.exists():
        return None
    target = out / pointer.read_text().strip()
    if not (target / "state.json").exists():
        raise FileNotFoundError(f"{pointer} names {target}, which holds no state.json")
    return target


def _checkpoint_of(run, what: str) -> Path:
    run = Path(run)
    ckpt = run if (run / "state.json").exists() else _latest(run)
    if ckpt is None:
        raise FileNotFoundError(f"{what}: no finetune checkpoint in {run} (no latest, no "
                                "state.json)")
    return ckpt


def _save(out: Path, step: int, groups, state: dict, keep: int) -> Path:
    name = f"ckpt-{step:06d}"
    final, tmp = out / name, out / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        tensors, moments = {}, {}
        for g in groups:
            tensors.update({n: np.asarray(g.params[n]) for n in g.params.names()})
            moments[f"{g.name}.m"], moments[f"{g.name}.v"] = g.m, g.v
        safetensors.save(tensors, tmp / "trainable.safetensors", metadata={"format": "np"})
        safetensors.save(moments, tmp / "optimizer.safetensors")
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


def _load_into(ckpt: Path, params, where: str) -> None:
    tensors, _ = safetensors.load(ckpt / "trainable.safetensors")
    for n in params.names():
        t = tensors.get(n)
        if t is None or tuple(t.shape) != tuple(params[n].shape):
            raise ValueError(f"{where}: {ckpt / 'trainable.safetensors'}: tensor {n!r} is "
                             "missing or has another shape (a run of another model or LoRA "
                             "setting?)")
        params[n][...] = t


def _apply_checkpoint(model, ckpt: Path, where: str) -> dict:
    """Puts checkpoint `ckpt`'s result into `model`: its adapters merged in, or its full
    weights (a run started with --init has that run's result applied first). Returns its
    state."""
    state = json.loads((ckpt / "state.json").read_text())
    init = state["config"].get("init")
    if init:
        _apply_checkpoint(model, _checkpoint_of(init, where), where)
    gpt = model.gpt
    settings = state.get("lora")
    if settings:
        lora = LoRA(gpt, rank=settings["rank"], alpha=settings["alpha"],
                    targets=settings["targets"], seed=None)
        _load_into(ckpt, lora.params, where)
        lora.merge()
    else:
        _load_into(ckpt, gpt.params, where)
    model._pool.clear()
    return state


def load_tuned(run, model=None):
    """The model a finetune run (its directory, or one of its ckpt-* directories) ends with:
    its base model (or `model`, loaded with fp32 weights) with the result applied. For a
    reward run, the backbone (load_reward_model gives the head too). Returns a TextModel."""
    from ..llama import load_model
    ckpt = _checkpoint_of(run, "load_tuned")
    state = json.loads((ckpt / "state.json").read_text())
    if model is None:
        model = load_model(state["config"]["model"], weights="fp32")
    _apply_checkpoint(model, ckpt, "load_tuned")
    return model


def load_reward_model(run, model=None):
    """(model, head) of a reward run: score = head(hidden state of the last token)."""
    ckpt = _checkpoint_of(run, "load_reward_model")
    state = json.loads((ckpt / "state.json").read_text())
    if state["config"]["method"] != "reward":
        raise ValueError(f"{run} is a {state['config']['method']} run, not a reward model")
    model = load_tuned(run, model)
    head = obj.ScalarHead(model.config.n_embd, "reward_head")
    _load_into(ckpt, head.params, "load_reward_model")
    return model, head


# ---- the loop -----------------------------------------------------------------------------------

@dataclass
class _Group:
    """Parameters the optimizer updates, with their gradients and AdamW's moments."""
    name: str
    params: object
    grads: object
    m: np.ndarray = None
    v: np.ndarray = None

    def __post_init__(self):
        self.m = np.zeros(self.params.size, np.float32)
        self.v = np.zeros(self.params.size, np.float32)


def _lr(step: int, fc: FinetuneConfig) -> float:
    if step < fc.warmup_steps:
        return fc.learning_rate * (step + 1) / (fc.warmup_steps + 1)
    span = max(1, fc.steps - fc.warmup_steps)
    t = min(1.0, (step - fc.warmup_steps) / span)
    low = fc.learning_rate * fc.min_lr_ratio
    return low + 0.5 * (fc.learning_rate - low) * (1 + math.cos(math.pi * t))


def _order(n: int, step: int, batch: int, seed: int) -> List[int]:
    """The examples of step `step`: epoch after epoch, each a fresh permutation from the seed
    (so a resumed run picks the same ones)."""
    idx = []
    for k in range(step * batch, (step + 1) * batch):
        epoch, j = divmod(k, n)
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        idx.append(int(perm[j]))
    return idx


def _progress(step, steps, row, t_start, stream) -> None:
    bits = ", ".join(f"{k} {row[k]:.4f}" for k in ("loss", "pair_accuracy", "reward", "kl")
                     if k in row)
    done = int(30 * step / steps)
    stream.write(f"\r[{'#' * done}{'.' * (30 - done)}] step {step}/{steps}: {bits}, "
                 f"{time.perf_counter() - t_start:.0f} s ")
    stream.flush()


_FIELDS = ["step", "lr", "loss", "grad_norm", "seconds", "tokens", "pair_accuracy", "margin",
           "reward", "kl", "reply_tokens", "value_error", "clipped"]


def finetune(fc: FinetuneConfig, out, *, resume: bool = False, model=None,
             stop_after: Optional[int] = None, progress: bool = True, plot: bool = True) -> dict:
    """Runs `fc` into directory `out`. model: the base model already loaded with fp32 weights
    (else fc.model is loaded; on resume it must be the run's base model, as loaded). Returns a
    summary: the step reached, the last log row, the trainable parameter count, the median
    seconds per step of this call, the tuned model (a TextModel, adapters applied), and the
    reward model's head for a reward run."""
    from ..llama import load_model
    from ..train import _write_csv
    fc.validate()
    out = Path(out)
    ckpt = _latest(out) if out.exists() else None
    if resume and ckpt is None:
        raise FileNotFoundError(f"resume: no checkpoint in {out}")
    if not resume and ckpt is not None:
        raise FileExistsError(f"{out} already holds a finetune run: resume it, or choose "
                              "another output directory")
    if ckpt is not None:  # the run's own settings; only how long it runs may change
        saved = json.loads((ckpt / "state.json").read_text())["config"]
        fc = dataclasses.replace(FinetuneConfig(**saved), steps=fc.steps,
                                 checkpoint_every=fc.checkpoint_every,
                                 keep_checkpoints=fc.keep_checkpoints).validate()
    if not fc.data:
        raise ValueError("finetune: no data (a JSONL file)")
    reward_fn = resolve_reward(fc.reward) if fc.method in ("grpo", "ppo") else None
    if model is None:
        model = load_model(fc.model, weights="fp32")
    if model.gpt.packed:
        raise ValueError("finetune needs fp32 weights: load the model with weights='fp32'")
    gpt = model.gpt
    if fc.precision != "fp32":
        gpt.to(gpt.device, precision=fc.precision)
    if fc.init:
        _apply_checkpoint(model, _checkpoint_of(fc.init, "init"), "init")
    lora = None
    if fc.lora_rank:
        lora = LoRA(gpt, rank=fc.lora_rank, alpha=fc.lora_alpha, targets=fc.lora_targets,
                    seed=fc.seed)
        groups = [_Group("lora", lora.params, lora.grads)]
        reference_copy = None
    else:
        gpt.zero_grad()
        groups = [_Group("model", gpt.params, gpt.grads)]
        reference_copy = gpt.params.data.copy() if fc.method in ("dpo", "grpo", "ppo") else None
    head = None
    if fc.method in ("reward", "ppo"):
        head = obj.ScalarHead(gpt.config.n_embd, "reward_head" if fc.method == "reward"
                              else "value_head", seed=fc.seed)
        if fc.method == "ppo":
            head.w[...] = 0  # values start at 0
        groups.append(_Group("head", head.params, head.grads))

    @contextlib.contextmanager
    def reference():
        """The starting model's weights, for the length of a with-block."""
        if lora is not None:
            for name in lora.layers:
                gpt.params[name + ".weight"][...] = lora.base[name]
            try:
                yield
            finally:
                lora.apply()
        else:
            saved = gpt.params.data.copy()
            gpt.params.data[...] = reference_copy
            try:
                yield
            finally:
                gpt.params.data[...] = saved

    pad_id = int(getattr(model.tokenizer, "eos_token_id", None) or 0)
    data_hash = file_sha256(fc.data)
    if fc.method == "sft":
        data = load_sft(model, fc.data, fc.max_len)
    elif fc.method in ("dpo", "reward"):
        data = load_pairs(model, fc.data, fc.max_len)
    else:
        data = load_prompts(model, fc.data, fc.max_len - fc.max_new_tokens)
    out.mkdir(parents=True, exist_ok=True)
    refs = _dpo_references(fc, out, gpt, data, data_hash, pad_id, ckpt) if fc.method == "dpo" \
        else None
    step, rows = 0, []
    if ckpt is not None:
        state = json.loads((ckpt / "state.json").read_text())
        if state.get("data_sha256") != data_hash:
            raise ValueError(f"resume: {fc.data} changed since the run started")
        moments, _ = safetensors.load(ckpt / "optimizer.safetensors")
        for g in groups:
            _load_into(ckpt, g.params, "resume")
            g.m[...], g.v[...] = moments[f"{g.name}.m"], moments[f"{g.name}.v"]
        step, rows = int(state["step"]), state["log"]
        if lora is not None:
            lora.apply()
    else:
        atomic_write_bytes(out / "run.json", json.dumps(dataclasses.asdict(fc), indent=1).encode())

    def zero_grads():
        for g in groups:
            g.grads.zero()

    norms = []

    def update():  # clip the global norm of every group together, then AdamW on each
        total = math.sqrt(sum(float(ops.grad_norm(g.grads.data)) ** 2 for g in groups))
        norms.append(total)
        if fc.grad_clip > 0 and total > fc.grad_clip:
            for g in groups:
                g.grads.data *= np.float32(fc.grad_clip / (total + 1e-6))
        for g in groups:
            ops.adamw_step(g.params.data, g.grads.data, g.m, g.v, step=len(norms) + base_updates,
                           lr=lr, weight_decay=fc.weight_decay)
        if lora is not None:
            lora.apply()

    updates_per_step = fc.ppo_epochs if fc.method == "ppo" else 1
    base_updates = step * updates_per_step
    t_start = time.perf_counter()
    this_call = 0
    while step < fc.steps and (stop_after is None or this_call < stop_after):
        t0 = time.perf_counter()
        lr = _lr(step, fc)
        zero_grads()
        batch_idx = _order(len(data), step, fc.batch_size, fc.seed)
        batch = [data[i] for i in batch_idx]
        sample_seed = fc.seed * 1_000_003 + step
        rl = dict(pad_id=pad_id, seed=sample_seed, max_new_tokens=fc.max_new_tokens,
                  temperature=fc.temperature, reference=reference)
        if fc.method == "sft":
            row = obj.sft_step(gpt, batch, pad_id)
        elif fc.method == "dpo":
            row = obj.dpo_step(gpt, batch, [refs[i] for i in batch_idx], fc.beta, pad_id,
                               groups[0].grads)
        elif fc.method == "reward":
            row = obj.reward_step(gpt, head, batch, pad_id)
        elif fc.method == "grpo":
            row = obj.grpo_step(gpt, model, batch, reward_fn, group=fc.group, beta=fc.beta, **rl)
        else:
            row = obj.ppo_step(gpt, model, head, batch, reward_fn, beta=fc.beta,
                               update=update, zero_grads=zero_grads, epochs=fc.ppo_epochs,
                               clip=fc.clip, vf_coef=fc.vf_coef, **rl)
        if not math.isfinite(row["loss"]):
            raise FloatingPointError(f"step {step}: the loss is {row['loss']} (lower the "
                                     "learning rate?)")
        if fc.method != "ppo":  # (PPO updates inside its step)
            update()
        step += 1
        this_call += 1
        row.update(step=step, lr=lr, grad_norm=norms[-1], seconds=time.perf_counter() - t0)
        rows.append({k: (round(float(x), 6) if isinstance(x, (float, np.floating)) else x)
                     for k, x in row.items()})
        if progress:
            _progress(step, fc.steps, row, t_start, sys.stderr)
        if step % fc.checkpoint_every == 0 or step == fc.steps or (
                stop_after is not None and this_call == stop_after):
            state = {"step": step, "config": dataclasses.asdict(fc), "data_sha256": data_hash,
                     "lora": lora.settings() if lora else None, "log": rows}
            _save(out, step, groups, state, fc.keep_checkpoints)
            _write_csv(out / "log.csv", _FIELDS, rows)
            if plot:
                _plot(rows, out / "loss.png", fc.method)
    if progress:
        sys.stderr.write("\n")
    model._pool.clear()
    secs = [r["seconds"] for r in rows[len(rows) - this_call:]] if this_call else []
    return {"step": step, "trainable": sum(g.params.size for g in groups),
            "last": rows[-1] if rows else {}, "log": rows,
            "seconds_per_step": float(np.median(secs)) if secs else None,
            "model": model, "lora": lora, "head": head}


def _dpo_references(fc, out, gpt, data, data_hash, pad_id, ckpt):
    """The starting model's log p of every pair's two answers: computed once, cached in the
    run directory (a resumed run must find them there)."""
    ref_path = out / "reference_logps.json"
    if ref_path.exists():
        cached = json.loads(ref_path.read_text())
        if cached.get("data_sha256") == data_hash and len(cached["logps"]) == len(data):
            return [tuple(r) for r in cached["logps"]]
    if ckpt is not None:
        raise ValueError(f"{ref_path} is missing or does not match the data: the reference "
                         "log-probabilities of a resumed DPO run must be those it started with")
    logps = obj.sequence_logprobs(gpt, [(p.prompt, a) for p in data
                                        for a in (p.chosen, p.rejected)], pad_id)
    refs = [(float(logps[2 * i]), float(logps[2 * i + 1])) for i in range(len(data))]
    atomic_write_bytes(ref_path, json.dumps({"data_sha256": data_hash, "logps": refs}).encode())
    return refs


_TITLES = {"loss": "loss", "pair_accuracy": "pairs ranked right", "reward": "mean reward",
           "kl": "KL to the reference (per reply)"}


def _plot(rows, path: Path, method: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    keys = [k for k in ("loss", "pair_accuracy", "reward", "kl") if k in rows[-1]]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.2), squeeze=False)
    steps = [r["step"] for r in rows]
    for ax, k in zip(axes[0], keys):
        ax.plot(steps, [r.get(k, float("nan")) for r in rows])
        ax.set_xlabel("step")
        ax.set_title(f"{method}: {_TITLES[k]}", fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=90))
    plt.close(fig)


# ---- evaluation ---------------------------------------------------------------------------------

def evaluate(model, tasks, max_tokens: int = 16) -> dict:
    """Greedy replies to each task's prompt, scored (align_tasks.score_reply): accuracy (the
    fraction exactly right in the form asked), mean score, and the replies."""
    replies, scores = [], []
    for t in tasks:
        r = model.chat(t.messages(), max_tokens=max_tokens, temperature=0, stream=False)
        replies.append(str(r))
        scores.append(t.score(str(r)))
    scores = np.asarray(scores)
    return {"accuracy": float(np.mean(scores == 1.0)) if len(scores) else 0.0,
            "mean_score": float(np.mean(scores)) if len(scores) else 0.0,
            "n": len(tasks), "replies": replies}


def reward_accuracy(model, head, records) -> float:
    """The fraction of preference records ({"prompt", "chosen", "rejected"}, strings) whose
    chosen answer the reward model (model, head) scores above the rejected one."""
    from .data import conversation_tokens
    seqs = []
    for p in records:
        for key in ("chosen", "rejected"):
            ex = conversation_tokens(model, [{"role": "user", "content": p["prompt"]},
                                             {"role": "assistant", "content": p[key]}])
            seqs.append((ex.ids, ex.mask))
    pad = int(getattr(model.tokenizer, "eos_token_id", None) or 0)
    s = obj.reward_scores(model.gpt, head, seqs, pad)
    return float(np.mean(s[0::2] > s[1::2]))
