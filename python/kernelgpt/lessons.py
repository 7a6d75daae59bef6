"""The explainer, runnable: `kernelgpt explain <lesson>` prints each concept computed by the
package's own code, and `--plot DIR` draws it.

    kernelgpt explain                       # the list
    kernelgpt explain attention --plot out  # prints the weights, writes out/attention.png

Every lesson is a function ``lesson_<name>(plot=None) -> str`` that returns what it prints; the
numbers come from the kernels in ``ops``, the tokenizer, the model and the sampler, never from
a table. Lessons that need a trained model use the Shakespeare model shipped with the package
(a character-level GPT, so its "tokens" are letters). The inputs are the explainer's own
examples: learning rate 0.60 and momentum 0.90, the neuron with inputs [0.8, 0.2, 0.5],
"low lower lowest", "How do I bake chocolate chip cookies?", "The cat sat on the mat because
it was tired".
"""
from __future__ import annotations

import math
import time
from typing import Callable, Dict, List, Optional

import numpy as np

from . import ops

__all__ = ["LESSONS", "run_lesson"]

COOKIES = "How do I bake chocolate chip cookies?"
CAT = "The cat sat on the mat because it was tired"


# ---- helpers ------------------------------------------------------------------------------------

def _figure(plot, name):
    """(figure, path) when plotting was asked for, else (None, None)."""
    if plot is None:
        return None, None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from pathlib import Path
    path = Path(plot)
    path.mkdir(parents=True, exist_ok=True)
    return plt, path / f"{name}.png"


def _save(plt, fig, path, out: List[str], **kw) -> None:
    """Writes the lesson's figure and says where."""
    fig.savefig(path, dpi=100, **kw)
    plt.close(fig)
    out.append(f"plot: {path}")


def _bar(p: float, width: int = 40) -> str:
    return "#" * max(0, int(round(p * width)))


def _shipped_model():
    from .generate import default_model_dir
    from .train import load_checkpoint
    model, tokenizer, _, _, _ = load_checkpoint(default_model_dir())
    return model, tokenizer


