"""From logits to text: sampling, and the KV cache that makes each new token cheap."""
from __future__ import annotations

import time

import numpy as np

from ..sampling import SamplingConfig, filtered_distribution
from ._common import _bar, _char_label, _figure, _save, _shipped_model, lesson


# ---- 7. sampling --------------------------------------------------------------------------------

@lesson("sampling")
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
    chain_lines, chain = _sampling_chain()
    fig, path = _figure(plot, "sampling", figsize=(12, 11.2 if chain else 5.6))
    if fig:
        parts = fig.subfigures(2, 1, height_ratios=[5.6, 5.6]) if chain else [fig]
        upper = parts[0]
        order = np.argsort(-dists["temperature 1.0"])[:12]
        axes = upper.subplots(2, 4, sharex=True).ravel()
        top = max(float(p[order].max()) for p in dists.values())
        for ax in axes[1:len(dists)]:
            ax.sharey(axes[0])   # one probability scale; the logits keep their own
            if ax not in axes[::4]:
                ax.tick_params(labelleft=False)
        axes[0].set_ylim(0, 1.05)
        for ax, (name, p) in zip(axes, dists.items()):
            kept = p[order] > 0
            ax.bar(np.arange(len(order))[kept], p[order][kept], color="tab:blue")
            ax.bar(np.arange(len(order))[~kept], np.full((~kept).sum(), top * 0.02),
                   color="lightgray")
            ax.set_title(f"{name}: {int((p > 0).sum())} left", fontsize=10)
            ax.grid(axis="y", alpha=0.3)
        for ax in axes[::4]:
            ax.set_ylabel("probability")
        ax = axes[len(dists)]
        ax.bar(np.arange(len(order)), logits[order], color="tab:orange")
        ax.set_title("the raw logits (own scale)", fontsize=10)
        ax.set_ylabel("logit", labelpad=1)
        ax.yaxis.set_label_position("right")
        ax.tick_params(labelleft=False, labelright=True)
        ax.grid(axis="y", alpha=0.3)
        lo, hi = float(logits[order].min()), float(logits[order].max())
        ax.set_ylim(min(0.0, lo * 1.1), max(0.0, hi * 1.1))
        ax.tick_params(left=False)
        for ax in axes[4:]:
            ax.set_xticks(range(len(order)), [repr(_char_label(tok.chars[j]))[1:-1]
                                              for j in order])
            ax.set_xlabel("next character (12 likeliest)")
        upper.suptitle(f"Sampling: the next character after {prompt.splitlines()[-1]!r} under each "
                     "setting (grey: filtered out)")
        if chain:
            _draw_chain(parts[1], *chain)
            fig.suptitle("Sampling: the shipped character model's next character (top) and "
                         "SmolLM2's next token (bottom)")
    out += chain_lines
    if fig:
        _save(fig, path, out)
    return "\n".join(out)


# The settings the filter chain is shown with: every filter on, loose enough that each one
# visibly removes a few candidates of a real model's distribution.
CHAIN_SETTINGS = dict(temperature=0.8, top_k=40, top_p=0.9, min_p=0.1, typical_p=0.95,
                      repetition_penalty=1.2, frequency_penalty=0.3, presence_penalty=0.2)


def _sampling_chain():
    """(text lines, (chains, tokenizer) or None): SmolLM2's next-token distribution after each
    filter, in transformers' order and in llama.cpp's (the bars of
    kernelgpt.sampling.filter_steps); a hint instead when the model is not fetched."""
    from ..io import fetch
    from ..sampling import SamplingConfig, filter_steps
    if fetch.cached("smollm2") is None:
        return ["", "(kernelgpt fetch smollm2 to see the same filters on SmolLM2-135M's "
                    "49,152-token distribution)"], None
    from ..llama import load_model
    model = load_model("smollm2")
    tok = model.tokenizer
    messages = [{"role": "user", "content": "Name a fruit that is red."}]
    ids = model.encode_chat(messages)
    reply = tok.encode("A red fruit is the")
    logits = model.prefill(np.asarray([ids + reply]), model.new_cache())
    out = ["", f"SmolLM2-135M-Instruct, the next token of the reply {tok.decode(reply)!r} "
               f"(after {len(ids)} prompt tokens), {logits.size} logits;",
           "every filter on: " + ", ".join(f"{k}={v}" for k, v in CHAIN_SETTINGS.items()),
           "(the penalties count the reply so far as generated)"]
    chains = {}
    for order in ("transformers", "llama.cpp"):
        cfg = SamplingConfig(order=order, **CHAIN_SETTINGS)
        steps = filter_steps(logits, cfg, previous_tokens=ids + reply, generated_tokens=reply)
        chains[order] = steps
        out.append(f"order={order}: " + " -> ".join(name for name, _ in steps))
        for name, p in steps:
            top = np.argsort(-p, kind="stable")[:4]
            bars = "  ".join(f"{tok.decode([int(j)])!r} {p[j]:.3f}" for j in top if p[j] > 0)
            out.append(f"  {name:>12}: {int((p > 0).sum()):>6} left   {bars}")
    return out, (chains, tok)


