"""The installed module must run on older x86-64 CPUs: run a smoke test of the kernels under
QEMU's user-mode emulation of a Nehalem (SSE4.2, no AVX) and a Haswell (AVX2, no AVX-512).
An AVX-512 instruction leaking into baseline code would die with SIGILL here.
Skipped where qemu-x86_64 is not installed (Debian: apt-get install qemu-user)."""
import platform
import shutil
import subprocess
import sys

import pytest

SMOKE = r"""
import numpy as np, kernelgpt
from kernelgpt import ops
rng = np.random.default_rng(0)
a = rng.random((37, 53), dtype=np.float32); b = rng.random((53, 29), dtype=np.float32)
assert np.abs(ops.matmul(a, b) - a @ b).max() < 1e-4
for name in dir(ops):
    fn = getattr(ops, name)
    smoke = getattr(fn, "_smoke", None)
    if smoke is not None:
        smoke()
print(kernelgpt.cpu_features()["best_isa"])
"""


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 only")
@pytest.mark.skipif(shutil.which("qemu-x86_64") is None, reason="qemu-x86_64 not installed")
@pytest.mark.parametrize("cpu,expected", [("Nehalem", "generic"), ("Haswell", "avx2")])
def test_runs_on_older_cpu(cpu, expected):
    result = subprocess.run(["qemu-x86_64", "-cpu", cpu, sys.executable, "-c", SMOKE],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == expected