class _AttentionRecorder:
    """Stands in for a model's ``ops`` and keeps the attention probabilities of every call
    (softmax(q k^T / sqrt(d)) with the causal mask), computed from the same q and k."""

    def __init__(self, inner):
        self.inner, self.maps = inner, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def attention(self, q, k, v, *, causal=True, kv_length=None, **kw):
        S = k.shape[2] if kv_length is None else kv_length
        T, H, Hkv = q.shape[2], q.shape[1], k.shape[1]
        kk = np.repeat(np.asarray(k[:, :, :S], np.float64), H // Hkv, axis=1)
        s = np.asarray(q, np.float64) @ kk.transpose(0, 1, 3, 2) / math.sqrt(q.shape[-1])
        if causal:
            s = np.where(np.tril(np.ones((T, S), bool), S - T), s, -np.inf)
        s = np.exp(s - s.max(-1, keepdims=True))
        self.maps.append(s / s.sum(-1, keepdims=True))
        return self.inner.attention(q, k, v, causal=causal, kv_length=kv_length, **kw)


# ---- 1. gradient descent ------------------------------------------------------------------------

def _descend(grad, start, lr, momentum, steps):
    x, v, path = np.array(start, float), np.zeros(2), [np.array(start, float)]
    for _ in range(steps):
        v = momentum * v - lr * grad(x)
        x = x + v
        path.append(x.copy())
    return np.array(path)


def lesson_gradient_descent(plot=None) -> str:
    """Follow the slope downhill: plain steps, a too-large learning rate, and momentum."""
    # An elongated valley: the error is 0.5 * (x^2 + 4 y^2), lowest at (0, 0).
    loss = lambda p: 0.5 * (p[..., 0] ** 2 + 4 * p[..., 1] ** 2)  # noqa: E731
    grad = lambda p: np.array([p[0], 4 * p[1]])  # noqa: E731
    f, df = (lambda x: x * x), (lambda x, h=1e-6: ((x + h) ** 2 - (x - h) ** 2) / (2 * h))
    out = [f"derivative: f(x) = x^2 at x = 3 -> slope {df(3.0):.4f} (exactly 2x = 6)", ""]
    runs = {"lr 0.10": (0.10, 0.0), "lr 0.60 (overshoots)": (0.60, 0.0),
            "lr 0.10, momentum 0.90": (0.10, 0.90)}
    paths = {}
    for name, (lr, mom) in runs.items():
        path = _descend(grad, (-2.5, 1.5), lr, mom, 30)
        paths[name] = path
        ls = loss(path)
        out.append(f"{name:>24}: error {ls[0]:.3f} -> after 5 steps {ls[5]:.4f}, "
                   f"after 30 {ls[-1]:.2e}; first y values "
                   + " ".join(f"{y:+.2f}" for y in path[:6, 1]))
    out.append("(with lr 0.60 each step multiplies y by 1 - 0.6*4 = -1.4: it jumps across the "
               "valley further every time and diverges; momentum 0.90 keeps speed, spiralling in)")
    plt, path = _figure(plot, "gradient_descent")
    if plt:
        g = np.linspace(-3, 3, 200)
        X, Y = np.meshgrid(g, g)
        fig, ax = plt.subplots(figsize=(6, 5))
        ax.contourf(X, Y, loss(np.stack([X, Y], -1)), 30, cmap="viridis_r")
        for name, p in paths.items():
            ax.plot(p[:, 0], p[:, 1], "o-", ms=3, label=name)
        ax.legend(fontsize=8)
        ax.set_xlim(-3, 3)
        ax.set_ylim(-3, 3)
        ax.set_title("gradient descent on 0.5 (x² + 4y²)")
        _save(plt, fig, path, out)
    return "\n".join(out)


# ---- 2. the neuron and activation functions -----------------------------------------------------

def lesson_neuron(plot=None) -> str:
    """output = activation(w . x + b) with the explainer's inputs [0.8, 0.2, 0.5]."""
    x = np.array([0.8, 0.2, 0.5], np.float32)
    w = np.array([0.9, -0.3, 0.4], np.float32)
    b = np.float32(0.1)
    z = float(ops.matmul(x[None], w[:, None])[0, 0] + b)
    fmt = lambda a: "[" + ", ".join(f"{v:.1f}" for v in a) + "]"  # noqa: E731
    out = [f"inputs x = {fmt(x)}, weights w = {fmt(w)}, bias b = {b:.1f}",
           f"w . x + b = 0.9*0.8 - 0.3*0.2 + 0.4*0.5 + 0.1 = {z:.4f}"]
    zs = np.array([z, -z], np.float32)
    acts = {"relu": ops.relu, "sigmoid": ops.sigmoid, "tanh": ops.tanh,
            "gelu": ops.gelu, "silu": ops.silu}
    for name, fn in acts.items():
        a = fn(zs)
        out.append(f"{name:>8}(z) = {a[0]:+.4f}    {name}(-z) = {a[1]:+.4f}")
    out.append("without an activation two layers collapse into one: W2 (W1 x) = (W2 W1) x")
    plt, path = _figure(plot, "activations")
    if plt:
        t = np.linspace(-4, 4, 401).astype(np.float32)
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, fn in acts.items():
            ax.plot(t, fn(t), label=name)
        ax.axhline(0, color="gray", lw=0.5)
        ax.legend()
        ax.set_title("activation functions (kernelgpt.ops)")
        _save(plt, fig, path, out)
    return "\n".join(out)


# ---- 3. backpropagation -------------------------------------------------------------------------

def lesson_backprop(plot=None) -> str:
    """A 3 -> 4 -> 2 network (cat / dog) trained by the chain rule, checked against nudging."""
    rng = np.random.default_rng(0)
    x = np.array([[0.8, 0.2, 0.5]], np.float32)
    target = np.array([0])  # "cat"
    W1 = rng.normal(0, 0.8, (4, 3)).astype(np.float32)
    W2 = rng.normal(0, 0.8, (2, 4)).astype(np.float32)

    def forward(W1, W2):
        h = ops.linear(x, W1)
        a = ops.gelu(h)
        logits = ops.linear(a, W2)
        return h, a, logits

    def loss_of(W1, W2):
        return float(ops.cross_entropy(forward(W1, W2)[2], target))

    out = []
    losses = []
    for step in range(6):
        h, a, logits = forward(W1, W2)
        loss, d_logits = ops.cross_entropy(logits, target, return_grad=True)
        d_W2 = ops.matmul(d_logits, a, trans_a=True)       # dL/dW2 = dlogits^T a
        d_a = ops.matmul(d_logits, W2)                      # back through the layer
        d_h = ops.gelu_backward(d_a, h)                     # back through the activation
        d_W1 = ops.matmul(d_h, x, trans_a=True)
        losses.append(float(loss))
        if step == 0:
            p = ops.softmax(logits)[0]
            out.append(f"forward: probabilities cat {p[0]:.3f}, dog {p[1]:.3f}; "
                       f"loss = -log p(cat) = {float(loss):.4f}")
            eps, num = 1e-2, np.zeros_like(W1, np.float64)
            for i in np.ndindex(W1.shape):
                Wp, Wm = W1.copy(), W1.copy()
                Wp[i] += eps
                Wm[i] -= eps
                num[i] = (loss_of(Wp, W2) - loss_of(Wm, W2)) / (2 * eps)
            out.append("backward: dL/dW1 by the chain rule vs by nudging each weight:")
            for r in range(W1.shape[0]):
                out.append("   " + "  ".join(f"{d_W1[r, c]:+.4f}/{num[r, c]:+.4f}"
                                             for c in range(W1.shape[1])))
            out.append(f"   largest difference {np.abs(d_W1 - num).max():.1e} "
                       "(the nudge is a finite difference in float32)")
        W1 = W1 - 0.5 * d_W1   # weight = weight - lr * gradient
        W2 = W2 - 0.5 * d_W2
    p = ops.softmax(forward(W1, W2)[2])[0]
    out.append("update w -= 0.5 * dL/dw, repeated: loss " + " -> ".join(f"{v:.3f}" for v in losses)
               + f"; now p(cat) = {p[0]:.3f}")
    plt, path = _figure(plot, "backprop")
    if plt:
        fig, ax = plt.subplots(figsize=(5, 3))
        ax.plot(losses, "o-")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_title("backprop + gradient descent on one example")
        _save(plt, fig, path, out)
    return "\n".join(out)


# ---- 4. tokenization and BPE --------------------------------------------------------------------

def lesson_bpe(plot=None) -> str:
    """The BPE merge walk-through on "low lower lowest", then a real vocabulary."""
    from . import tokenizer as tk
    out = ["whitespace pre-tokenization:"]
    enc = tk.train(["low lower lowest"], 259, pattern="whitespace", trace=True)
    out.append(tk.format_trace(enc))
    out.append("\nGPT-2 pattern (the space sticks to the next word, so ' low' competes):")
    enc2 = tk.train(["low lower lowest"], 259, pattern="gpt2", trace=True)
    out.append(tk.format_trace(enc2))
    try:
        real = tk.get_encoding("cl100k_base")
    except FileNotFoundError:
        try:
            real = tk.get_encoding("gpt2")
        except FileNotFoundError:
            real = None
    if real is None:
        out.append("\n(run `kernelgpt fetch cl100k_base` to see a real vocabulary split the cookies "
                   "question)")
    else:
        ids = real.encode(COOKIES)
        pieces = [real.decode_single_token_bytes(t).decode("utf-8", "replace") for t in ids]
        out.append(f"\n{real.name}: {COOKIES!r} -> {len(ids)} tokens")
        out.append("   " + " | ".join(repr(p) for p in pieces))
        out.append("   ids " + " ".join(map(str, ids)))
    return "\n".join(out)


# ---- 5. embeddings and positions ----------------------------------------------------------------

def lesson_embedding(plot=None) -> str:
    """Token ids become vectors: rows of the shipped model's embedding table."""
    model, tok = _shipped_model()
    wte = model.params["wte"]
    word = "cat"
    ids = tok.encode(word)
    vecs = ops.embedding(np.asarray(ids, np.int64), wte)
    out = [f"embedding table {wte.shape[0]} tokens x {wte.shape[1]} numbers; {word!r} -> ids {ids}"]
    for ch, v in zip(word, vecs):
        out.append(f"   {ch!r}: [" + ", ".join(f"{x:+.3f}" for x in v[:6]) + ", ...]")
    unit = wte / np.linalg.norm(wte, axis=1, keepdims=True)
    out.append("nearest neighbours by cosine similarity (learned, never told):")
    for ch in "aeAE.!":
        if ch not in tok.index:
            continue
        i = tok.index[ch]
        sims = unit @ unit[i]
        order = [j for j in np.argsort(-sims) if j != i][:4]
        out.append(f"   {ch!r}: " + "  ".join(f"{tok.chars[j]!r} {sims[j]:.2f}" for j in order))
    plt, path = _figure(plot, "embedding")
    if plt:
        centered = wte - wte.mean(0)
        _, _, vt = np.linalg.svd(centered, full_matrices=False)
        xy = centered @ vt[:2].T
        fig, ax = plt.subplots(figsize=(6, 6))
        ax.scatter(xy[:, 0], xy[:, 1], s=0)
        for i, (px, py) in enumerate(xy):
            ax.annotate(repr(tok.chars[i])[1:-1], (px, py), fontsize=8)
        ax.set_title("token embeddings, first two principal components")
        _save(plt, fig, path, out)
    return "\n".join(out)


def lesson_positions(plot=None) -> str:
    """Word order: sinusoidal tables, learned positions, and RoPE's relative rotation."""
    table = ops.sinusoidal_positions(64, 32)
    out = ["sinusoidal: PE[pos, 2i] = sin(pos / 10000^(2i/d)), PE[pos, 2i+1] = cos(...)",
           "   pos 0: " + " ".join(f"{v:+.2f}" for v in table[0, :8]),
           "   pos 1: " + " ".join(f"{v:+.2f}" for v in table[1, :8]),
           "   pos 2: " + " ".join(f"{v:+.2f}" for v in table[2, :8])]
    rng = np.random.default_rng(0)
    q = rng.standard_normal((1, 1, 1, 32)).astype(np.float32)
    k = rng.standard_normal((1, 1, 1, 32)).astype(np.float32)
    dots = []
    for m, n in [(5, 3), (12, 10), (40, 38), (7, 3)]:
        qm = ops.rope(q, offset=m)
        kn = ops.rope(k, offset=n)
        dots.append((m, n, float((qm * kn).sum())))
    out.append("RoPE rotates q and k by their positions; their dot product depends only on m - n:")
    for m, n, d in dots:
        out.append(f"   q at {m:>2}, k at {n:>2} (distance {m - n}): q.k = {d:+.5f}")
    model, _ = _shipped_model()
    wpe = model.params.views.get("wpe") if hasattr(model.params, "views") else None
    if wpe is not None:
        unit = wpe / np.linalg.norm(wpe, axis=1, keepdims=True)
        near = [float(unit[p] @ unit[p + 1]) for p in (0, 10, 50, 100) if p + 1 < len(unit)]
        out.append("the shipped model's learned positions: cosine(pos, pos+1) at 0, 10, 50, 100 = "
                   + ", ".join(f"{c:.2f}" for c in near))
    plt, path = _figure(plot, "positions")
    if plt:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        axes[0].imshow(table, aspect="auto", cmap="RdBu")
        axes[0].set_title("sinusoidal table [position, dim]")
        if wpe is not None:
            axes[1].imshow(unit @ unit.T, cmap="viridis")
            axes[1].set_title("learned positions: cosine similarity")
        _save(plt, fig, path, out)
    return "\n".join(out)


# ---- 6. attention -------------------------------------------------------------------------------

def lesson_attention(plot=None) -> str:
    """Who looks at whom: the shipped model's attention weights on the explainer's sentence."""
    model, tok = _shipped_model()
    ids = np.asarray([tok.encode(CAT)])
    recorder = _AttentionRecorder(model.ops)
    saved, model.ops = model.ops, recorder
    try:
        model.forward_cached(ids, model.new_cache())
    finally:
        model.ops = saved
    maps = np.stack([m[0] for m in recorder.maps])  # [layers, heads, T, T]
    chars = list(CAT)
    out = [f"{len(chars)} tokens (characters), {maps.shape[0]} layers x {maps.shape[1]} heads; "
           "weights = softmax(q k^T / sqrt(d)) with a causal mask (rows sum to 1)"]
    it = CAT.index(" it ") + 1
    for layer in range(maps.shape[0]):
        row = maps[layer, :, it].mean(0)  # averaged over heads, query = the 'i' of "it"
        top = np.argsort(-row)[:5]
        out.append(f"   layer {layer}: 'i' of \"it\" attends most to "
                   + ", ".join(f"{chars[j]!r}@{j} {row[j]:.2f}" for j in top))
    last = maps[-1].mean(0)
    ent = -(last * np.log(last + 1e-12)).sum(-1)
    out.append(f"   last layer: mean entropy of a row {ent.mean():.2f} nats "
               f"(uniform over the prefix would be {np.mean(np.log(np.arange(1, len(chars) + 1))):.2f})")
    plt, path = _figure(plot, "attention")
    if plt:
        L = maps.shape[0]
        fig, axes = plt.subplots(1, L, figsize=(4 * L, 4))
        for layer, ax in enumerate(np.atleast_1d(axes)):
            ax.imshow(maps[layer].mean(0), cmap="magma")
            ax.set_xticks(range(len(chars)), chars, fontsize=6)
            ax.set_yticks(range(len(chars)), chars, fontsize=6)
            ax.set_title(f"layer {layer} (mean of heads)")
        _save(plt, fig, path, out)
    return "\n".join(out)


# ---- 7. sampling --------------------------------------------------------------------------------

def lesson_sampling(plot=None) -> str:
    """Logits -> probabilities -> one token: greedy, temperature, top-k, top-p, min-p."""
    from .sampling import SamplingConfig, filtered_distribution
    model, tok = _shipped_model()
    prompt = "ROMEO:\nWhat light through yonder window b"
    logits = model.forward_cached(np.asarray([tok.encode(prompt)]), model.new_cache())[0]
    out = [f"prompt {prompt!r}: {logits.size} logits for the next character"]
    settings = [("greedy (temperature 0)", dict(temperature=0.0)),
                ("temperature 0.5", dict(temperature=0.5)),
                ("temperature 1.0", dict(temperature=1.0)),
                ("temperature 1.5", dict(temperature=1.5)),
                ("top-k 3", dict(top_k=3)),
                ("top-p 0.9", dict(top_p=0.9)),
                ("min-p 0.1", dict(min_p=0.1))]
    dists = {}
    for name, s in settings:
        p = filtered_distribution(logits, SamplingConfig(**s))
        dists[name] = p
        top = np.argsort(-p)[:5]
        out.append(f"{name}: {int((p > 0).sum())} candidates left")
        for j in top:
            if p[j] > 0:
                out.append(f"   {tok.chars[j]!r:>6} {p[j]:6.3f} {_bar(p[j])}")
    plt, path = _figure(plot, "sampling")
    if plt:
        fig, axes = plt.subplots(len(dists), 1, figsize=(7, 1.6 * len(dists)), sharex=True)
        order = np.argsort(-dists["temperature 1.0"])[:15]
        for ax, (name, p) in zip(axes, dists.items()):
            ax.bar(range(len(order)), p[order])
            ax.set_ylabel(name, rotation=0, ha="right", fontsize=7)
        axes[-1].set_xticks(range(len(order)), [repr(tok.chars[j]) for j in order], fontsize=7)
        _save(plt, fig, path, out, bbox_inches="tight")
    return "\n".join(out)


# ---- 8. the KV cache ----------------------------------------------------------------------------

def lesson_kv_cache(plot=None, n_tokens: int = 100) -> str:
    """Why generation keeps keys and values: time per token with and without the cache."""
    model, tok = _shipped_model()
    ids = tok.encode("ROMEO:\n")
    n_tokens = min(n_tokens, model.config.block_size - len(ids))
    with_cache, without = [], []
    cache = model.new_cache()
    logits = model.forward_cached(np.asarray([ids]), cache)[0]
    seq = list(ids)
    for _ in range(n_tokens):
        nxt = int(np.argmax(logits))
        seq.append(nxt)
        t0 = time.perf_counter()
        logits = model.forward_cached(np.asarray([[nxt]]), cache)[0]
        with_cache.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        full = model.logits(np.asarray([seq]))
        without.append(time.perf_counter() - t0)
        if not np.allclose(full[0, -1], logits, rtol=1e-3, atol=1e-3 * np.abs(logits).max()):
            raise RuntimeError("cached and recomputed logits differ")
    kv = cache.nbytes / 1024
    out = [f"greedy continuation: {tok.decode(seq)!r}",
           f"the cache holds K and V for {cache.length} positions x {model.config.n_layer} layers "
           f"({kv:.0f} KiB allocated for {cache.max_len})",
           "time per new token (ms):   position   with cache   recomputing everything"]
    for i in [0, n_tokens // 4, n_tokens // 2, n_tokens - 1]:
        out.append(f"                           {len(ids) + i:>8}   {with_cache[i] * 1e3:10.3f}   "
                   f"{without[i] * 1e3:10.3f}")
    out.append(f"total: {sum(with_cache) * 1e3:.1f} ms with the cache, {sum(without) * 1e3:.1f} ms "
               f"without ({sum(without) / sum(with_cache):.1f}x); the same logits either way")
    plt, path = _figure(plot, "kv_cache")
    if plt:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(np.array(with_cache) * 1e3, label="with KV cache")
        ax.plot(np.array(without) * 1e3, label="recompute the whole sequence")
        ax.set_xlabel("generated token")
        ax.set_ylabel("ms per token")
        ax.legend()
        _save(plt, fig, path, out)
    return "\n".join(out)


# ---- 9. training --------------------------------------------------------------------------------

def lesson_training(plot=None, steps: int = 150) -> str:
    """Pre-training in miniature: a tiny GPT learns Shakespeare's letters, loss going down."""
    from .data import CharTokenizer, shakespeare_text
    from .generate import generate
    from .model import GPT, GPTConfig
    from .sampling import SamplingConfig
    text = shakespeare_text()[:300_000]
    tok = CharTokenizer.from_text(text)
    data = np.asarray(tok.encode(text), np.int64)
    cfg = GPTConfig(vocab_size=tok.n_vocab, block_size=64, n_layer=2, n_head=4, n_embd=64)
    model = GPT(cfg, seed=0)
    rng = np.random.default_rng(0)
    P = model.params.data
    m, v = np.zeros_like(P), np.zeros_like(P)
    losses = []
    greedy = SamplingConfig(temperature=0.0)
    before = "".join(generate(model, tok, "ROMEO:", 40, greedy))
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        s = rng.integers(0, len(data) - 65, 16)
        x = np.stack([data[i:i + 64] for i in s])
        y = np.stack([data[i + 1:i + 65] for i in s])
        model.zero_grad()
        losses.append(model.forward_backward(x, y))
        ops.clip_grad_norm(model.grads.data, 1.0)
        ops.adamw_step(P, model.grads.data, m, v, step=step, lr=3e-3, weight_decay=0.0)
    dt = time.perf_counter() - t0
    after = "".join(generate(model, tok, "ROMEO:", 40, greedy))
    out = [f"{model.num_parameters():,} parameters, {steps} steps of AdamW on 16 x 64 characters "
           f"({dt:.1f} s)",
           "loss: " + " ".join(f"{losses[i]:.2f}" for i in range(0, steps, max(1, steps // 10))),
           f"   (start ~ ln({tok.n_vocab}) = {math.log(tok.n_vocab):.2f}: a uniform guess)",
           f"before training: ROMEO:{before!r}",
           f"after training:  ROMEO:{after!r}",
           "the shipped model is the same loop, longer: see `kernelgpt train --help`"]
    plt, path = _figure(plot, "training")
    if plt:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(losses)
        ax.set_xlabel("step")
        ax.set_ylabel("cross-entropy")
        _save(plt, fig, path, out)
    return "\n".join(out)


# ---- 10. alignment ------------------------------------------------------------------------------

def _logprob(model, prompt_ids, response_ids):
    """log p(response | prompt) and what forward_backward needs to get its gradient."""
    seq = list(prompt_ids) + list(response_ids)
    x = np.asarray([seq[:-1]])
    y = np.asarray([[-100] * (len(prompt_ids) - 1) + list(response_ids)])
    return x, y, -model.loss(x, y) * len(response_ids)


def lesson_alignment(plot=None, steps: int = 20, beta: float = 0.5) -> str:
    """Preference tuning (DPO, Rafailov et al. 2023) on the shipped model: make it prefer one
    answer over another without a reward model. The same idea as RLHF's reward, in one loss:
        L = -log sigmoid(beta * [(log p(chosen) - log p_ref(chosen)) - (same for rejected)])."""
    model, tok = _shipped_model()
    prompt = tok.encode("ROMEO:\n")
    chosen, rejected = tok.encode("Good morrow, sweet friend."), tok.encode("Away, thou villain!")
    xc, yc, ref_c = _logprob(model, prompt, chosen)
    xr, yr, ref_r = _logprob(model, prompt, rejected)
    P = model.params.data
    m, v = np.zeros_like(P), np.zeros_like(P)
    out = [f"prompt 'ROMEO:\\n'; chosen {tok.decode(chosen)!r}, rejected {tok.decode(rejected)!r}",
           f"before: log p(chosen) = {ref_c:.2f}, log p(rejected) = {ref_r:.2f}"]
    margins = []
    for step in range(1, steps + 1):
        lc, lr_ = _logprob(model, prompt, chosen)[2], _logprob(model, prompt, rejected)[2]
        z = beta * ((lc - ref_c) - (lr_ - ref_r))
        margins.append(lc - lr_)
        g = beta / (1 + math.exp(z))  # beta * sigmoid(-z): how much the pair still needs to move
        model.zero_grad()
        # d(log p)/dθ = -n * d(mean CE)/dθ, so scale each sequence's loss gradient accordingly
        model.forward_backward(xc, yc, grad_scale=g * len(chosen))
        model.forward_backward(xr, yr, grad_scale=-g * len(rejected))
        ops.adamw_step(P, model.grads.data, m, v, step=step, lr=1e-4, weight_decay=0.0)
    lc, lr_ = _logprob(model, prompt, chosen)[2], _logprob(model, prompt, rejected)[2]
    margins.append(lc - lr_)
    out.append(f"after {steps} DPO steps: log p(chosen) = {lc:.2f}, log p(rejected) = {lr_:.2f}")
    out.append("margin log p(chosen) - log p(rejected): "
               + " -> ".join(f"{x:.1f}" for x in margins[::max(1, steps // 5)]))
    out.append("Chat models are tuned this way (and with RLHF) on human preferences; their "
               "knowledge barely changes, which answers they prefer does.")
    plt, path = _figure(plot, "alignment")
    if plt:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(margins, "o-")
        ax.set_xlabel("DPO step")
        ax.set_ylabel("log p(chosen) - log p(rejected)")
        _save(plt, fig, path, out)
    return "\n".join(out)


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


def lesson_gpu(plot=None) -> str:
    """How a GPU runs a kernel: threads, blocks, barriers, and the SGEMM ladder (on the CPU
    emulator: the real CUDA source, every thread a fiber)."""
    from . import _cuda, cuda_emu
    if not cuda_emu.available():
        return "this build has no CUDA emulator (built with -DKG_CUDA_EMU=OFF)"
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
    for name, idea, tile, per_thread, dram, shared in _SGEMM_LADDER:
        err = np.abs(cuda_emu.asnumpy(ops.matmul(a, b, backend=name)) - ref).max()
        out.append(f"{name:<11} {tile:<11} {per_thread:>7} {dram:>10.4f} {shared:>10.3f}"
                   f"  {err:11.1e}  {idea}")
    assert [r[0] for r in _SGEMM_LADDER] == _cuda.MATMUL_VERSIONS
    out += ["(outputs: per thread; global/FMA and shared/FMA: values loaded per multiply-add",
            "from global and from shared memory, the rest come from registers. An H100 does ~40",
            "fp32 FMA per float its DRAM delivers (67 TFLOP/s vs 3.35 TB/s), so only the later",
            "rungs can keep it busy; the caches rescue the first ones only partly.)"]
    plt, path = _figure(plot, "gpu")
    if plt:
        fig, ax = plt.subplots(figsize=(7, 4))
        names = [r[0] for r in _SGEMM_LADDER]
        pos = np.arange(len(names))
        ax.bar(pos - 0.2, [r[4] for r in _SGEMM_LADDER], 0.4, label="from global memory")
        ax.bar(pos + 0.2, [r[5] for r in _SGEMM_LADDER], 0.4, label="from shared memory")
        ax.set_yscale("symlog", linthresh=0.01)
        ax.set_xticks(pos, names, rotation=20)
        ax.set_ylabel("values loaded per multiply-add")
        ax.set_title("The SGEMM ladder: each rung reuses more of what it loads")
        ax.legend()
        _save(plt, fig, path, out)
    return "\n".join(out)


LESSONS: Dict[str, Callable[..., str]] = {
    "gradient-descent": lesson_gradient_descent,
    "neuron": lesson_neuron,
    "backprop": lesson_backprop,
    "bpe": lesson_bpe,
    "embedding": lesson_embedding,
    "positions": lesson_positions,
    "attention": lesson_attention,
    "sampling": lesson_sampling,
    "kv-cache": lesson_kv_cache,
    "training": lesson_training,
    "alignment": lesson_alignment,
    "gpu": lesson_gpu,
}


def run_lesson(name: str, plot: Optional[str] = None) -> str:
    if name not in LESSONS:
        raise ValueError(f"unknown lesson {name!r}; choose from {', '.join(LESSONS)}")
    return LESSONS[name](plot=plot)


# ---- `kernelgpt explain` ------------------------------------------------------------------------

def add_arguments(p) -> None:
    p.add_argument("lesson", nargs="?", default=None,
                   help="one of: " + ", ".join(LESSONS) + ", or 'all'")
    p.add_argument("--plot", metavar="DIR", default=None, help="also write DIR/<lesson>.png")


def main(args) -> int:
    if args.lesson is None:
        for name, fn in LESSONS.items():
            print(f"{name:>17}  {fn.__doc__.splitlines()[0]}")
        print("\nkernelgpt explain <lesson> [--plot DIR]")
        return 0
    names: List[str] = list(LESSONS) if args.lesson == "all" else [args.lesson]
    for name in names:
        if len(names) > 1:
            print(f"\n=== {name} ===")
        print(run_lesson(name, args.plot))
    return 0
