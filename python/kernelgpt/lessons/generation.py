"""From logits to text: sampling, and the KV cache that makes each new token cheap."""
from __future__ import annotations

import time

import numpy as np

from ..sampling import SamplingConfig, filtered_distribution
from ._common import _bar, _figure, _save, _shipped_model


# ---- 7. sampling --------------------------------------------------------------------------------

def lesson_sampling(plot=None) -> str:
    """Logits -> probabilities -> one token: greedy, temperature, top-k, top-p, min-p."""
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
