"""From text to vectors: BPE tokenization, embeddings, positions, attention."""
from __future__ import annotations


import numpy as np

from .. import ops
from .. import tokenizer as tk
from ..io import fetch
from ._common import (CAT, COOKIES, _AttentionRecorder, _char_label, _figure, _save,
                      _shipped_model, lesson)


# ---- 4. tokenization and BPE --------------------------------------------------------------------

@lesson("bpe")
def lesson_bpe(plot=None) -> str:
    """The BPE merge walk-through on "low lower lowest", then a real vocabulary."""
    out = ["whitespace pre-tokenization:"]
    enc = tk.train(["low lower lowest"], 259, pattern="whitespace", trace=True)
    out.append(tk.format_trace(enc))
    out.append("\nGPT-2 pattern (the space sticks to the next word, so ' low' competes):")
    enc2 = tk.train(["low lower lowest"], 259, pattern="gpt2", trace=True)
    out.append(tk.format_trace(enc2))
    traces = {"whitespace": enc, "GPT-2 pattern": enc2}
    # a lesson never downloads: it uses a real vocabulary only if one is already fetched
    name = next((n for n in ("cl100k_base", "gpt2") if fetch.cached(n) is not None), None)
    try:
        real = tk.get_encoding(name) if name else None
    except (FileNotFoundError, RuntimeError, ValueError):
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
    fig, path = _figure(plot, "bpe", figsize=(11, 4))
    if fig:
        from matplotlib.ticker import MaxNLocator
        text = "low lower lowest"
        axes = fig.subplots(1, 3, width_ratios=[1, 1, 1.1])
        axes[1].sharey(axes[0])   # the same count scale for both pre-tokenizations
        top = max(m.count for e in traces.values() for m in e.trace) + 1
        for ax, (name, e) in zip(axes[:2], traces.items()):
            labels = [repr(e.decode_single_token_bytes(m.id).decode("utf-8", "replace"))
                      for m in e.trace]
            ax.bar(range(1, len(e.trace) + 1), [m.count for m in e.trace], color="tab:blue")
            ax.set_xticks(range(1, len(e.trace) + 1),
                          [f"{k}: {lab}" for k, lab in enumerate(labels, 1)])
            ax.set(title=f"{name}: the merges, in order", xlabel="merge: new token",
                   ylabel="times the pair occurs", ylim=(0, top))
        for name in traces:
            pattern = "whitespace" if name == "whitespace" else "gpt2"
            counts = [len(tk.train([text], 256 + k, pattern=pattern).encode_ordinary(text))
                      for k in range(len(enc.trace) + 1)]
            style = dict(lw=4, alpha=0.4) if name == "whitespace" else dict(ls="--", marker="o")
            axes[2].plot(range(len(counts)), counts, label=name, **style)
        axes[0].yaxis.set_major_locator(MaxNLocator(integer=True))
        axes[2].set(title=f"tokens needed for {text!r}\n(the same for both patterns here)",
                    xlabel="merges learned",
                    ylabel="number of tokens", xticks=range(len(enc.trace) + 1))
        axes[2].grid(alpha=0.3)
        axes[2].legend(fontsize=8)
        fig.suptitle("Byte-pair encoding: repeatedly merge the most frequent pair of tokens")
        fig.get_layout_engine().set(w_pad=0.1)
        _save(fig, path, out)
    return "\n".join(out)


# ---- 5. embeddings and positions ----------------------------------------------------------------

@lesson("embedding")
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
    fig, path = _figure(plot, "embedding", figsize=(12, 5.4))
    if fig:
        centered = wte - wte.mean(0)
        _, sv, vt = np.linalg.svd(centered, full_matrices=False)
        share = sv ** 2 / (sv ** 2).sum()
        xy = centered @ vt[:2].T
        ax, ax2 = fig.subplots(1, 2)
        kind = ["tab:blue" if c.islower() else "tab:red" if c.isupper() else
                "tab:green" if c.isdigit() else "tab:gray" for c in tok.chars]
        ax.scatter(xy[:, 0], xy[:, 1], s=0)   # sets the limits; the letters are the markers
        for i, (px, py) in enumerate(xy):
            ax.annotate(_char_label(tok.chars[i]), (px, py), fontsize=9, color=kind[i],
                        ha="center", va="center", fontweight="bold")
        ax.margins(0.06)
        ax.set(title="every token, first two principal components\n"
                     "(blue: lower case, red: upper case, green: digits, grey: other)",
               xlabel=f"principal component 1 ({share[0]:.0%} of variance)",
               ylabel=f"principal component 2 ({share[1]:.0%} of variance)")
        ax.grid(alpha=0.3)
        picked = [c for c in "aeioubcdtnsAEIOUBCDTNS .,!?" if c in tok.index]
        idx = [tok.index[c] for c in picked]
        im = ax2.imshow(unit[idx] @ unit[idx].T, cmap="RdBu_r", vmin=-1, vmax=1)
        ax2.set_xticks(range(len(picked)), [_char_label(c) for c in picked], fontsize=8)
        ax2.set_yticks(range(len(picked)), [_char_label(c) for c in picked], fontsize=8)
        ax2.set(title="cosine similarity between embedding rows", xlabel="token",
                ylabel="token")
        fig.colorbar(im, ax=ax2, label="cosine similarity", shrink=0.9)
        fig.suptitle(f"Token embeddings of the shipped model ({wte.shape[0]} characters x "
                     f"{wte.shape[1]} numbers)")
        _save(fig, path, out)
    return "\n".join(out)


