"""How a GPU runs a kernel, on the CUDA emulator: barriers and the SGEMM ladder."""
from __future__ import annotations


import numpy as np

from .. import cuda_emu, ops
from ..kernels import matmul as matmul_family
from ._common import _figure, _save, lesson


# ---- 12. the GPU ---------------------------------------------------------------------------------

# (version, idea, tile M x N x K, outputs per thread, global-memory values loaded per multiply-add,
#  shared-memory values read per multiply-add) of csrc/cuda/matmul.cu, from its tile sizes
_SGEMM_LADDER = [
    ("naive", "a thread per output; a warp reads 32 rows of A", "-", 1, 2.0, 0.0),
    ("coalesced", "a warp reads 32 neighbours of B", "-", 1, 2.0, 0.0),
    ("tiled", "32x32 tiles staged in shared memory", "32x32x32", 1, 2 / 32, 2.0),
    ("blocked1d", "8 outputs down a column per thread", "64x64x8", 8, 2 / 64, 9 / 8),
    ("blocked", "a 4x4 grid of outputs per thread", "64x64x16", 16, 2 / 64, 8 / 16),
    ("vectorized", "blocked + 16-byte global loads", "64x64x16", 16, 2 / 64, 8 / 16),
    ("warptiled", "warps own 64x32, lanes 2x2 blocks of 4x4", "128x128x16", 64, 2 / 128,
     16 / 64),
]


@lesson("gpu")
def lesson_gpu(plot=None) -> str:
    """How a GPU runs a kernel: threads, blocks, barriers and the SGEMM ladder, emulated.

    Runs on the CPU emulator: the real CUDA source, every thread a fiber."""
    if not cuda_emu.available():
        out = ["this build has no CUDA emulator (built with -DKG_CUDA_EMU=OFF)"]
        _plot_ladder(plot, None, out)
        return "\n".join(out)
    lib = cuda_emu._lib()
    rng = np.random.default_rng(0)
    out = ["A CUDA kernel is one function run by many threads: blocks of up to 1024 threads,",
           "split into warps of 32 that share instructions. kernelgpt.cuda_emu runs the real",
           "csrc/cuda sources on the CPU, each thread a fiber, so we can watch what they do.", ""]
    # 1. a real kernel, through ops, on emulated device arrays
    x = rng.standard_normal((4, 1000)).astype(np.float32)
    y = cuda_emu.asnumpy(ops.softmax(cuda_emu.asarray(x)))
    e = np.exp(x - x.max(-1, keepdims=True))
    out.append("softmax.cu 'online' (one block of 256 threads per row, warp shuffles then shared")
    out.append(f"memory to combine the threads' partial max and sum): max |error| vs numpy "
               f"{np.abs(y - e / e.sum(-1, keepdims=True)).max():.1e}")
    # 2. why __syncthreads() matters
    v = rng.standard_normal(64).astype(np.float32)
    wrong = {}
    for order in ("forward", "reverse"):
        cuda_emu.set_order(order)
        wrong[order] = int((lib.selftest("rotate_unsynced", v, 64) != np.roll(v, -1)).sum())
    cuda_emu.set_order("forward")
    out += ["", "64 threads each write one value to shared memory, then read their neighbour's.",
            "Without __syncthreads() between the write and the read, the answer depends on",
            "which thread runs first: wrong values with threads run in order "
            f"{wrong['forward']}/64, in reverse {wrong['reverse']}/64;",
            "with the barrier: " + str(int((lib.selftest("rotate", v, 64) != np.roll(v, -1))
                                            .sum())) + "/64."]
    try:
        lib.selftest("return_then_sync", v, 64)
    except RuntimeError as err:
        out += ["A barrier some threads never reach hangs a GPU; the emulator says so:",
                "  " + str(err).split(": ", 1)[1]]
    # 3. the SGEMM ladder: same answer, less memory traffic per multiply-add
    a = cuda_emu.asarray(rng.standard_normal((96, 80)).astype(np.float32))
    b = cuda_emu.asarray(rng.standard_normal((80, 136)).astype(np.float32))
    ref = cuda_emu.asnumpy(a).astype(np.float64) @ cuda_emu.asnumpy(b)
    out += ["", "matmul.cu, one rung per idea (C = A @ B, 96x80 @ 80x136 on the emulator); a",
            "multiply-add needs 2 values: from global memory (DRAM behind L2 / L1 caches, slow),",
            "shared memory (fast, per block) or registers (per thread, fastest):",
            f"{'version':<11} {'tile':<11} {'outputs':>7} {'global/FMA':>10} {'shared/FMA':>10}"
            f"  max |error|  idea"]
    errors = []
    for name, idea, tile, per_thread, dram, shared in _SGEMM_LADDER:
        err = np.abs(cuda_emu.asnumpy(ops.matmul(a, b, backend=name)) - ref).max()
        errors.append(float(err))
        out.append(f"{name:<11} {tile:<11} {per_thread:>7} {dram:>10.4f} {shared:>10.3f}"
                   f"  {err:11.1e}  {idea}")
    assert [r[0] for r in _SGEMM_LADDER] == matmul_family.VERSIONS.names("cuda")
    out += ["(outputs: per thread; global/FMA and shared/FMA: values loaded per multiply-add",
            "from global and from shared memory, the rest come from registers. An H100 does ~40",
            "fp32 FMA per float its DRAM delivers (67 TFLOP/s vs 3.35 TB/s), so only the later",
            "rungs can keep it busy; the caches rescue the first ones only partly.)"]
    _plot_ladder(plot, errors, out)
    return "\n".join(out)


