"""From text to vectors: BPE tokenization, embeddings, positions, attention."""
from __future__ import annotations


import numpy as np

from .. import ops
from .. import tokenizer as tk
from ._common import CAT, COOKIES, _AttentionRecorder, _figure, _save, _shipped_model


# ---- 4. tokenization and BPE --------------------------------------------------------------------

def lesson_bpe(plot=None) -> str:
    """The BPE merge walk-through on "low lower lowest", then a real vocabulary."""
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
