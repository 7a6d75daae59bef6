"""The explainer, runnable: `kernelgpt explain <lesson>` prints each concept computed by the
package's own code, and `--plot DIR` draws it.

    kernelgpt explain                       # the list
    kernelgpt explain attention --plot out  # prints the weights, writes out/attention.png

Every lesson is a function ``lesson_<name>(plot=None) -> str`` that returns what it prints; the
numbers come from the kernels in ``ops``, the tokenizer, the model and the sampler, never from
a table. Lessons that need a trained model use the Shakespeare model shipped with the package
(a character-level GPT, so its "tokens" are letters). The inputs are the explainer's own
examples: learning rate 0.60 and momentum 0.90, the neuron with inputs [0.8, 0.2, 0.5],
"low lower lowest", "How do I bake chocolate chip cookies?", "The cat sat on the mat because
it was tired".

Plots need matplotlib, the optional ``[plot]`` extra (``pip install 'kernelgpt[plot]'``):
with ``plot=DIR`` a lesson writes ``DIR/<lesson>.png``, <lesson> being its name in ``LESSONS``
(``gradient-descent.png``, ``kv-cache.png``, ...), and without matplotlib it raises
``PlotDependencyError`` (an ImportError) before doing any work. ``collect_figures()`` keeps
the matplotlib figures a lesson draws, to inspect.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional

from .architectures import lesson_architectures
from ._common import (CAT, COOKIES, PLOT_HINT, PlotDependencyError, _AttentionRecorder,  # noqa: F401
                      collect_figures, require_matplotlib)
from .generation import lesson_kv_cache, lesson_sampling, lesson_trace
from .gpu import lesson_gpu
from .language import lesson_attention, lesson_bpe, lesson_embedding, lesson_positions
from .learning import lesson_backprop, lesson_gradient_descent, lesson_neuron
from .training import lesson_alignment, lesson_training

__all__ = ["LESSONS", "run_lesson", "describe", "COOKIES", "CAT", "PlotDependencyError",
           "PLOT_HINT", "collect_figures", "require_matplotlib"]


LESSONS: Dict[str, Callable[..., str]] = {
    fn.lesson_name: fn for fn in (
        lesson_gradient_descent, lesson_neuron, lesson_backprop, lesson_bpe, lesson_embedding,
        lesson_positions, lesson_attention, lesson_sampling, lesson_kv_cache, lesson_trace,
        lesson_training,
        lesson_alignment, lesson_architectures, lesson_gpu)
}


def describe(name: str) -> str:
    """The lesson's one-line description: the summary line of its docstring."""
    return LESSONS[name].__doc__.strip().splitlines()[0].strip()


def run_lesson(name: str, plot: Optional[str] = None) -> str:
    """What lesson `name` prints; with plot=DIR it also writes DIR/<name>.png."""
    if name not in LESSONS:
        raise ValueError(f"unknown lesson {name!r}; choose from {', '.join(LESSONS)}")
    return LESSONS[name](plot=plot)
