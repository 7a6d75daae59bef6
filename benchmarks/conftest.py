"""pytest-benchmark groups: `pytest benchmarks/ --benchmark-only` (numpy vs kernelgpt vs
PyTorch per kernel and shape). Threads: 2 for every library unless KERNELGPT_THREADS says."""
import os

import pytest

import kernelgpt

THREADS = int(os.environ.get("KERNELGPT_THREADS", "2"))


@pytest.fixture(scope="session", autouse=True)
def _threads():
    kernelgpt.set_num_threads(THREADS)
    try:
        import threadpoolctl
        limiter = threadpoolctl.threadpool_limits(THREADS)
    except ImportError:
        limiter = None
    try:
        import torch
        torch.set_num_threads(THREADS)
    except ImportError:
        pass
    yield
    del limiter


def torch_or_skip():
    return pytest.importorskip("torch")
