"""What the lessons share: the explainer's example sentences, plotting, the shipped model."""
from __future__ import annotations

import math
from pathlib import Path
from typing import List

import numpy as np

from ..checkpoint import load_checkpoint
from ..generate import default_model_dir


COOKIES = "How do I bake chocolate chip cookies?"
CAT = "The cat sat on the mat because it was tired"


def _figure(plot, name):
    """(figure, path) when plotting was asked for, else (None, None)."""
    if plot is None:
        return None, None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    path = Path(plot)
    path.mkdir(parents=True, exist_ok=True)
    return plt, path / f"{name}.png"


def _save(plt, fig, path, out: List[str], **kw) -> None:
    """Writes the lesson's figure and says where."""
    fig.savefig(path, dpi=100, **kw)
    plt.close(fig)
    out.append(f"plot: {path}")


def _bar(p: float, width: int = 40) -> str:
    return "#" * max(0, int(round(p * width)))


def _shipped_model():
    model, tokenizer, _, _, _ = load_checkpoint(default_model_dir())
    return model, tokenizer


class _AttentionRecorder:
    """Stands in for a model's ``ops`` and keeps the attention probabilities of every call
    (softmax(q k^T / sqrt(d)) with the causal mask), computed from the same q and k."""

    def __init__(self, inner):
        self.inner, self.maps = inner, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def attention(self, q, k, v, *, causal=True, kv_length=None, **kw):
        S = k.shape[2] if kv_length is None else kv_length
        T, H, Hkv = q.shape[2], q.shape[1], k.shape[1]
        kk = np.repeat(np.asarray(k[:, :, :S], np.float64), H // Hkv, axis=1)
        s = np.asarray(q, np.float64) @ kk.transpose(0, 1, 3, 2) / math.sqrt(q.shape[-1])
        if causal:
            s = np.where(np.tril(np.ones((T, S), bool), S - T), s, -np.inf)
        s = np.exp(s - s.max(-1, keepdims=True))
        self.maps.append(s / s.sum(-1, keepdims=True))
        return self.inner.attention(q, k, v, causal=causal, kv_length=kv_length, **kw)
