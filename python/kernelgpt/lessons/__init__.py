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
"""
from __future__ import annotations

from typing import Callable, Dict, Optional

from ._common import CAT, COOKIES, _AttentionRecorder  # noqa: F401  (tests record attention)
from .generation import lesson_kv_cache, lesson_sampling
from .gpu import lesson_gpu
from .language import lesson_attention, lesson_bpe, lesson_embedding, lesson_positions
from .learning import lesson_backprop, lesson_gradient_descent, lesson_neuron
from .training import lesson_alignment, lesson_training

__all__ = ["LESSONS", "run_lesson", "COOKIES", "CAT"]


LESSONS: Dict[str, Callable[..., str]] = {
    "gradient-descent": lesson_gradient_descent,
    "neuron": lesson_neuron,
    "backprop": lesson_backprop,
    "bpe": lesson_bpe,
    "embedding": lesson_embedding,
    "positions": lesson_positions,
    "attention": lesson_attention,
    "sampling": lesson_sampling,
    "kv-cache": lesson_kv_cache,
    "training": lesson_training,
    "alignment": lesson_alignment,
    "gpu": lesson_gpu,
}


def run_lesson(name: str, plot: Optional[str] = None) -> str:
    if name not in LESSONS:
        raise ValueError(f"unknown lesson {name!r}; choose from {', '.join(LESSONS)}")
    return LESSONS[name](plot=plot)
