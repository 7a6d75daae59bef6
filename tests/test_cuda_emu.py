"""The CUDA emulator (kernelgpt.cuda_emu) itself: it must run correct kernels correctly and
turn what a GPU leaves undefined into a RuntimeError (csrc/cuda_emu/selftest.cpp)."""
import numpy as np
import pytest

from kernelgpt import cuda_emu, ops

if not cuda_emu.available():
    pytest.skip("kernelgpt was built without the CUDA emulator", allow_module_level=True)

lib = cuda_emu._lib()


@pytest.fixture(autouse=True)
def forward_order():
    yield
    cuda_emu.set_order("forward")


def x_of(n, seed=0):
    return np.random.default_rng(seed).standard_normal(n).astype(np.float32)


@pytest.mark.parametrize("order", ["forward", "reverse", "shuffle"])
@pytest.mark.parametrize("threads", [1, 31, 32, 200, 1024])
def test_synced_rotate_is_right_in_every_order(order, threads):
    cuda_emu.set_order(order, seed=3)
    x = x_of(threads)
    np.testing.assert_array_equal(lib.selftest("rotate", x, threads), np.roll(x, -1))


def test_a_missing_syncthreads_shows_in_some_order():
    x = x_of(64)
    results = []
    for order in ("forward", "reverse"):
        cuda_emu.set_order(order)
        results.append(lib.selftest("rotate_unsynced", x, 64))
    wrong = [not np.array_equal(r, np.roll(x, -1)) for r in results]
    assert any(wrong), "the race must give a wrong answer in at least one order"


def test_warp_sum():
    x = x_of(64)
    out = lib.selftest("warp_sum", x, 64)
    np.testing.assert_allclose(out[:32], np.full(32, x[:32].sum()), rtol=1e-5)
    np.testing.assert_allclose(out[32:], np.full(32, x[32:].sum()), rtol=1e-5)


@pytest.mark.parametrize("name,threads,message", [
    ("divergent_sync", 32, "deadlock|returned while"),
    ("return_then_sync", 64, "after 1 threads of the block returned"),
    ("shuffle_after_return", 32, "lanes that have returned|returned while other lanes wait"),
    ("warp_sum", 48, "do not exist"),  # a full-mask shuffle in a partial warp
])
def test_undefined_behaviour_is_an_error(name, threads, message):
    with pytest.raises(RuntimeError, match=message):
        lib.selftest(name, x_of(threads), threads)


def test_launch_limits():
    with pytest.raises(RuntimeError, match="1024 threads"):
        lib.selftest("warp_sum", x_of(2048), 2048)
    with pytest.raises(RuntimeError, match="dynamic shared memory"):
        lib.selftest("dynamic_shared_sum", x_of(32), 32, 1, 64 * 1024)
    x = x_of(96)
    out = lib.selftest("dynamic_shared_sum", x, 32, 3, 32 * 4)
    np.testing.assert_allclose(out[:3], x.reshape(3, 32).sum(1), rtol=1e-5)


def test_arrays_behave_like_cupy_arrays():
    a = cuda_emu.asarray(np.arange(6, dtype=np.float32).reshape(2, 3))
    assert isinstance(a, cuda_emu.ndarray) and a.device.id == 0
    assert a.data.ptr == a.__array_interface__["data"][0]
    assert isinstance(a[1:], cuda_emu.ndarray)
    assert type(cuda_emu.asnumpy(a)) is np.ndarray
    assert np.isnan(cuda_emu.empty(3)).all()  # unwritten outputs show up
    y = ops.softmax(a)
    assert isinstance(y, cuda_emu.ndarray)
    e = np.exp(np.arange(3.0) - 2)
    np.testing.assert_allclose(cuda_emu.asnumpy(y)[0], e / e.sum(), rtol=1e-6)


def test_bad_order():
    with pytest.raises(ValueError, match="order must be"):
        cuda_emu.set_order("sideways")


def test_the_gpu_benchmark_runs_on_the_emulator():
    """benchmarks/bench_cuda.py is meant for a GPU; its dry run checks every line of it."""
    import subprocess
    import sys
    from pathlib import Path
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_cuda.py"
    run = subprocess.run([sys.executable, str(script), "--device", "emu", "--small",
                          "--repeats", "1"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    for line in ("matmul fp32 64^3", "warptiled", "wmma", "attention bwd", "train step"):
        assert line in run.stdout
