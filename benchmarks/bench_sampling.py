"""The sampler's time per token at SmolLM2's vocabulary (49,152), and the structured-output
overhead per token, each against the decode time of a token measured in the same run.

    flock .bench.lock python benchmarks/bench_sampling.py [--threads 2] [--reps 200]

Rows (the logits are SmolLM2-135M-Instruct's for a real chat prompt when the model is fetched,
else random normal ones of the same size):
  - per setting, one sampling step: kernelgpt's Sampler.fast (the C++ step; typical-p and the
    llama.cpp order run the numpy step), the numpy step (Sampler.__call__, the reference), and
    transformers' logits processors in the same order plus torch.multinomial (float32, the
    peer people compare with; where transformers and torch are installed), in microseconds,
    and as a fraction of one decode step of SmolLM2 (model.decode_next, median);
  - structured output: a JSON schema's generation timed with and without the mask wait /
    application (what the decode loop blocks on per token), the mask's own compute time (on the
    helper thread, overlapping the forward pass), and tokens/s of the same greedy generation
    unconstrained vs constrained with a schema the greedy text already satisfies.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

import kernelgpt
from kernelgpt.bench import setup_threads
from kernelgpt.sampling import Sampler, SamplingConfig

SETTINGS = {
    "greedy": dict(temperature=0),
    "default (T 0.2, top-p 0.9)": dict(temperature=0.2, top_p=0.9),
    "top-k 40": dict(temperature=0.8, top_k=40),
    "top-p 0.95 alone (full sort)": dict(temperature=0.8, top_p=0.95),
    "all filters, transformers order": dict(temperature=0.8, top_k=40, top_p=0.9, min_p=0.05,
                                            typical_p=0.95, repetition_penalty=1.2),
    "top-k/p/min-p + penalties + bias": dict(temperature=0.8, top_k=40, top_p=0.9, min_p=0.05,
                                             repetition_penalty=1.2, frequency_penalty=0.5,
                                             presence_penalty=0.3, logit_bias={100: -100}),
    "all filters, llama.cpp order": dict(temperature=0.8, top_k=40, top_p=0.9, min_p=0.05,
                                         typical_p=0.95, repetition_penalty=1.2,
                                         order="llama.cpp"),
}


def median_us(fn, reps):
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e6


def transformers_step(settings):
    """transformers' processors for the settings (its order) + softmax + multinomial."""
    try:
        import torch
        from transformers.generation import logits_process as lp
    except ImportError:
        return None
    if settings.get("order") == "llama.cpp" or settings.get("logit_bias") or \
            settings.get("frequency_penalty"):
        return None  # no such processors in transformers
    procs = []
    if settings.get("repetition_penalty", 1.0) != 1.0:
        procs.append(lp.RepetitionPenaltyLogitsProcessor(settings["repetition_penalty"]))
    t = settings.get("temperature", 1.0)
    if t == 0:
        return lambda ids, scores: int(torch.argmax(scores))
    if t != 1.0:
        procs.append(lp.TemperatureLogitsWarper(t))
    if settings.get("top_k"):
        procs.append(lp.TopKLogitsWarper(settings["top_k"]))
    if settings.get("top_p", 1.0) < 1.0:
        procs.append(lp.TopPLogitsWarper(settings["top_p"]))
    if settings.get("min_p"):
        procs.append(lp.MinPLogitsWarper(settings["min_p"]))
    if settings.get("typical_p", 1.0) < 1.0:
        procs.append(lp.TypicalLogitsWarper(settings["typical_p"]))
    chain = lp.LogitsProcessorList(procs)

    def step(ids, scores):
        s = chain(ids, scores)
        return int(torch.multinomial(torch.softmax(s, dim=-1), 1))
    return step


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--tokens", type=int, default=96, help="tokens per generation row")
    args = ap.parse_args(argv)
    limiter = setup_threads(args.threads)  # noqa: F841 - kept alive
    from kernelgpt.io import fetch
    model = kernelgpt.load_model("smollm2") if fetch.cached("smollm2") else None
    if model is not None:
        ids = model.encode_chat([{"role": "user", "content": "Write a haiku about the sea."}])
        cache = model.new_cache()
        logits = np.asarray(model.prefill(np.asarray([ids]), cache), np.float32)
        buf = np.empty(model.config.vocab_size, np.float32)
        n0 = cache.length
        decode_us = []
        for i in range(40):
            t = time.perf_counter()
            model.decode_next(int(ids[-1 - (i % 5)]), cache, out=buf)
            decode_us.append((time.perf_counter() - t) * 1e6)
            cache.truncate(n0)
        decode = statistics.median(decode_us)
        source = f"SmolLM2-135M-Instruct logits ({logits.size}); decode step {decode:.0f} us"
    else:
        logits = np.random.default_rng(0).normal(0, 3, 49152).astype(np.float32)
        ids, decode = list(range(40)), None
        source = "random logits (49152): kernelgpt fetch smollm2 for the real ones"
    print(f"kernelgpt {kernelgpt.__version__}, {args.threads} threads; {source}")
    context = list(ids)[-64:]
    print(f"{'setting':<36} {'fast us':>9} {'numpy us':>9} {'transformers us':>16} "
          f"{'fast/decode':>12} {'vs transformers':>16}")
    try:
        import torch
        scores = torch.from_numpy(logits.copy())[None]
        tids = torch.tensor([context])
    except ImportError:
        torch = None
    for name, settings in SETTINGS.items():
        cfg = SamplingConfig(**settings)
        fast_s, py_s = Sampler(cfg, seed=0), Sampler(cfg, seed=0)
        fast = median_us(lambda: fast_s.fast(logits, context), args.reps)
        py = median_us(lambda: py_s(logits, context), max(20, args.reps // 4))
        fast_s.reset(), py_s.reset()
        hf = None
        step = transformers_step(settings) if torch is not None else None
        if step is not None:
            hf = median_us(lambda: step(tids, scores.clone()), max(20, args.reps // 4))
        frac = f"{fast / decode:.3f}" if decode else "-"
        ratio = f"{hf / fast:.1f}x" if hf else "-"
        hf_s = f"{hf:.0f}" if hf else "-"
        print(f"{name:<36} {fast:>9.0f} {py:>9.0f} {hf_s:>16} {frac:>12} {ratio:>16}")
    if model is None:
        return 0
    structured_rows(model, args)
    return 0


def structured_rows(model, args):
    try:
        from kernelgpt import structured
    except ImportError:
        return
    try:
        import llguidance  # noqa: F401
    except ImportError:
        print("structured output: pip install llguidance for these rows")
        return
    schema = {"type": "array", "items": {"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 30}, "age": {"type": "integer"}},
        "required": ["name", "age"], "additionalProperties": False}, "maxItems": 12}
    waits, computes = [], []
    orig_apply, orig_compute = structured.Constraint.apply, structured.Constraint._compute

    def timed_apply(self, logits):
        t = time.perf_counter()
        out = orig_apply(self, logits)
        waits.append(time.perf_counter() - t)
        return out

    def timed_compute(self):
        t = time.perf_counter()
        orig_compute(self)
        computes.append(time.perf_counter() - t)

    prompt = "A list of 12 people with name and age, as JSON:\n"
    runs = {"unconstrained": {}, "json_schema": dict(json_schema=schema)}
    results = {}
    structured.Constraint.apply, structured.Constraint._compute = timed_apply, timed_compute
    try:
        for rep in range(3):
            for name, kw in runs.items():
                stats = kernelgpt.generate.GenerationStats()
                model.generate(prompt, max_tokens=args.tokens, temperature=0.7, seed=rep,
                               stats=stats, **kw)
                n = len(stats.new_tokens)
                results.setdefault(name, []).append((stats.decode_seconds / max(1, n) * 1e6, n))
    finally:
        structured.Constraint.apply, structured.Constraint._compute = orig_apply, orig_compute
    per_tok = {k: statistics.median(v[0] for v in vals) for k, vals in results.items()}
    wait = statistics.median(waits) * 1e6
    compute = statistics.median(computes) * 1e6
    print(f"structured output (JSON schema, {args.tokens} tokens max, 3 runs, median):")
    print(f"  decode per token: unconstrained {per_tok['unconstrained']:.0f} us, "
          f"json_schema {per_tok['json_schema']:.0f} us "
          f"(+{(per_tok['json_schema'] / per_tok['unconstrained'] - 1) * 100:.1f}%)")
    print(f"  mask: computed in {compute:.0f} us on the helper thread; the decode loop blocks "
          f"{wait:.0f} us per token on it (wait + in-place apply) = "
          f"{wait / per_tok['unconstrained'] * 100:.1f}% of a token's time")
    # a schema the greedy text already satisfies: the same text, and its speed
    messages = [{"role": "user", "content": "Give me a person as JSON with name and age."}]
    t = time.perf_counter()
    plain = model.chat(messages, stream=False, temperature=0, max_tokens=80)
    t_plain = time.perf_counter() - t
    obj_schema = {"type": "object", "properties": {"name": {"type": "string"},
                                                  "age": {"type": "integer"}}}
    t = time.perf_counter()
    con = model.chat(messages, stream=False, temperature=0, max_tokens=80, json_schema=obj_schema)
    t_con = time.perf_counter() - t
    print(f"  greedy chat reply: plain {plain.completion_tokens} tokens in {t_plain:.2f} s; "
          f"under a schema {con.completion_tokens} tokens in {t_con:.2f} s "
          f"(parses: {json.loads(con.text) is not None})")


if __name__ == "__main__":
    raise SystemExit(main())
