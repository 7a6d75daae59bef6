"""The installed module must run on older x86-64 CPUs: run a smoke test of the kernels under
QEMU's user-mode emulation of a Nehalem (SSE4.2, no AVX) and a Haswell (AVX2, no AVX-512).
An AVX-512 instruction leaking into baseline code would die with SIGILL here.
Skipped where qemu-x86_64 is not installed (Debian: apt-get install qemu-user)."""
import os
import platform
import shutil
import subprocess
import sys

import pytest

SMOKE = r"""
import numpy as np, kernelgpt
from kernelgpt import ops, reference
rng = np.random.default_rng(0)
r = lambda *s: rng.standard_normal(s).astype(np.float32)
def close(a, b, tol=1e-4):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert np.abs(a - b).max() <= tol * max(1.0, np.abs(b).max()), (np.abs(a - b).max())
a, b = r(37, 53), r(53, 29)
close(ops.matmul(a, b), a @ b)
x, w, bias = r(5, 67), r(67), r(67)
close(ops.softmax(x), reference.softmax(x))
close(ops.layernorm(x, w, bias), reference.layernorm(x, w, bias)[0])
close(ops.rmsnorm(x, w), reference.rmsnorm(x, w)[0])
close(ops.gelu(x), reference.gelu(x))
close(ops.silu(x), reference.silu(x))
t = rng.integers(0, 67, 5)
close(ops.cross_entropy(x, t), reference.cross_entropy(x, t))
q, k, v = r(1, 4, 9, 16), r(1, 2, 9, 16), r(1, 2, 9, 16)
close(ops.attention(q, k, v), reference.attention(q, k, v)[0])
close(ops.rope(q), reference.rope(q))
ids = rng.integers(0, 37, 11)
close(ops.embedding(ids, a), a[ids])
p, g, m, vv = r(100), r(100), np.zeros(100, np.float32), np.zeros(100, np.float32)
p2, m2, v2 = p.copy(), m.copy(), vv.copy()
ops.adamw_step(p, g, m, vv, step=1, lr=0.01)
reference.adamw_step(p2, g, m2, v2, 1, 0.01)
close(p, p2)
print(kernelgpt.cpu_features()["best_isa"])
"""


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 only")
@pytest.mark.skipif(shutil.which("qemu-x86_64") is None, reason="qemu-x86_64 not installed")
@pytest.mark.parametrize("cpu,expected", [("Nehalem", "generic"), ("Haswell", "avx2")])
def test_runs_on_older_cpu(cpu, expected):
    # -X faulthandler: a SIGILL prints the Python line that reached the illegal instruction.
    # OPENBLAS_CORETYPE: numpy's OpenBLAS reads the emulated CPU's CPUID wrongly under QEMU and
    # picks kernels that CPU lacks (numpy 2.4 then dies with SIGILL in its import-time sanity
    # check, before any kernelgpt code runs); its oldest x86-64 kernels run everywhere.
    env = dict(os.environ, OPENBLAS_CORETYPE="Prescott")
    result = subprocess.run(["qemu-x86_64", "-cpu", cpu, sys.executable, "-X", "faulthandler",
                             "-c", SMOKE],
                            capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == expected


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-g++") is None,
                    reason="needs the aarch64 cross compiler (Debian: g++-aarch64-linux-gnu)")
def test_every_source_compiles_for_aarch64():
    """ARM64 (issue 26): every C++ source compiles for aarch64 with -Wall -Werror
    (tools/cross_check.sh; compile only, nothing runs)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run(["bash", os.path.join(root, "tools", "cross_check.sh"), "aarch64"],
                       capture_output=True, text=True, timeout=900,
                       env={**os.environ, "PYTHON": sys.executable})
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "compilations clean with -Wall -Werror" in r.stdout


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-g++") is None or
                    shutil.which("qemu-aarch64-static") is None,
                    reason="needs g++-aarch64-linux-gnu and qemu-user-static (Debian)")
def test_kernels_run_on_aarch64_at_every_level():
    """ARM64 (issue 26): the kernels cross-compiled for aarch64 at every level (generic =
    armv8-a NEON, dotprod, i8mm) run under QEMU (-cpu max), each family's fast version equal to
    its naive one (tools/native_check.sh, tests/native/kernel_check.cpp)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run(["bash", os.path.join(root, "tools", "native_check.sh"), "aarch64"],
                       capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    lines = r.stdout.splitlines()
    for level in ("generic", "dotprod", "i8mm"):
        row = [x for x in lines if x.startswith(level + " ")]
        assert row and "checks passed" in row[0], r.stdout[-3000:]
        done, _, total = row[0].split()[1:4]
        assert done == total and int(total) > 100, row[0]


def _qemu_aarch64():
    return shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64")


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARM_ROOT = os.path.join(ROOT, "build", "arm64-root")


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-g++") is None or _qemu_aarch64() is None or
                    not os.path.exists(os.path.join(ARM_ROOT, "usr", "bin", "python3.11")),
                    reason="needs g++-aarch64-linux-gnu, qemu-user and build/arm64-root "
                           "(tools/arm64_root.sh, which .ci/run calls)")
def test_smollm2_on_aarch64_gives_the_x86_text(tmp_path):
    """ARM64 (issue 26): kernelgpt cross-built for aarch64 (tools/arm64_module.sh) runs in an
    arm64 Debian userland under QEMU and gives SmolLM2's greedy text identical to x86's, on the
    portable (generic) copy and on the one the emulated CPU picks (i8mm)."""
    from smollm2_files import gguf_path
    gguf = gguf_path()
    if gguf is None:
        pytest.skip("SmolLM2 GGUF not fetched: kernelgpt fetch smollm2")
    mod = tmp_path / "mod"
    r = subprocess.run(["bash", os.path.join(ROOT, "tools", "arm64_module.sh"), ARM_ROOT, str(mod)],
                       capture_output=True, text=True, timeout=1500,
                       env={**os.environ, "PYTHON": sys.executable})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    import jinja2
    import markupsafe
    import tqdm
    for pkg in (jinja2, markupsafe, tqdm):  # pure Python (markupsafe falls back from its .so)
        shutil.copytree(os.path.dirname(pkg.__file__), mod / pkg.__name__)
    args = ["generate", "--model", str(gguf), "--prompt", "The capital of France is",
            "--max-new-tokens", "16", "--temperature", "0"]
    x86 = subprocess.run([sys.executable, "-m", "kernelgpt"] + args, capture_output=True,
                         text=True, timeout=300)
    assert x86.returncode == 0, x86.stderr[-2000:]
    script = ("import sys, kernelgpt; from kernelgpt import cli; "
              "print(kernelgpt.get_isa(), kernelgpt.available_isas(), file=sys.stderr); "
              "kernelgpt.set_isa(sys.argv[1]); sys.exit(cli.main(sys.argv[2:]))")
    for level in ("generic", "i8mm"):
        arm = subprocess.run([_qemu_aarch64(), "-cpu", "max", "-L", ARM_ROOT,
                              os.path.join(ARM_ROOT, "usr", "bin", "python3.11"), "-c", script,
                              level] + args, capture_output=True, text=True, timeout=600,
                             env={**os.environ, "PYTHONPATH": str(mod)})
        assert arm.returncode == 0, arm.stderr[-3000:]
        assert "i8mm ['generic', 'dotprod', 'i8mm']" in arm.stderr
        assert arm.stdout == x86.stdout, (level, arm.stdout, x86.stdout)
