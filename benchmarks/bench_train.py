"""Training throughput: kernelgpt vs the same model in PyTorch eager (benchmarks/torch_gpt.py),
side by side in one run, same data, same hyper-parameters, same thread count.

    flock .bench.lock python benchmarks/bench_train.py [--threads 2] [--steps 20] [--converge 2000]
        [--configs baby,shakespeare-char] [--profile]

Configs: nanoGPT's CPU "baby" config (n_layer 4, n_head 4, n_embd 128, block 64, batch 12)
and its shakespeare-char config (n_layer 6, n_head 6, n_embd 384, block 256, batch 64), on the
character-level Shakespeare corpus. One step = forward + backward + gradient clipping + AdamW.
With --converge N both frameworks train the baby config for N iterations from the same
initial weights and batches, and the validation losses are compared.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from kernelgpt import ops
from kernelgpt.bench import alternate, setup_threads, torch_or_none
from kernelgpt.data import CharTokenizer, shakespeare_text
from kernelgpt.model import GPT, GPTConfig

CONFIGS = {
    "baby": (dict(n_layer=4, n_head=4, n_embd=128, block_size=64), 12),
    "shakespeare-char": (dict(n_layer=6, n_head=6, n_embd=384, block_size=256), 64),
}
LR, WD, BETAS, CLIP = 1e-3, 0.1, (0.9, 0.99), 1.0


def batches(data, B, T, seed, n):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        s = rng.integers(0, len(data) - T - 1, B)
        yield (np.stack([data[i:i + T] for i in s]), np.stack([data[i + 1:i + 1 + T] for i in s]))


class KgTrainer:
    def __init__(self, cfg, seed=0):
        self.model = GPT(cfg, seed=seed)
        self.m = np.zeros(self.model.params.size, np.float32)
        self.v = np.zeros(self.model.params.size, np.float32)
        self.step_n = 0

    def step(self, x, y, lr=LR):
        model, nd = self.model, self.model.n_decayed
        self.step_n += 1
        model.zero_grad()
        loss = model.forward_backward(x, y)
        P, G = model.params.data, model.grads.data
        ops.clip_grad_norm(G, CLIP)
        ops.adamw_step(P[:nd], G[:nd], self.m[:nd], self.v[:nd], step=self.step_n, lr=lr,
                       beta1=BETAS[0], beta2=BETAS[1], weight_decay=WD)
        ops.adamw_step(P[nd:], G[nd:], self.m[nd:], self.v[nd:], step=self.step_n, lr=lr,
                       beta1=BETAS[0], beta2=BETAS[1], weight_decay=0.0)
        return loss

    def loss(self, x, y):
        return self.model.loss(x, y)


class TorchTrainer:
    def __init__(self, cfg, kg_model):
        import torch
        from torch_gpt import TorchGPT
        self.torch = torch
        self.model = TorchGPT(cfg)
        self.model.load_from(kg_model)
        decay = [p for n, p in self.model.named_parameters() if p.dim() >= 2]
        rest = [p for n, p in self.model.named_parameters() if p.dim() < 2]
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": WD},
                                      {"params": rest, "weight_decay": 0.0}], lr=LR, betas=BETAS)

    def step(self, x, y, lr=LR):
        t = self.torch
        for g in self.opt.param_groups:
            g["lr"] = lr
        self.opt.zero_grad(set_to_none=True)
        _, loss = self.model(t.from_numpy(x), t.from_numpy(y))
        loss.backward()
        t.nn.utils.clip_grad_norm_(self.model.parameters(), CLIP)
        self.opt.step()
        return loss.item()

    def loss(self, x, y):
        with self.torch.no_grad():
            return self.model(self.torch.from_numpy(x), self.torch.from_numpy(y))[1].item()


def throughput(name, data, vocab, steps, torch_ok):
    kw, B = CONFIGS[name]
    cfg = GPTConfig(vocab_size=vocab, **kw)
    kg = KgTrainer(cfg)
    trainers = {"kernelgpt": kg}
    if torch_ok:
        trainers["torch"] = TorchTrainer(cfg, kg.model)
    data_batches = list(batches(data, B, cfg.block_size, 1, steps + 2))

    def next_step(trainer):  # each call trains on the next batch (the first one warms up)
        feed = iter(data_batches)
        return lambda: trainer.step(*next(feed))
    # the frameworks alternate step by step, one timed step each per round
    seconds = alternate([(k, next_step(tr), 1) for k, tr in trainers.items()], steps,
                        pause=0.05, warmup=False, wake_single=False)
    tokens = B * cfg.block_size
    out = {k: tokens / v for k, v in seconds.items()}
    line = f"{name}: " + ", ".join(f"{k} {v:,.0f} tok/s ({tokens / v * 1e3:.1f} ms/step)"
                                   for k, v in out.items())
    if "torch" in out:
        line += f"  -> {out['kernelgpt'] / out['torch']:.2f}x PyTorch"
    print(line, flush=True)
    return out


class _TimedOps:
    """Stands in for the model's ops module and adds up the time spent in each kernel call
    (linear/matmul keyed by their shapes, so the profile shows which layer costs what)."""

    def __init__(self, inner):
        self.inner, self.seconds, self.calls = inner, {}, {}

    def __getattr__(self, name):
        fn = getattr(self.inner, name)
        if not callable(fn):
            return fn

        def timed(*args, **kwargs):
            key = name
            if name in ("matmul", "linear") and len(args) >= 2:
                a, b = args[0], args[1]
                ta = "T" if kwargs.get("trans_a") else ""
                tb = "T" if kwargs.get("trans_b") or name == "linear" else ""
                shape_a, shape_b = "x".join(map(str, a.shape)), "x".join(map(str, b.shape))
                key = f"{name} {shape_a}{ta} @ {shape_b}{tb}"
            t0 = time.perf_counter()
            result = fn(*args, **kwargs)
            self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - t0
            self.calls[key] = self.calls.get(key, 0) + 1
            return result
        return timed


def profile(name, data, vocab, steps):
    """Where one kernelgpt training step spends its time, per kernel call site."""
    kw, B = CONFIGS[name]
    cfg = GPTConfig(vocab_size=vocab, **kw)
    kg = KgTrainer(cfg)
    batches_ = list(batches(data, B, cfg.block_size, 1, steps + 1))
    kg.step(*batches_[0])
    timed = _TimedOps(kg.model.ops)
    kg.model.ops = timed
    t0 = time.perf_counter()
    for x, y in batches_[1:]:
        kg.step(x, y)
    total = (time.perf_counter() - t0) / steps
    print(f"# profile of {name}: {total * 1e3:.1f} ms per step (forward + backward + AdamW)")
    rows = sorted(timed.seconds.items(), key=lambda kv: -kv[1])
    for key, sec in rows:
        print(f"{sec / steps * 1e3:9.2f} ms {100 * sec / steps / total:5.1f}%  "
              f"{timed.calls[key] // steps:3d}x  {key}")
    inside = sum(timed.seconds.values()) / steps
    print(f"{(total - inside) * 1e3:9.2f} ms {100 * (total - inside) / total:5.1f}%  "
          "outside the model's kernel calls (clip + AdamW + Python)")


def converge(data, vocab, iters, torch_ok):
    kw, B = CONFIGS["baby"]
    cfg = GPTConfig(vocab_size=vocab, **kw)
    n_val = len(data) // 10
    train, val = data[:-n_val], data[-n_val:]
    kg = KgTrainer(cfg)
    trainers = {"kernelgpt": kg}
    if torch_ok:
        trainers["torch"] = TorchTrainer(cfg, kg.model)
    warmup, min_lr = 100, 1e-4
    for k, tr in trainers.items():
        t0 = time.perf_counter()
        for it, (x, y) in enumerate(batches(train, B, cfg.block_size, 2, iters)):
            if it < warmup:
                lr = LR * (it + 1) / (warmup + 1)
            else:
                r = (it - warmup) / max(1, iters - warmup)
                lr = min_lr + 0.5 * (1 + np.cos(np.pi * r)) * (LR - min_lr)
            tr.step(x, y, lr)
        vl = np.mean([tr.loss(x, y) for x, y in batches(val, B, cfg.block_size, 3, 200)])
        print(f"baby, {iters} iterations: {k} val loss {vl:.4f} ({time.perf_counter() - t0:.0f} s)",
              flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--configs", default="baby,shakespeare-char")
    ap.add_argument("--converge", type=int, default=0, help="iterations for the loss comparison")
    ap.add_argument("--profile", action="store_true", help="also print a per-kernel profile")
    args = ap.parse_args()
    torch_ok = torch_or_none() is not None
    _limiter = setup_threads(args.threads)
    text = shakespeare_text()
    tok = CharTokenizer.from_text(text)
    data = np.asarray(tok.encode(text), dtype=np.int64)
    print(f"# corpus {len(text):,} chars, vocab {tok.n_vocab}, threads {args.threads}, "
          f"torch {'yes' if torch_ok else 'no'}")
    for name in args.configs.split(","):
        steps = args.steps if name == "baby" else max(2, args.steps // 10)
        throughput(name, data, tok.n_vocab, steps, torch_ok)
        if args.profile:
            profile(name, data, tok.n_vocab, steps)
    if args.converge:
        converge(data, tok.n_vocab, args.converge, torch_ok)


if __name__ == "__main__":
    main()
