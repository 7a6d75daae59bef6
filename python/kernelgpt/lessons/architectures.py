"""Beyond the dense transformer: mixture of experts, state-space and hybrid models, measured."""
from __future__ import annotations

import math
import time
from typing import Dict, List

import numpy as np

from .. import ops
from ..data import CharTokenizer, shakespeare_text
from ..config import ssm_shapes
from ..model import GPT, GPTConfig
from ._common import _figure, _save, lesson

CONTEXTS = (1024, 2048, 4096, 8192)  # generation memory is measured at these context lengths


def architecture_configs(vocab_size: int, n_embd: int = 128, n_layer: int = 4,
                         contexts=CONTEXTS) -> Dict[str, GPTConfig]:
    """Dense, MoE (8 experts, 2 active), SSM and hybrid (ssm,attn,...) models with the same
    active parameters per token: each expert is half as wide as the dense MLP (two of them run
    per token), and the state-space layer's width is chosen so that its parameters match
    attention's 4 C^2. RoPE everywhere, so a long context costs no position parameters."""
    C = n_embd
    base = dict(vocab_size=vocab_size, block_size=max(contexts), n_layer=n_layer, n_head=4,
                n_embd=C, positions="rope", ssm_state=16)
    attn = 4 * C * C + 4 * C  # c_attn and c_proj with their biases

    # a state-space layer's parameters grow linearly with its width E (config.ssm_shapes):
    # count them for E = 1 and take the width closest to attention's
    one = GPTConfig(**base, layers=("ssm",) * n_layer, ssm_inner=1)
    per_channel = sum(math.prod(shape) for _, shape, _ in ssm_shapes(one, 0))
    E = min((max(1, attn // per_channel), attn // per_channel + 1),
            key=lambda e: abs(e * per_channel - attn))
    hybrid = tuple("ssm" if i % 2 == 0 else "attn" for i in range(n_layer))
    return {
        "dense": GPTConfig(**base),
        "moe 8x2": GPTConfig(**base, n_expert=8, n_expert_active=2, mlp_hidden=2 * C),
        "ssm": GPTConfig(**base, layers=("ssm",) * n_layer, ssm_inner=E),
        "hybrid": GPTConfig(**base, layers=hybrid, ssm_inner=E),
    }


def active_parameters(model: GPT) -> int:
    """Parameters a token passes through: all of them, except that a mixture of experts runs
    only n_expert_active of its n_expert expert MLPs per token."""
    c, n = model.config, 0
    for name in model.params.names():
        size = model.params[name].size
        if c.n_expert and ".mlp.c_" in name:  # stacked per expert: [E, ...]
            size = size // c.n_expert * c.n_expert_active
        n += size
    return n


def measure_architectures(seconds: float = 20.0, n_embd: int = 128, contexts=CONTEXTS,
                          text: str = None) -> List[dict]:
    """Trains the four models of architecture_configs for `seconds` each on Shakespeare's
    characters (or `text`) and measures them: one dict per model with its training loss curve
    ((seconds, loss) per step), steps, training tokens/s, validation loss, parameters (total
    and active per token), and at each context length the bytes its generation cache holds
    and its decode tokens/s."""
    text = text if text is not None else shakespeare_text()[:1_000_000]
    tok = CharTokenizer.from_text(text)
    data = np.asarray(tok.encode(text), np.int64)
    split = int(len(data) * 0.9)
    T, B = 128, 16
    if split < T + 2 or len(data) < max(contexts) or min(contexts) <= 32:
        raise ValueError(f"contexts must be > 32 tokens and the text ({len(data)} characters) "
                         f"at least as long")
    val_rng = np.random.default_rng(123)
    val = [val_rng.integers(split, len(data) - T - 1, B) for _ in range(8)]
    rows: List[dict] = []
    for name, cfg in architecture_configs(tok.n_vocab, n_embd, contexts=contexts).items():
        model = GPT(cfg, seed=0)
        P, rng = model.params.data, np.random.default_rng(0)
        m, v = np.zeros_like(P), np.zeros_like(P)
        curve, step, t0 = [], 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds or step == 0:  # the same wall-clock budget
            step += 1
            s = rng.integers(0, split - T - 1, B)
            model.zero_grad()
            loss = model.forward_backward(np.stack([data[i:i + T] for i in s]),
                                          np.stack([data[i + 1:i + T + 1] for i in s]))
            ops.clip_grad_norm(model.grads.data, 1.0)
            lr = 3e-3 * min(1.0, step / 20)
            ops.adamw_step(P, model.grads.data, m, v, step=step, lr=lr, weight_decay=0.0)
            curve.append((time.perf_counter() - t0, loss))
        elapsed = time.perf_counter() - t0
        val_loss = float(np.mean([_cross_entropy(model, data, s, T) for s in val]))
        memory, decode = [], []
        for n in contexts:  # n - 32 tokens through the cache in chunks, then 32 decode steps
            cache = model.new_cache(n)
            ids = data[:n][None]
            for t in range(0, n - 32, 1024):
                model.forward_cached(ids[:, t:min(t + 1024, n - 32)], cache)
            steps = []
            for t in range(n - 32, n):
                t1 = time.perf_counter()
                model.forward_cached(ids[:, t:t + 1], cache)
                steps.append(time.perf_counter() - t1)
            decode.append(1.0 / float(np.median(steps)))  # the median step: robust to noise
            assert cache.length == n
            memory.append(cache.nbytes)
        rows.append(dict(name=name, model=model, steps=step, tok_s=step * B * T / elapsed,
                         val=val_loss, curve=curve, memory=memory, decode=decode,
                         params=model.num_parameters(), active=active_parameters(model),
                         n_vocab=tok.n_vocab, batch=(B, T)))
    return rows


@lesson("architectures")
def lesson_architectures(plot=None, seconds: float = 20.0, n_embd: int = 128,
                         contexts=CONTEXTS) -> str:
    """Dense, MoE, SSM and hybrid models of equal active parameters, trained for equal time."""
    rows = measure_architectures(seconds, n_embd, contexts)
    B, T = rows[0]["batch"]
    n_vocab = rows[0]["n_vocab"]
    out = [f"four models on Shakespeare's characters, {seconds:g} s of AdamW each (batches of "
           f"{B} x {T}), width {n_embd}, 4 blocks; validation loss on the same held-out batches",
           "",
           f"{'model':9s} {'layers':22s} {'params':>9s} {'active/token':>12s} {'steps':>6s} "
           f"{'train tok/s':>11s} {'val loss':>8s} " +
           " ".join(f"{'cache @' + _k(n):>10s}" for n in contexts) +
           f" {'decode @' + _k(contexts[0]):>11s} {'decode @' + _k(contexts[-1]):>11s}"]
    for r in rows:
        c = r["model"].config
        kinds = ",".join(c.mixer(i) for i in range(c.n_layer))
        out.append(f"{r['name']:9s} {kinds:22s} {r['params']:>9,} {r['active']:>12,} "
                   f"{r['steps']:>6} {r['tok_s']:>11,.0f} {r['val']:>8.3f} " +
                   " ".join(f"{_mb(b):>10s}" for b in r["memory"]) +
                   f" {r['decode'][0]:>7.0f} t/s {r['decode'][-1]:>7.0f} t/s")
    out += ["",
            "cache: the bytes generation keeps at that context (attention: K and V of every "
            "token, growing linearly; a state-space layer: its state, the same at any length)",
            "decode: tokens/s of one more token at that context (attention reads the whole "
            "cache each step; the scan reads only its state)",
            "active/token: the mixture holds 8 experts but runs 2 per token, so it has more "
            "parameters for the same compute per token"]
    fig, path = _figure(plot, "architectures", figsize=(11, 7.5))
    if fig:
        ax = fig.subplots(2, 2)
        for r in rows:
            t, l = zip(*r["curve"])
            k = max(1, len(l) // 60)  # a running mean, so the curves can be told apart
            smooth = np.convolve(l, np.ones(k) / k, mode="valid")
            ax[0, 0].plot(t[k - 1:], smooth, lw=1.2, label=f"{r['name']} (val {r['val']:.2f})")
            ax[1, 0].plot(contexts, [b / 2**20 for b in r["memory"]], "o-", label=r["name"])
        ax[0, 0].set(xlabel="seconds of training", ylabel="training loss (nats / char)",
                     title="loss for the same time", ylim=(1.2, math.log(n_vocab)))
        names = [r["name"] for r in rows]
        bars = ax[0, 1].bar(names, [r["tok_s"] for r in rows], color="C0", alpha=0.8)
        ax[0, 1].bar_label(bars, [f"{r['params'] / 1e6:.2f}M params\n{r['active'] / 1e6:.2f}M active"
                                  for r in rows], fontsize=7, padding=2)
        ax[0, 1].set(xlabel="model", ylabel="training tokens / s",
                     title="speed, and parameters (all / active per token)",
                     ylim=(0, 1.3 * max(r["tok_s"] for r in rows)))
        ax[1, 0].set(xscale="log", yscale="log", xlabel="context (tokens)",
                     ylabel="generation cache (MiB)", title="memory to generate at that context")
        for r in rows:
            ax[1, 1].plot(contexts, r["decode"], "o-", label=r["name"])
        ax[1, 1].set(xscale="log", xlabel="context (tokens)", ylabel="decode tokens / s",
                     title="one more token at that context")
        for a in (ax[0, 0], ax[1, 0], ax[1, 1]):
            a.grid(alpha=0.3)
            a.legend(fontsize=8)
        fig.suptitle("Dense, mixture of experts, state space, hybrid: equal active parameters, "
                     "equal time")
        _save(fig, path, out)
    return "\n".join(out)


def _cross_entropy(model, data, starts, T) -> float:
    """The mean next-character cross-entropy of one batch (the experts' balance loss left out)."""
    x = np.stack([data[i:i + T] for i in starts])
    y = np.stack([data[i + 1:i + T + 1] for i in starts])
    logits = model.logits(x).reshape(-1, model.config.vocab_size)
    return float(ops.cross_entropy(logits, y.reshape(-1)))


def _k(n: int) -> str:
    return f"{n // 1024}k" if n % 1024 == 0 else str(n)


def _mb(b: int) -> str:
    return f"{b / 2**20:.2f} MiB" if b >= 2**20 else f"{b / 1024:.0f} KiB"