@lesson("positions")
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
    fig, path = _figure(plot, "positions", figsize=(13, 4.4))
    if fig:
        axes = fig.subplots(1, 3)
        im = axes[0].imshow(ops.sinusoidal_positions(128, 64), aspect="auto", cmap="RdBu_r",
                            vmin=-1, vmax=1, interpolation="nearest")
        axes[0].set(title="sinusoidal table PE[position, dimension]", xlabel="dimension",
                    ylabel="position")
        fig.colorbar(im, ax=axes[0], label="value", shrink=0.9)
        n = 32
        qs = np.concatenate([ops.rope(q, offset=m) for m in range(n)], axis=2)[0, 0]
        ks = np.concatenate([ops.rope(k, offset=m) for m in range(n)], axis=2)[0, 0]
        qk = qs @ ks.T
        lim = float(np.abs(qk).max())
        im = axes[1].imshow(qk, cmap="PuOr_r", vmin=-lim, vmax=lim, interpolation="nearest")
        axes[1].set(title="RoPE: q · k depends only on m − n\n(constant along diagonals)",
                    xlabel="key position n", ylabel="query position m")
        fig.colorbar(im, ax=axes[1], label="q · k", shrink=0.9)
        if wpe is not None:
            im = axes[2].imshow(unit @ unit.T, cmap="RdBu_r", vmin=-1, vmax=1,
                                interpolation="nearest")
            axes[2].set(title="learned positions (shipped model)",
                        xlabel="position", ylabel="position")
            fig.colorbar(im, ax=axes[2], label="cosine similarity of the rows", shrink=0.9)
        else:
            axes[2].set_axis_off()
            axes[2].text(0.5, 0.5, "the shipped model has no\nlearned position table",
                         ha="center", va="center", transform=axes[2].transAxes)
        fig.suptitle("Positions: how a model knows word order")
        _save(fig, path, out)
    return "\n".join(out)


# ---- 6. attention -------------------------------------------------------------------------------

@lesson("attention")
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
    fig, path = _figure(plot, "attention", figsize=(11, 10.5))
    if fig:
        from matplotlib.colors import PowerNorm
        L = maps.shape[0]
        cols = 2 if L > 1 else 1
        rows = (L + cols - 1) // cols
        axes = np.atleast_1d(fig.subplots(rows, cols, sharex=True, sharey=True)).ravel()
        mean = maps.mean(1)
        labels = [_char_label(c) for c in chars]
        norm = PowerNorm(0.5, vmin=0, vmax=1)   # one scale for every layer; square root to
        for layer, ax in enumerate(axes[:L]):    # show the small weights too
            im = ax.imshow(mean[layer], cmap="magma", norm=norm, interpolation="nearest")
            ax.set_xticks(range(len(chars)), labels, fontsize=7)
            ax.set_yticks(range(len(chars)), labels, fontsize=7)
            ax.tick_params(length=2, pad=1)
            ax.set_title(f"layer {layer} (mean of {maps.shape[1]} heads)")
        for ax in axes[L:]:
            ax.set_axis_off()
        for ax in axes[(rows - 1) * cols:L]:
            ax.set_xlabel("key: the character attended to")
        for ax in axes[:L:cols]:
            ax.set_ylabel("query: the character attending")
        fig.colorbar(im, ax=list(axes), label="attention weight (rows sum to 1; square-root scale)",
                     shrink=0.6, ticks=[0, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0])
        fig.suptitle(f"Attention weights of the shipped model on {CAT!r}\n(causal: "
                     "a character sees only itself and what came before it)")
        _save(fig, path, out)
    return "\n".join(out)
