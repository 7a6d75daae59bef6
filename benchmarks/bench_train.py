"""Training throughput: kernelgpt (fp32 and bf16 mixed precision) vs the same model in
PyTorch (benchmarks/torch_gpt.py) in each of its CPU modes: fp32 eager, bf16 autocast,
torch.compile, torch.compile + bf16 autocast. Side by side in one run (the trainers alternate
step by step), same initial weights, same batches, same hyper-parameters, same thread count;
median step time. torch.compile's compile time is excluded from the rounds (two warm-up steps)
and reported on its own line.

    flock .bench.lock python benchmarks/bench_train.py [--threads 2] [--steps 20] [--converge 2000]
        [--configs baby,shakespeare-char,gpt2-124m] [--modes ...] [--profile [--precision bf16]]

Configs: nanoGPT's CPU "baby" config (n_layer 4, n_head 4, n_embd 128, block 64, batch 12),
its shakespeare-char config (n_layer 6, n_head 6, n_embd 384, block 256, batch 64), both on the
character-level Shakespeare corpus, and a GPT-2-124M step (12 x 768, vocab 50257, block 64,
batch 4: llm.c's CPU default) on random token ids, where the LM head dominates. One step =
forward + backward + gradient clipping + AdamW. With --converge N every mode trains the baby
config for N iterations from the same initial weights and batches, and the validation losses
are compared.
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
    "gpt2-124m": (dict(n_layer=12, n_head=12, n_embd=768, block_size=64, vocab_size=50257), 4),
}
MODES = ["kernelgpt", "kernelgpt bf16", "torch fp32", "torch bf16", "torch compile",
         "torch compile bf16"]
LR, WD, BETAS, CLIP = 1e-3, 0.1, (0.9, 0.99), 1.0


def batches(data, B, T, seed, n):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        s = rng.integers(0, len(data) - T - 1, B)
        yield (np.stack([data[i:i + T] for i in s]), np.stack([data[i + 1:i + 1 + T] for i in s]))


class KgTrainer:
    def __init__(self, cfg, seed=0, precision="fp32"):
        self.model = GPT(cfg, seed=seed)
        if precision != "fp32":
            self.model.to("cpu", precision=precision)
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
    """PyTorch on the CPU: autocast=True runs the forward under torch.autocast("cpu",
    bfloat16) (its backward follows); compile=True wraps the model in torch.compile."""

    def __init__(self, cfg, kg_model, autocast=False, compile=False):
        import torch
        from torch_gpt import TorchGPT
        self.torch = torch
        self.model = TorchGPT(cfg)
        self.model.load_from(kg_model)
        self.autocast = autocast
        self.forward = torch.compile(self.model) if compile else self.model
        decay = [p for n, p in self.model.named_parameters() if p.dim() >= 2]
        rest = [p for n, p in self.model.named_parameters() if p.dim() < 2]
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": WD},
                                      {"params": rest, "weight_decay": 0.0}], lr=LR, betas=BETAS)

    def step(self, x, y, lr=LR):
        t = self.torch
        for g in self.opt.param_groups:
            g["lr"] = lr
        self.opt.zero_grad(set_to_none=True)
        with t.autocast("cpu", dtype=t.bfloat16, enabled=self.autocast):
            _, loss = self.forward(t.from_numpy(x), t.from_numpy(y))
        loss.backward()
        t.nn.utils.clip_grad_norm_(self.model.parameters(), CLIP)
        self.opt.step()
        return loss.item()

    def loss(self, x, y):
        t = self.torch
        with t.no_grad(), t.autocast("cpu", dtype=t.bfloat16, enabled=self.autocast):
            return self.model(t.from_numpy(x), t.from_numpy(y))[1].float().item()


def make_trainers(cfg, modes, torch_ok):
    """{mode: trainer} from the same initial weights (kernelgpt's seed 0)."""
    kg = KgTrainer(cfg)
    out = {}
    for mode in modes:
        if mode == "kernelgpt":
            out[mode] = kg
        elif mode == "kernelgpt bf16":
            out[mode] = KgTrainer(cfg, precision="bf16")
        elif mode.startswith("torch") and torch_ok:
            out[mode] = TorchTrainer(cfg, kg.model, autocast=mode.endswith("bf16"),
                                     compile="compile" in mode)
    return out


def throughput(name, data, vocab, steps, modes, torch_ok):
    kw, B = CONFIGS[name]
    kw = dict(kw)
    cfg = GPTConfig(vocab_size=kw.pop("vocab_size", vocab), **kw)
    if cfg.vocab_size != vocab:  # GPT-2's vocabulary: random ids stand in for text
        data = np.random.default_rng(0).integers(0, cfg.vocab_size, len(data))
    trainers = make_trainers(cfg, modes, torch_ok)
    data_batches = list(batches(data, B, cfg.block_size, 1, steps + 4))
    for k, tr in trainers.items():  # two steps each before the rounds: torch.compile compiles
        t0 = time.perf_counter()
        tr.step(*data_batches[0])
        tr.step(*data_batches[1])
        if "compile" in k:
            print(f"  ({name}: {k} warm-up with compilation {time.perf_counter() - t0:.1f} s, "
                  "not counted)", flush=True)

    def next_step(trainer):  # each call trains on the next batch
        feed = iter(data_batches[2:])
        return lambda: trainer.step(*next(feed))
    # the modes alternate step by step, one timed step each per round
    seconds = alternate([(k, next_step(tr), 1) for k, tr in trainers.items()], steps,
                        pause=0.05, warmup=False, wake_single=False)
    tokens = B * cfg.block_size
    out = {k: tokens / v for k, v in seconds.items()}
    torch_best = max((v for k, v in out.items() if k.startswith("torch")), default=None)
    print(f"{name} (B {B}, T {cfg.block_size}, {cfg.n_layer} x {cfg.n_embd}, vocab "
          f"{cfg.vocab_size}):", flush=True)
    for k, v in out.items():
        ratio = f"  {v / torch_best:.2f}x the fastest PyTorch mode" if torch_best else ""
        print(f"  {k:20s} {v:9,.0f} tok/s  {tokens / v * 1e3:8.1f} ms/step{ratio}", flush=True)
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


def profile(name, data, vocab, steps, precision="fp32"):
    """Where one kernelgpt training step spends its time, per kernel call site."""
    kw, B = CONFIGS[name]
    kw = dict(kw)
    cfg = GPTConfig(vocab_size=kw.pop("vocab_size", vocab), **kw)
    if cfg.vocab_size != vocab:
        data = np.random.default_rng(0).integers(0, cfg.vocab_size, len(data))
    kg = KgTrainer(cfg, precision=precision)
    batches_ = list(batches(data, B, cfg.block_size, 1, steps + 1))
    kg.step(*batches_[0])
    timed = _TimedOps(kg.model.ops)
    kg.model.ops = timed
    t0 = time.perf_counter()
    for x, y in batches_[1:]:
        kg.step(x, y)
    total = (time.perf_counter() - t0) / steps
    print(f"# profile of {name} ({precision}): {total * 1e3:.1f} ms per step (forward + "
          "backward + AdamW)")
    rows = sorted(timed.seconds.items(), key=lambda kv: -kv[1])
    for key, sec in rows:
        print(f"{sec / steps * 1e3:9.2f} ms {100 * sec / steps / total:5.1f}%  "
              f"{timed.calls[key] // steps:3d}x  {key}")
    inside = sum(timed.seconds.values()) / steps
    print(f"{(total - inside) * 1e3:9.2f} ms {100 * (total - inside) / total:5.1f}%  "
          "outside the model's kernel calls (clip + AdamW + Python)")


def converge(data, vocab, iters, modes, torch_ok):
    kw, B = CONFIGS["baby"]
    cfg = GPTConfig(vocab_size=vocab, **kw)
    n_val = len(data) // 10
    train, val = data[:-n_val], data[-n_val:]
    trainers = make_trainers(cfg, [m for m in modes if "compile" not in m], torch_ok)
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
    ap.add_argument("--configs", default="baby,shakespeare-char,gpt2-124m")
    ap.add_argument("--modes", default=",".join(MODES),
                    help=f"which trainers (default: all of {', '.join(MODES)})")
    ap.add_argument("--precision", default="fp32", help="kernelgpt's precision for --profile")
    ap.add_argument("--converge", type=int, default=0, help="iterations for the loss comparison")
    ap.add_argument("--profile", action="store_true", help="also print a per-kernel profile")
    args = ap.parse_args()
    torch_ok = torch_or_none() is not None
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        ap.error(f"unknown modes {unknown}; known: {', '.join(MODES)}")
    _limiter = setup_threads(args.threads)
    text = shakespeare_text()
    tok = CharTokenizer.from_text(text)
    data = np.asarray(tok.encode(text), dtype=np.int64)
    print(f"# corpus {len(text):,} chars, vocab {tok.n_vocab}, threads {args.threads}, "
          f"torch {'yes' if torch_ok else 'no'}")
    for name in args.configs.split(","):
        steps = args.steps if name == "baby" else max(2, args.steps // 10)
        throughput(name, data, tok.n_vocab, steps, modes, torch_ok)
        if args.profile:
            profile(name, data, tok.n_vocab, steps, args.precision)
    if args.converge:
        converge(data, tok.n_vocab, args.converge, modes, torch_ok)


if __name__ == "__main__":
    main()
