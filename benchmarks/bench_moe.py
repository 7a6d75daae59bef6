"""Mixture of experts: the layer's two versions against the numpy oracle, and a dense model
against a routed one with the same active parameters per token.

    flock .bench.lock python benchmarks/bench_moe.py [--threads 2] [--repeats 7] [--steps 20]

Layer (forward + backward, float32, one baby-sized batch: 768 tokens x 128, 8 experts of
hidden 512, top-2): "naive" runs each (token, expert) pair as its own matrix-vector products,
"grouped" gathers each expert's tokens and runs two matrix products per expert; the baseline is
the numpy oracle's forward (reference.moe_mlp: every expert on every token, float64, masked),
which has no backward. Median of --repeats.

Model (a training step: forward, backward, AdamW): nanoGPT's baby config (4 layers x 128, block
64, batch 12) dense with an MLP of hidden 512, against 8 experts of hidden 256 with top-2 (the
same multiply-adds per token in the MLP, 4x its parameters). Steps alternate, median step time.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from kernelgpt import moe, ops, reference
from kernelgpt.bench import median_time, setup_threads
from kernelgpt.model import GPT, GPTConfig


def layer(repeats):
    rng = np.random.default_rng(0)
    N, C, E, F, k = 768, 128, 8, 512, 2
    x = rng.standard_normal((N, C)).astype(np.float32)
    wr = rng.standard_normal((E, C)).astype(np.float32)
    w1 = (rng.standard_normal((E, F, C)) * 0.05).astype(np.float32)
    w2 = (rng.standard_normal((E, C, F)) * 0.05).astype(np.float32)
    b1, b2 = np.zeros((E, F), np.float32), np.zeros((E, C), np.float32)
    dy = rng.standard_normal((N, C)).astype(np.float32)

    def run(version):
        def step():
            y, _, saved = moe.moe_forward(ops, x, wr, w1, b1, w2, b2, k, ops.gelu, version, 0.01)
            grads = {"router": np.zeros_like(wr), "w1": np.zeros_like(w1),
                     "w2": np.zeros_like(w2), "b1": np.zeros_like(b1), "b2": np.zeros_like(b2)}
            moe.moe_backward(ops, dy, saved, wr, w1, w2, ops.gelu_backward, grads)
        return step

    base = median_time(lambda: reference.moe_mlp(x, wr, w1, b1, w2, b2, k, "gelu"), max(3, repeats // 2))
    print(f"\n## MoE layer: {N} tokens x {C}, {E} experts of hidden {F}, top-{k}, forward + backward")
    print("| version | ms | vs numpy oracle (forward only) |")
    print("| --- | ---: | ---: |")
    print(f"| numpy oracle (float64, every expert on every token, forward) | {base * 1e3:.2f} | 1.00x |")
    for version in ("naive", "grouped"):
        t = median_time(run(version), repeats if version == "grouped" else max(2, repeats // 3))
        print(f"| {version} | {t * 1e3:.2f} | {base / t:.2f}x |")


def model(steps):
    base = dict(vocab_size=65, n_layer=4, n_head=4, n_embd=128, block_size=64)
    configs = {"dense, MLP hidden 512": GPTConfig(**base, mlp_hidden=512),
               "8 experts x hidden 256, top-2": GPTConfig(**base, mlp_hidden=256, n_expert=8,
                                                          n_expert_active=2)}
    rng = np.random.default_rng(1)
    models = {name: GPT(c, seed=0) for name, c in configs.items()}
    state = {name: (np.zeros(m.params.size, np.float32), np.zeros(m.params.size, np.float32))
             for name, m in models.items()}
    times = {name: [] for name in models}
    for s in range(steps + 2):
        idx = rng.integers(0, 65, (12, 64))
        tgt = rng.integers(0, 65, (12, 64))
        for name, m in models.items():
            t0 = time.perf_counter()
            m.zero_grad()
            m.forward_backward(idx, tgt)
            ops.clip_grad_norm(m.grads.data, 1.0)
            mm, vv = state[name]
            ops.adamw_step(m.params.data, m.grads.data, mm, vv, step=s + 1, lr=1e-3)
            if s >= 2:
                times[name].append(time.perf_counter() - t0)
    print(f"\n## baby model, one training step (12 x 64 tokens), median of {steps}")
    print("| model | parameters | MLP parameters active per token | tokens/s |")
    print("| --- | ---: | ---: | ---: |")
    for name, m in models.items():
        c = m.config
        active = c.n_layer * (2 * c.n_embd * c.mlp_hidden) * (c.n_expert_active if c.n_expert else 1)
        t = statistics.median(times[name])
        print(f"| {name} | {m.params.size:,} | {active:,} | {12 * 64 / t:,.0f} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    limiter = setup_threads(args.threads)  # noqa: F841 (kept alive: it holds the BLAS limit)
    layer(args.repeats)
    model(args.steps)


if __name__ == "__main__":
    main()
