"""Checkpoints: a trained model, its tokenizer and the training state, on disk.

A checkpoint is a directory ``OUT/ckpt-000500/`` holding

    model.safetensors      the parameters by name (loadable by safetensors.numpy and PyTorch)
    optimizer.safetensors  AdamW's m and v (flat, in the parameter buffer's order)
    config.json            {"model": GPTConfig, "train": TrainConfig, "tokenizer": ...}
    state.json             step, the data sampler's RNG state, the log
    tokenizer.tiktoken     a trained BPE vocabulary (only for --tokenizer bpe)

``OUT/latest`` names the newest complete one. It is replaced atomically only after the
directory is fully written and fsynced, so a kill at any moment leaves the previous checkpoint
usable; a failed save (a full disk) removes its partial files and leaves `latest` as it was.
train.py writes checkpoints; generate, the lessons and `kernelgpt sample` read them.

Loading treats every file as untrusted: each parameter must be float32 with its exact shape,
config.json's fields must have their types, the tokenizer entry must name a file inside the
checkpoint. Anything else raises CheckpointError naming the file, the field and what was
expected. state.json (needed only to resume) may be missing or damaged: the model still
loads for sampling, and resuming says what is missing.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np

from . import tokenizer as bpe
from .data import CharTokenizer, save_json
from .device import to_numpy
from .io import safetensors
from .io.atomic import atomic_write_bytes, fsync_dir
from .model import GPT, GPTConfig

__all__ = ["save_checkpoint", "load_checkpoint", "latest_checkpoint", "tokenizer_to_dict",
           "tokenizer_from_dict", "CheckpointError", "check_fields", "check_resume_state",
           "load_config"]


class CheckpointError(ValueError):
    """A checkpoint that cannot be used as it is: `where` (the file), `field` (what in it) and
    what was expected, in one line."""

    def __init__(self, where, field: str, problem: str):
        self.where, self.field, self.problem = str(where), field, problem
        super().__init__(f"{where}: {field}: {problem}" if field else f"{where}: {problem}")


def _type_ok(value, annotation: str) -> bool:
    """Whether a JSON value fits a dataclass field's annotation (the strings this package's
    configs use: int, float, str, bool, Optional[...], List[str], Union[bool, str])."""
    a = annotation.replace(" ", "")
    if a.startswith("Optional[") and a.endswith("]"):
        return value is None or _type_ok(value, a[len("Optional["):-1])
    if a.startswith("Union[") and a.endswith("]"):
        return any(_type_ok(value, part) for part in a[len("Union["):-1].split(","))
    if a == "List[str]":
        return isinstance(value, list) and all(isinstance(x, str) for x in value)
    if a == "bool":
        return isinstance(value, bool)
    if a == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if a == "float":
        return (isinstance(value, (int, float)) and not isinstance(value, bool)
                and math.isfinite(value))
    if a == "str":
        return isinstance(value, str)
    return True  # a field type this checker does not know: the constructor checks it


def check_fields(cls, d, where, section: str) -> dict:
    """d as keyword arguments of dataclass `cls`: a JSON object whose keys are fields of cls
    and whose values have the fields' types; CheckpointError otherwise."""
    if not isinstance(d, dict):
        raise CheckpointError(where, section, f"expected an object, got {type(d).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in d.items():
        if key not in fields:
            raise CheckpointError(where, f"{section}.{key}",
                                  f"unknown field (known: {', '.join(fields)})")
        f = fields[key]
        annotation = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        if not _type_ok(value, annotation):
            raise CheckpointError(where, f"{section}.{key}",
                                  f"expected {annotation}, got {type(value).__name__} {value!r:.60}")
    return d


def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(path, "", f"missing ({what})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(path, "", f"not valid JSON ({err})") from None


def _check_tokenizer_dict(d, where) -> dict:
    if not isinstance(d, dict):
        raise CheckpointError(where, "tokenizer", "missing or not an object")
    kind = d.get("kind")
    fields = {"char": {"chars": str}, "tiktoken": {"name": str},
              "bpe": {"tiktoken_file": str, "pattern": str}}
    if kind not in fields:
        raise CheckpointError(where, "tokenizer.kind", f"expected one of {sorted(fields)}, got {kind!r}")
    for key, typ in fields[kind].items():
        if not isinstance(d.get(key), typ):
            raise CheckpointError(where, f"tokenizer.{key}", f"expected a {typ.__name__}")
    if kind == "bpe":
        name = d["tiktoken_file"]
        if not name or Path(name).name != name or name in (".", ".."):
            raise CheckpointError(where, "tokenizer.tiktoken_file",
                                  f"expected a file name inside the checkpoint, got {name!r}")
        special = d.get("special_tokens", {})
        if not isinstance(special, dict) or not all(
                isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0
                for k, v in special.items()):
            raise CheckpointError(where, "tokenizer.special_tokens",
                                  "expected an object of token string -> id >= 0")
    return d


def check_resume_state(state, where) -> dict:
    """The state.json a resumed run needs (step, the sampler's RNG state, the log), or
    CheckpointError saying what is missing."""
    if not state:
        raise CheckpointError(where, "", "missing or damaged, so the run cannot be resumed "
                              "(the model still loads for sampling)")
    step = state.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise CheckpointError(where, "step", f"expected an int >= 0, got {step!r:.40}")
    rng = state.get("rng")
    try:
        np.random.default_rng().bit_generator.state = rng
    except (TypeError, ValueError, KeyError, OverflowError):
        raise CheckpointError(where, "rng", "expected the data sampler's RNG state "
                              "(numpy PCG64 bit_generator.state)") from None
    log = state.get("log", [])
    if not isinstance(log, list) or not all(isinstance(r, dict) for r in log):
        raise CheckpointError(where, "log", "expected a list of objects")
    return state


def tokenizer_to_dict(tok) -> dict:
    if isinstance(tok, CharTokenizer):
        return tok.to_dict()
    if getattr(tok, "name", None) == "cl100k_base":
        return {"kind": "tiktoken", "name": "cl100k_base"}
    return {"kind": "bpe", "tiktoken_file": "tokenizer.tiktoken", "pattern": tok._pat_str,
            "special_tokens": dict(tok._special_tokens)}


def tokenizer_from_dict(d: dict, directory: Path):
    _check_tokenizer_dict(d, Path(directory) / "config.json")
    if d["kind"] == "char":
        return CharTokenizer(d["chars"])
    if d["kind"] == "tiktoken":
        return bpe.get_encoding(d["name"])
    return bpe.Encoding.from_tiktoken_file(directory / d["tiktoken_file"], d["pattern"],
                                           d.get("special_tokens", {}))


# ---- checkpoints --------------------------------------------------------------------------------

def latest_checkpoint(path) -> Path:
    """The checkpoint directory `path` names: itself if it holds model.safetensors, else the
    one its `latest` file points to."""
    path = Path(path)
    if (path / "model.safetensors").exists():
        return path
    pointer = path / "latest"
    if not pointer.exists():
        raise FileNotFoundError(f"no checkpoint in {path} (no model.safetensors, no latest)")
    target = path / pointer.read_text().strip()
    if not (target / "model.safetensors").exists():
        raise FileNotFoundError(f"{pointer} names {target}, which holds no model.safetensors")
    return target


def save_checkpoint(out: Path, model: GPT, tc, tokenizer, state: dict,
                    m: np.ndarray, v: np.ndarray, keep: int = 2) -> Path:
    """Writes OUT/ckpt-<step>/ (step from state["step"]), then points OUT/latest at it and
    deletes older checkpoints beyond the `keep` newest. tc: the TrainConfig (or a dict of it)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"ckpt-{state['step']:06d}"
    final = out / name
    tmp = out / f".{name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        tmp.mkdir()
        host = to_numpy(model.params.data)  # one copy from the device (a no-op on the CPU)
        tensors = {n: host[o: o + int(np.prod(s))].reshape(s)
                   for n, (o, s) in model.params.offsets.items()}
        safetensors.save(tensors, tmp / "model.safetensors", metadata={"format": "np"})
        safetensors.save({"m": to_numpy(m), "v": to_numpy(v)}, tmp / "optimizer.safetensors")
        tok = tokenizer_to_dict(tokenizer)
        if tok["kind"] == "bpe":
            tokenizer.save(tmp / tok["tiktoken_file"])
        train_cfg = dataclasses.asdict(tc) if dataclasses.is_dataclass(tc) else dict(tc)
        save_json(tmp / "config.json", {"model": model.config.to_dict(), "train": train_cfg,
                                        "tokenizer": tok})
        save_json(tmp / "state.json", state)
        fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(out)
    except OSError as err:  # a full or read-only disk: drop the partial files, keep `latest`
        shutil.rmtree(tmp, ignore_errors=True)
        reason = err.strerror or str(err)
        raise OSError(err.errno, f"could not save checkpoint {name} ({reason}); "
                                 f"{out / 'latest'} still names the previous one", str(out)) from None
    atomic_write_bytes(out / "latest", (name + "\n").encode())
    # prune older checkpoints only once `latest` points at the new one
    old = sorted(p for p in out.glob("ckpt-*") if p.is_dir() and p.name != name)
    for p in old[: max(0, len(old) - (keep - 1))]:
        shutil.rmtree(p, ignore_errors=True)
    return final


def load_config(ckpt: Path):
    """(config.json as a dict, its GPTConfig) of checkpoint directory `ckpt`, every field
    validated (CheckpointError otherwise); no tensor is read."""
    cfg_path = ckpt / "config.json"
    cfg = _read_json(cfg_path, "every checkpoint has one")
    if not isinstance(cfg, dict):
        raise CheckpointError(cfg_path, "", f"expected a JSON object, got {type(cfg).__name__}")
    if not isinstance(cfg.get("model"), dict):
        raise CheckpointError(cfg_path, "model", "missing or not an object")
    try:
        config = GPTConfig(**check_fields(GPTConfig, cfg["model"], cfg_path, "model"))
    except (TypeError, ValueError) as err:
        if isinstance(err, CheckpointError):
            raise
        raise CheckpointError(cfg_path, "model", str(err)) from None
    _check_tokenizer_dict(cfg.get("tokenizer"), cfg_path)
    if "train" in cfg:
        from .train import TrainConfig  # train imports this module
        check_fields(TrainConfig, cfg["train"], cfg_path, "train")
    return cfg, config


def load_checkpoint(path, with_optimizer: bool = False):
    """(model, tokenizer, config dict, state, (m, v) or None) from a checkpoint directory.
    state is {} when state.json is missing or damaged (check_resume_state says so)."""
    ckpt = latest_checkpoint(path)
    cfg, config = load_config(ckpt)
    try:
        state = json.loads((ckpt / "state.json").read_text(encoding="utf-8"))
        state = state if isinstance(state, dict) else {}
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        state = {}
    model_path = ckpt / "model.safetensors"
    tensors, _ = safetensors.load(model_path)
    model = GPT(config, seed=None)  # zeros, filled below
    for name in model.params.names():
        if name not in tensors:
            raise CheckpointError(model_path, name, "parameter missing")
        t = tensors[name]
        if t.dtype != np.float32:
            raise CheckpointError(model_path, name, f"expected float32 (F32), got {t.dtype}")
        if t.shape != model.params[name].shape:
            raise CheckpointError(model_path, name, f"expected shape "
                                  f"{model.params[name].shape}, got {t.shape}")
        model.params[name][...] = t
    tokenizer = tokenizer_from_dict(cfg["tokenizer"], ckpt)
    opt = None
    if with_optimizer:
        opt_path = ckpt / "optimizer.safetensors"
        o, _ = safetensors.load(opt_path)
        for key in ("m", "v"):
            t = o.get(key)
            if t is None:
                raise CheckpointError(opt_path, key, "missing (AdamW's moments)")
            if t.dtype != np.float32 or t.shape != (model.params.size,):
                raise CheckpointError(opt_path, key, f"expected float32 [{model.params.size}], "
                                      f"got {t.dtype} {list(t.shape)}")
        opt = (o["m"], o["v"])
    return model, tokenizer, cfg, state, opt
