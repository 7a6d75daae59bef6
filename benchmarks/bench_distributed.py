"""Data-parallel training: what communication costs here, and when it pays on a cluster.

    flock .bench.lock python benchmarks/bench_distributed.py [--configs baby,default]
        [--steps 30] [--rounds 3] [--ranks 2]

Measured (this machine): the same global batch trained three ways, side by side, round after
round (median of the rounds): one process with all the threads ("1 x 2": --threads 2), N ranks
with one thread each under mpiexec ("2 x 1"), and the same with ZeRO-1. Each is a real
`kernelgpt train` run on the Shakespeare corpus; tokens/s is the median over its steps (the
first three and the evaluation steps left out); "comm" is the share of a step spent waiting
for the gradient all-reduce (and ZeRO-1's all-gather) after the backward pass: the part the
bucketed overlap did not hide.

Modelled (on paper, no network here): the bytes each step all-reduces (fp32 gradients: 4 x
parameters) and the time a ring all-reduce needs for them, 2 (N-1)/N x bytes / bandwidth per
rank, at 10 and 100 Gbit/s Ethernet and at NVLink (H100: about 450 GB/s of all-reduce bus
bandwidth per GPU, NCCL's busbw), against the measured compute time of one step, so a reader
sees when data parallelism pays: when the all-reduce takes a small share of the compute, or
can hide behind it.
"""
from __future__ import annotations

import argparse
import csv
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

PRESETS = {  # per-rank batch; the global batch is ranks x this
    "baby": ("baby", 6),
    "default": ("default", 6),
    "shakespeare-char": ("shakespeare-char", 2),
}
LINKS = {"10 Gbit/s": 1.25e9, "100 Gbit/s": 12.5e9, "NVLink (H100)": 450e9}


def n_params(preset: str) -> int:
    from kernelgpt.model import GPT, GPTConfig
    from kernelgpt.train import MODEL_PRESETS
    return GPT(GPTConfig(vocab_size=65, **MODEL_PRESETS[preset]), seed=None).params.size


def mpiexec() -> str:
    here = Path(sys.executable).parent / "mpiexec"
    found = str(here) if here.exists() else shutil.which("mpiexec")
    if not found:
        sys.exit("needs mpiexec: pip install 'kernelgpt[mpi]'")
    return found


def run(cmd, out: Path, steps: int):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_"))}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{p.stderr[-2000:]}")
    with open(out / "log.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["loss"] and int(r["step"]) > 3]
    tok = statistics.median(float(r["tokens_per_s"]) for r in rows)
    comm = [float(r["comm_s"]) * float(r["tokens_per_s"]) for r in rows if r.get("comm_s")]
    # comm_s x tokens/s = comm_s x tokens_per_step / dt: scaled below to a share of the step
    return tok, comm


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", default="baby,default")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ranks", type=int, default=2)
    args = ap.parse_args()
    N = args.ranks
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"# data parallel on this machine: {cpus} CPUs; {N} ranks x {max(1, cpus // N)} "
          f"thread(s) vs 1 process x {cpus} threads; {args.steps} steps, median of "
          f"{args.rounds} rounds")
    exe = mpiexec()
    measured = {}
    for name in args.configs.split(","):
        preset, B = PRESETS[name]
        common = ["--preset", preset, "--max-iters", str(args.steps), "--eval-interval",
                  str(10 * args.steps), "--eval-iters", "1", "--log-interval", "1",
                  "--no-progress", "--no-plot", "--warmup-iters", "5"]
        ways = {
            f"1 x {cpus}": lambda o: [sys.executable, "-m", "kernelgpt", "train", *common,
                                      "--batch-size", str(N * B), "--threads", str(cpus),
                                      "--out", str(o)],
            f"{N} x {max(1, cpus // N)}": lambda o: [exe, "-n", str(N), sys.executable, "-m",
                                                     "kernelgpt", "train", *common, "--batch-size",
                                                     str(B), "--out", str(o)],
            f"{N} x {max(1, cpus // N)} ZeRO-1": lambda o: [exe, "-n", str(N), sys.executable,
                                                            "-m", "kernelgpt", "train", *common,
                                                            "--batch-size", str(B), "--zero1",
                                                            "--out", str(o)],
        }
        results = {w: [] for w in ways}
        comm_share = {w: [] for w in ways}
        for _ in range(args.rounds):
            for way, cmd in ways.items():
                with tempfile.TemporaryDirectory() as d:
                    out = Path(d) / "run"
                    tok, comm = run(cmd(out), out, args.steps)
                    results[way].append(tok)
                    if comm:
                        tokens_per_step = N * B * _block(preset)
                        comm_share[way].append(statistics.median(comm) / tokens_per_step)
        base = statistics.median(results[f"1 x {cpus}"])
        print(f"\n## {name} ({n_params(preset):,} parameters, {N * B} sequences x "
              f"{_block(preset)} tokens per step)")
        print("| layout | tokens/s | vs 1 process | waiting on communication |")
        print("| --- | ---: | ---: | ---: |")
        for way in ways:
            tok = statistics.median(results[way])
            share = f"{100 * statistics.median(comm_share[way]):.1f}% of a step" \
                if comm_share[way] else "-"
            print(f"| {way} | {tok:,.0f} | {tok / base:.2f}x | {share} |")
        measured[name] = N * B * _block(preset) / base  # seconds per step, one process
    print("\n## modelled: one all-reduce of the fp32 gradients per step, ring algorithm, "
          "many ranks (2 (N-1)/N ~ 2)")
    print("| preset | parameters | MB all-reduced per step | " +
          " | ".join(f"all-reduce at {k}" for k in LINKS) + " | compute per step here |")
    print("| --- | ---: | ---: | " + " | ".join("---:" for _ in LINKS) + " | ---: |")
    for name in list(PRESETS) + ["gpt2-124m"]:
        p = 124_439_808 if name == "gpt2-124m" else n_params(PRESETS[name][0])
        mb = 4 * p / 1e6
        times = " | ".join(f"{1e3 * 2 * 4 * p / bw:,.2f} ms" for bw in LINKS.values())
        here = f"{1e3 * measured[name]:,.0f} ms" if name in measured else "-"
        print(f"| {name} | {p:,} | {mb:,.1f} | {times} | {here} |")


def _block(preset: str) -> int:
    from kernelgpt.train import MODEL_PRESETS
    return MODEL_PRESETS[preset]["block_size"]


if __name__ == "__main__":
    main()
