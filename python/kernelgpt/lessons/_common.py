"""What the lessons share: the explainer's example sentences, plotting, the shipped model."""
from __future__ import annotations

import functools
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Iterator, List, Optional

import numpy as np

from .. import reference
from ..checkpoint import load_checkpoint
from ..generate import default_model_dir


COOKIES = "How do I bake chocolate chip cookies?"
CAT = "The cat sat on the mat because it was tired"
DPI = 110


PLOT_HINT = "plots need matplotlib: pip install 'kernelgpt[plot]'"


class PlotDependencyError(ImportError, RuntimeError):
    """Raised when a plot is asked for and matplotlib is not installed (it is the optional
    ``[plot]`` extra). An ImportError, and a RuntimeError so that the CLI reports it cleanly."""


def require_matplotlib():
    """The ``matplotlib.figure.Figure`` class, or PlotDependencyError with how to install it.

    Figures are made with ``Figure`` directly, never through pyplot: no backend is chosen or
    changed, and nothing global is left open."""
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise PlotDependencyError(PLOT_HINT) from err
    return Figure


_collected: ContextVar[Optional[list]] = ContextVar("kernelgpt_lesson_figures", default=None)


@contextmanager
def collect_figures() -> Iterator[List]:
    """Keeps every figure a lesson saves inside the block, to look at (tests inspect titles
    and labels this way):

        with collect_figures() as figs:
            run_lesson("attention", plot="out")
        figs[0].axes[0].get_title()
    """
    figs: list = []
    token = _collected.set(figs)
    try:
        yield figs
    finally:
        _collected.reset(token)


def lesson(name: str):
    """Registers a lesson's name (the one `kernelgpt explain` takes, and the stem of the png
    it writes) and checks for matplotlib before any work when a plot is asked for."""
    def wrap(fn):
        @functools.wraps(fn)
        def run(*args, **kw):
            if kw.get("plot", args[0] if args else None) is not None:
                require_matplotlib()
            return fn(*args, **kw)
        run.lesson_name = name
        return run
    return wrap


def _figure(plot, name: str, *, figsize=(8, 4.5), **kw):
    """(figure, path) when plotting was asked for, else (None, None): a constrained-layout
    figure that `_save` writes to ``plot/<name>.png``, name being the lesson's name."""
    if plot is None:
        return None, None
    Figure = require_matplotlib()
    path = Path(plot)
    path.mkdir(parents=True, exist_ok=True)
    return Figure(figsize=figsize, layout="constrained", **kw), path / f"{name}.png"


def _save(fig, path, out: List[str]) -> None:
    """Writes the lesson's figure and says where."""
    fig.savefig(path, dpi=DPI)
    figs = _collected.get()
    if figs is not None:
        figs.append(fig)
    out.append(f"plot: {path}")


def _char_label(c: str) -> str:
    """A character as a readable tick label: space and newline made visible."""
    return {" ": "\u2423", "\n": "\\n", "\t": "\\t"}.get(c, c)


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
        self.maps.append(reference.attention_weights(np.asarray(q, np.float64),
                                                     np.asarray(k[:, :, :S], np.float64), causal))
        return self.inner.attention(q, k, v, causal=causal, kv_length=kv_length, **kw)