def _draw_chain(fig, chains, tok) -> None:
    """The bars of each step of each order, one row per order, into fig (a subfigure)."""
    first = chains["transformers"][0][1]
    order_ids = np.argsort(-first, kind="stable")[:16]
    labels = [repr(tok.decode([int(j)]))[1:-1] for j in order_ids]
    rows = fig.subplots(2, max(len(c) for c in chains.values()), sharey=True, squeeze=False)
    for r, (name, steps) in enumerate(chains.items()):
        for c, ax in enumerate(rows[r]):
            if c >= len(steps):
                ax.axis("off")
                continue
            step, p = steps[c]
            kept = p[order_ids] > 0
            x = np.arange(len(order_ids))
            ax.bar(x[kept], p[order_ids][kept], color="tab:blue")
            ax.bar(x[~kept], np.full((~kept).sum(), 0.01), color="lightgray")
            ax.set_title(f"{step}: {int((p > 0).sum())} left", fontsize=9)
            ax.set_xticks(x, labels, rotation=90, fontsize=7)
            ax.set_xlabel("next token (16 likeliest)", fontsize=8)
        rows[r][0].set_ylabel(f"{name}\nprobability")
    fig.suptitle("SmolLM2's next token: the bars after each filter, in each order "
                 "(grey: filtered out)")


# ---- 8. the KV cache ----------------------------------------------------------------------------

@lesson("kv-cache")
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
    fig, path = _figure(plot, "kv-cache", figsize=(11, 4.2))
    if fig:
        ax, ax2 = fig.subplots(1, 2, sharex=True)
        pos = len(ids) + np.arange(n_tokens)
        for times, label in ((with_cache, "with KV cache"),
                             (without, "recompute the whole sequence")):
            ms = np.array(times) * 1e3
            ax.plot(pos, ms, lw=1, label=label)
            ax2.plot(pos, np.cumsum(ms), lw=1.5, label=label)
        ax.set(xlabel="position of the new token", ylabel="milliseconds per token",
               title="time for one new token")
        ax2.set(xlabel="position of the new token", ylabel="milliseconds, total",
                title="total time so far")
        for a_ in (ax, ax2):
            a_.set_ylim(bottom=0)
            a_.grid(alpha=0.3)
            a_.legend(fontsize=8)
        fig.suptitle("The KV cache: each new token reuses the keys and values of the earlier ones")
        _save(fig, path, out)
    return "\n".join(out)


# ---- what happens when you press Enter ---------------------------------------------------------

@lesson("trace")
def lesson_trace(plot=None) -> str:
    """What happens when you press Enter: one real pass of the shipped model, step by step."""
    from ..trace import collect, write_html
    prompt = "ROMEO:\nBut soft"
    model, tok = _shipped_model()
    from ..text_model import TextModel
    data = collect(prompt, TextModel(model, tok, name="shakespeare-char"), max_new_tokens=12)
    t = data["tokens"]
    out = [f"text {prompt!r} -> {len(t['utf8'])} UTF-8 bytes -> {len(t['ids'])} tokens "
           f"(characters) -> ids {t['ids']}",
           f"embeddings: vectors of {data['model']['n_embd']} numbers, norms "
           + ", ".join(f"{n:.2f}" for n in data["embeddings"]["norms"]),
           "through the layers (the logit lens: the final norm and head applied after each "
           "block, at the last position):"]
    final = data["final"]["answer"]
    for layer in data["layers"]:
        top = layer["lens"][0]
        p_final = layer["lens_p_answer"]
        out.append(f"   {layer['name']:>10}: residual norm {layer['residual_norms'][-1]:6.2f}; "
                   f"top guess {_char_label(top[1])!r} {100 * top[2]:5.1f}%"
                   + (f"; the final answer {_char_label(tok.decode([final]))!r} {100 * p_final:5.1f}%"
                      if top[0] != final else ""))
    steps = data["generation"]["steps"]
    out.append("generated, one token at a time with the KV cache: " + " ".join(
        f"{_char_label(s['text'])!r}({100 * s['p_model']:.0f}%)" for s in steps))
    out.append(f"   KV cache {steps[0]['kv_bytes'] / 1024:.1f} KiB -> {steps[-1]['kv_bytes'] / 1024:.1f} KiB; "
               f"prompt pass {1e3 * data['timing']['prefill_s']:.1f} ms, "
               f"{1e3 * data['timing']['decode_s'] / max(len(steps), 1):.1f} ms per new token")
    out.append('the whole pass as a page (attention per head, sliders for the sampler): '
               'kernelgpt trace "What is gravity?" --html trace.html (SmolLM2), or '
               '--model shipped')
    fig, path = _figure(plot, "trace", figsize=(9, 4))
    if fig:
        ax1, ax2 = fig.subplots(1, 2)
        names = [layer["name"].replace("block ", "b") for layer in data["layers"]]
        ax1.plot(range(len(names)), [layer["lens_p_answer"] for layer in data["layers"]], "o-")
        ax1.set_xticks(range(len(names)), names, fontsize=8)
        ax1.set_ylabel(f"p({_char_label(tok.decode([final]))!r}) at the last position")
        ax1.set_title("logit lens: the answer forming layer by layer")
        ax1.set_xlabel("after this block (b0 = the first)")
        logits = np.frombuffer(__import__("base64").b64decode(data["final"]["logits_b64"]), "<f4")
        probs = filtered_distribution(logits, temperature=1.0)
        top = np.argsort(-probs)[:10]
        ax2.barh(range(10)[::-1], probs[top])
        ax2.set_yticks(range(10)[::-1], [_char_label(tok.decode([int(i)])) for i in top])
        ax2.set_xlabel("probability of the next token")
        ax2.set_title("the distribution sampled from")
        ax2.set_ylabel("next character")
        fig.suptitle(f"One real pass of the shipped model on {prompt!r}")
        page = write_html(data, path.with_suffix(".html"))
        out.append(f"page: {page}")
        _save(fig, path, out)
    return "\n".join(out)
