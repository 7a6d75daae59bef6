"""pytest-benchmark groups: `pytest benchmarks/ --benchmark-only` (numpy vs kernelgpt vs
peers per kernel and shape). Threads: 2 for every library unless KERNELGPT_THREADS says
(kernelgpt.bench.setup_threads). The cases come from the plain scripts beside these files
(bench_<family>.py), which print the full tables."""
import pytest

from kernelgpt.bench import setup_threads, torch_or_none


@pytest.fixture(scope="session", autouse=True)
def _threads():
    limiter = setup_threads()
    yield
    del limiter


def torch_or_skip():
    torch = torch_or_none()
    if torch is None:
        pytest.skip("PyTorch is not installed")
    return torch


def torch_if(impl):
    """PyTorch when impl == "torch" (the test is skipped without it), else None: the peer is
    built only for its own test."""
    return torch_or_skip() if impl == "torch" else None
