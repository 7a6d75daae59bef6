"""Checkpoints: a trained model, its tokenizer and the training state, on disk.

A checkpoint is a directory ``OUT/ckpt-000500/`` holding

    model.safetensors      the parameters by name (loadable by safetensors.numpy and PyTorch)
    optimizer.safetensors  AdamW's m and v (flat, in the parameter buffer's order)
    config.json            {"model": GPTConfig, "train": TrainConfig, "tokenizer": ...}
    state.json             step, the data sampler's RNG state, the log
    tokenizer.tiktoken     a trained BPE vocabulary (only for --tokenizer bpe)

``OUT/latest`` names the newest complete one. It is replaced atomically only after the
directory is fully written and fsynced, so a kill at any moment leaves the previous checkpoint
usable. train.py writes checkpoints; generate, the lessons and `kernelgpt sample` read them.
"""
from __future__ import annotations

import dataclasses
import json
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
           "tokenizer_from_dict"]


def tokenizer_to_dict(tok) -> dict:
    if isinstance(tok, CharTokenizer):
        return tok.to_dict()
    if getattr(tok, "name", None) == "cl100k_base":
        return {"kind": "tiktoken", "name": "cl100k_base"}
    return {"kind": "bpe", "tiktoken_file": "tokenizer.tiktoken", "pattern": tok._pat_str,
            "special_tokens": dict(tok._special_tokens)}


def tokenizer_from_dict(d: dict, directory: Path):
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
    tmp.mkdir()
    host = to_numpy(model.params.data)  # one copy from the device (a no-op on the CPU)
    tensors = {n: host[o: o + int(np.prod(s))].reshape(s)
               for n, (o, s) in model.params.offsets.items()}
    safetensors.save(tensors, tmp / "model.safetensors", metadata={"format": "np"})
    safetensors.save({"m": to_numpy(m), "v": to_numpy(v)}, tmp / "optimizer.safetensors")
    tok = tokenizer_to_dict(tokenizer)
    if tok["kind"] == "bpe":
        tokenizer.save(tmp / tok["tiktoken_file"])
    save_json(tmp / "config.json", {"model": model.config.to_dict(),
                                    "train": dataclasses.asdict(tc) if dataclasses.is_dataclass(tc) else dict(tc), "tokenizer": tok})
    save_json(tmp / "state.json", state)
    fsync_dir(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_dir(out)
    atomic_write_bytes(out / "latest", (name + "\n").encode())
    # prune older checkpoints only once `latest` points at the new one
    old = sorted(p for p in out.glob("ckpt-*") if p.is_dir() and p.name != name)
    for p in old[: max(0, len(old) - (keep - 1))]:
        shutil.rmtree(p, ignore_errors=True)
    return final


def load_checkpoint(path, with_optimizer: bool = False):
    """(model, tokenizer, config dict, state, (m, v) or None) from a checkpoint directory."""
    ckpt = latest_checkpoint(path)
    try:
        cfg = json.loads((ckpt / "config.json").read_text())
        state = json.loads((ckpt / "state.json").read_text()) if (ckpt / "state.json").exists() else {}
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{ckpt}: corrupt checkpoint metadata ({err})") from None
    config = GPTConfig.from_dict(cfg["model"])
    tensors, _ = safetensors.load(ckpt / "model.safetensors")
    model = GPT(config, seed=None)  # zeros, filled below
    for name in model.params.names():
        if name not in tensors:
            raise ValueError(f"{ckpt}: parameter {name!r} missing")
        t = tensors[name]
        if t.shape != model.params[name].shape:
            raise ValueError(f"{ckpt}: parameter {name!r} has shape {t.shape}, "
                             f"expected {model.params[name].shape}")
        model.params[name][...] = t.astype(np.float32)
    tokenizer = tokenizer_from_dict(cfg["tokenizer"], ckpt)
    opt = None
    if with_optimizer:
        o, _ = safetensors.load(ckpt / "optimizer.safetensors")
        opt = (o["m"].astype(np.float32), o["v"].astype(np.float32))
    return model, tokenizer, cfg, state, opt
