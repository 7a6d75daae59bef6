"""kernelgpt: every step of a modern LLM as code you can read, run and measure.

    >>> import numpy as np, kernelgpt
    >>> from kernelgpt import ops
    >>> a = np.random.rand(128, 576).astype(np.float32)
    >>> b = np.random.rand(576, 1536).astype(np.float32)
    >>> c = ops.matmul(a, b)                    # our blocked AVX-512 kernel
    >>> c_ref = ops.matmul(a, b, backend="numpy")  # the numpy baseline / oracle

`kernelgpt.cpu_features()` says what the CPU offers and which code path each kernel family
runs; `kernelgpt.set_num_threads(n)` sets how many threads the kernels use.
"""
from __future__ import annotations

import os as _os

# OpenMP (libgomp) lets idle worker threads spin for up to 300,000 iterations after each
# parallel region. When anything else wants the CPU (a browser, a compiler, another process),
# spinning workers and descheduled ones wait on each other and kernel calls can take 10-100x
# longer (measured with two busy processes on 2 cores: decode 10 tok/s instead of 237). A short
# spin (20,000 iterations, a few microseconds) keeps the speed of spinning between the
# back-to-back kernel calls of one model step on an idle machine (matmul and decode within
# noise of OMP_WAIT_POLICY=ACTIVE; PASSIVE, always sleeping, decodes 1.8x slower) and gives
# the CPU back quickly under load. Must be set before libgomp loads (with _C, below); a value
# the user exported for either variable wins.
if "OMP_WAIT_POLICY" not in _os.environ and "GOMP_SPINCOUNT" not in _os.environ:
    _os.environ["GOMP_SPINCOUNT"] = "20000"

from . import _C, ops, reference  # noqa: E402
from ._version import __version__  # noqa: E402
from .io.fetch import NotFetchedError, fetch  # noqa: E402
from .llama import load_model  # noqa: E402
from .sampling import DEFAULT_SAMPLING, SamplingConfig  # noqa: E402
from .text_model import ChatResult, ChatSession, TextModel  # noqa: E402
from .tokenizer import (Encoding, encoding_for_model, encoding_name_for_model,  # noqa: E402
                        get_encoding, list_encoding_names)

__all__ = [
    "ops",
    "reference",
    "cpu_features",
    "set_num_threads",
    "get_num_threads",
    "set_isa",
    "get_isa",
    "available_isas",
    "__version__",
    "Encoding",
    "get_encoding",
    "encoding_for_model",
    "encoding_name_for_model",
    "list_encoding_names",
    "fetch",
    "NotFetchedError",
    "load_model",
    "TextModel",
    "ChatSession",
    "ChatResult",
    "SamplingConfig",
    "DEFAULT_SAMPLING",
]


def cpu_features() -> dict:
    """What the CPU supports, which instruction-set copy of the kernels runs, and the path
    each kernel family takes (e.g. ``{"matmul": "8x48 AVX-512 FMA microkernel, ..."}``)."""
    info = dict(_C.cpu_info())
    info["num_threads"] = _C.get_num_threads()
    info["kernels"] = ops.kernel_paths()
    return info


def set_num_threads(n: int) -> None:
    """Number of threads every native kernel uses (default: the CPUs this process may use)."""
    if not isinstance(n, int) or isinstance(n, bool):
        raise TypeError(f"set_num_threads: n must be an int, got {type(n).__name__}")
    _C.set_num_threads(n)


def get_num_threads() -> int:
    return _C.get_num_threads()


def available_isas() -> list:
    """Instruction-set levels compiled in *and* supported by this CPU, lowest first."""
    info = _C.cpu_info()
    # each architecture's levels, lowest first (a build holds one architecture's)
    rank = {"generic": 0, "avx2": 1, "avx512": 2, "avx512bf16": 3, "dotprod": 1, "i8mm": 2}
    best = rank[info["best_isa"]]
    return [isa for isa in info["compiled_isas"] if rank[isa] <= best]


def set_isa(name: str) -> None:
    """Run the kernels compiled for a lower instruction-set level (for testing and
    benchmarking the portable paths); ``set_isa(cpu_features()["best_isa"])`` restores."""
    _C.set_isa(name)


def get_isa() -> str:
    return _C.get_isa()