def _plot_ladder(plot, errors, out) -> None:
    """The SGEMM ladder's memory traffic per multiply-add (and each rung's error, if run)."""
    fig, path = _figure(plot, "gpu", figsize=(11, 4.4) if errors is not None else (7.5, 4.4))
    if not fig:
        return
    names = [r[0] for r in _SGEMM_LADDER]
    pos = np.arange(len(names))
    if errors is None:
        ax = fig.subplots()
        panels = [ax]
    else:
        ax, ax2 = panels = fig.subplots(1, 2, sharex=True, width_ratios=[1.4, 1])
    ax.bar(pos - 0.2, [r[4] for r in _SGEMM_LADDER], 0.4, label="from global memory (slow)")
    ax.bar(pos + 0.2, [r[5] for r in _SGEMM_LADDER], 0.4, label="from shared memory (fast)")
    ax.set_yscale("symlog", linthresh=0.01)
    ax.set(ylabel="values loaded per multiply-add\n(log scale below 0.01 linear)",
           title="memory traffic: each rung reuses more of what it loads")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    if errors is not None:
        bars = ax2.bar(pos, np.maximum(errors, 1e-12), color="tab:green")
        ax2.bar_label(bars, [f"{e:.1e}" for e in errors], fontsize=7, rotation=90, padding=3)
        ax2.axhline(np.finfo(np.float32).eps, color="gray", ls="--", lw=1,
                    label="float32 machine epsilon")
        ax2.set_yscale("log")
        ax2.set_ylim(1e-9, 1e-2)
        ax2.set(ylabel="max |C − A @ B| vs float64 (log scale)",
                title="every rung computes the same product")
        ax2.legend(fontsize=8, loc="upper left")
        ax2.grid(axis="y", alpha=0.3)
    for a_ in panels:
        a_.set_xticks(pos, names, rotation=30, ha="right")
        a_.set_xlabel("matmul.cu version (the ladder, in order)")
    fig.suptitle("The SGEMM ladder on the CUDA emulator: same answer, less memory traffic"
                 if errors is not None else
                 "The SGEMM ladder (no CUDA emulator in this build: the kernels were not run)")
    _save(fig, path, out)
