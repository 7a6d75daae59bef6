"""Generation speed: the C++ decode runner (GPT.decode_next + Sampler.fast) against the Python
decode path (GPT.forward_cached + Sampler) and against recomputing the whole context for every
token (no KV cache).

    flock .bench.lock python benchmarks/bench_generate.py [--threads 2] [--reps 3]
        [--new-tokens 256] [--only default|shakespeare-char]

Models: the "default" preset (n_layer 4, n_head 6, n_embd 192, block 128) and the
"shakespeare-char" preset (6 / 6 / 384, block 256), vocab 65, random weights (speed does not
depend on them). Per model it prints:
  - tokens/s of generate() for --new-tokens new tokens after a 1-token prompt, with the runner,
    with the Python path, and without a cache (a plain loop over model.logits); generate()
    slides its window when the context fills (block 128 < 256), which the runner rows include;
  - the time of one decode step at the first 16 and the last 16 positions of the context
    (flat: the step reads the cache, it does not recompute it);
  - the Python overhead per generated token: generate()'s wall time per token minus the time
    spent inside native calls in that same run (each runner.decode / _C.sample_token call, or
    each _C kernel call of the Python path, timed by a thin wrapper; see _Timed).
Every number is the median of --reps repetitions, with the thread count fixed (2 by default).
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time

import numpy as np

import kernelgpt
from kernelgpt import _C, sampling
from kernelgpt.bench import median_time, setup_threads
from kernelgpt.data import CharTokenizer
from kernelgpt.generate import GenerationStats, generate
from kernelgpt.kernels import FAMILIES
from kernelgpt.model import GPT, GPTConfig
from kernelgpt.sampling import Sampler, SamplingConfig

PRESETS = {
    "default": dict(n_layer=4, n_head=6, n_embd=192, block_size=128),
    "shakespeare-char": dict(n_layer=6, n_head=6, n_embd=384, block_size=256),
}
VOCAB = 65
SAMPLING = SamplingConfig(temperature=1.0)


def tokenizer():
    return CharTokenizer([chr(32 + i) for i in range(VOCAB)])


def run_generate(model, tok, n, fast):
    for _ in generate(model, tok, "A", max_new_tokens=n, sampling=SAMPLING, seed=0,
                      fast_decode=fast):
        pass


def run_no_cache(model, n):
    """Every token recomputes the whole (window of the) context: no KV cache."""
    block = model.config.block_size
    sampler = Sampler(SAMPLING, seed=0)
    context = [33]
    for _ in range(n):
        logits = model.logits(np.asarray([context[-block:]]))[0, -1]
        context.append(sampler(logits, previous_tokens=context))


def step_times(model, fast) -> np.ndarray:
    """Seconds of one decode step at every position 0 .. block-1."""
    block = model.config.block_size
    cache = model.new_cache()
    out = np.empty(VOCAB, np.float32)
    tokens = np.random.default_rng(0).integers(0, VOCAB, block)
    times = np.empty(block)
    for pos, t in enumerate(tokens):
        t0 = time.perf_counter()
        if fast:
            model.decode_next(int(t), cache, out=out)
        else:
            model.forward_cached(np.asarray([[t]]), cache)
        times[pos] = time.perf_counter() - t0
    return times


class _Timed:
    """Stands in for a native object (the _C module, a runner): every method call is timed
    and the seconds summed, so one generate() run splits into native time and the rest. The
    wrapper's own cost (~0.3 us a call) lands in the rest, so the overhead is slightly
    overstated."""

    def __init__(self, real):
        self._real = real
        self.seconds = 0.0
        self.calls = 0

    def __getattr__(self, name):
        fn = getattr(self._real, name)
        if not callable(fn):
            return fn

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0
                self.calls += 1
        return timed


@contextlib.contextmanager
def timed_native(modules):
    """Swaps the `_C` global of each module for one _Timed(_C) while the block runs: every
    kernel family module (kernelgpt/kernels/<family>.py calls _C through its own global) for
    the Python path, the sampler's module for Sampler.fast."""
    timer = _Timed(_C)
    saved = [m._C for m in modules]
    for m in modules:
        m._C = timer
    try:
        yield timer
    finally:
        for m, real in zip(modules, saved):
            m._C = real


KERNEL_MODULES = list(FAMILIES.values())
SAMPLER_MODULES = [sampling if hasattr(sampling, "_C") else kernelgpt]  # where .fast finds _C


def overhead(model, tok, fast):
    """(wall, native) seconds per generated token inside generate(), for block - 1 new tokens
    after a 1-token prompt (no window slide). Native: the runner's decode and _C.sample_token
    (runner path), or every _C kernel call of the kernel families (Python path)."""
    n = model.config.block_size - 1
    cache = model.new_cache()
    stats = GenerationStats()
    runner = None
    if fast:
        real = _C.Transformer(model.config.to_dict(), model.params.views, cache.k, cache.v)
        runner = _Timed(real)
        # decode_next takes this runner for this cache (GPT._build_runner's tuple)
        model._runners[cache] = (model.params.data, runner, real.max_positions)
    try:
        with timed_native(SAMPLER_MODULES if fast else KERNEL_MODULES) as native:
            for _ in generate(model, tok, "A", max_new_tokens=n, sampling=SAMPLING, seed=0,
                              stats=stats, cache=cache, fast_decode=fast):
                pass
    finally:
        model._runners.pop(cache, None)
    # decode_seconds covers the loop after prefill: n samples and n - 1 decode steps; the
    # prefill's kernel calls (Python path) happened before it and are not counted
    if fast:
        seconds = runner.seconds + native.seconds
    else:
        seconds = native.seconds - prefill_kernel_seconds(model)
    return stats.decode_seconds / n, seconds / n


def prefill_kernel_seconds(model) -> float:
    """Kernel time of the 1-token prefill (forward_cached) that generate() runs first."""
    with timed_native(KERNEL_MODULES) as kernels:
        model.forward_cached(np.asarray([[33]]), model.new_cache())
    return kernels.seconds


def run(name, reps, n_new):
    cfg = GPTConfig(vocab_size=VOCAB, **PRESETS[name])
    model = GPT(cfg, seed=0)
    tok = tokenizer()
    rows = {}  # median_time's warm-up run builds the runner and touches the pages
    rows["runner"] = n_new / median_time(lambda: run_generate(model, tok, n_new, True), reps)
    rows["python"] = n_new / median_time(lambda: run_generate(model, tok, n_new, False), reps)
    rows["no_cache"] = n_new / median_time(lambda: run_no_cache(model, n_new), reps)
    steps = {}
    for fast in (True, False):
        t = np.median(np.stack([step_times(model, fast) for _ in range(reps)]), axis=0)
        steps[fast] = (np.median(t[:16]), np.median(t[-16:]))
    fast_o = [overhead(model, tok, True) for _ in range(reps)]
    slow_o = [overhead(model, tok, False) for _ in range(reps)]
    fast_o = tuple(statistics.median(x) for x in zip(*fast_o))
    slow_o = tuple(statistics.median(x) for x in zip(*slow_o))
    return cfg, rows, steps, fast_o, slow_o


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=None, help="default: KERNELGPT_THREADS or 2")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--only", default=None, help="one preset: default | shakespeare-char")
    args = p.parse_args(argv)
    _limiter = setup_threads(args.threads)
    print(f"threads {kernelgpt.get_num_threads()}, isa {kernelgpt.get_isa()}, median of "
          f"{args.reps}, {args.new_tokens} new tokens, vocab {VOCAB}, random weights")
    us = 1e6
    for name in PRESETS:
        if args.only and name != args.only:
            continue
        cfg, rows, steps, fast_o, slow_o = run(name, args.reps, args.new_tokens)
        print(f"\n{name}: n_layer {cfg.n_layer}, n_head {cfg.n_head}, n_embd {cfg.n_embd}, "
              f"block {cfg.block_size}")
        print(f"  {'path':<28}{'tok/s':>10}{'vs no cache':>13}{'step @0-15':>13}"
              f"{'step @last16':>14}{'late/early':>12}")
        for key, label, fast in [("runner", "cache, C++ runner", True),
                                 ("python", "cache, Python forward_cached", False),
                                 ("no_cache", "no cache (full recompute)", None)]:
            line = f"  {label:<28}{rows[key]:>10.0f}{rows[key] / rows['no_cache']:>12.1f}x"
            if fast is not None:
                early, late = steps[fast]
                line += f"{early * us:>11.1f}us{late * us:>12.1f}us{late / early:>12.2f}"
            print(line)
        print("  per generated token inside generate() (wall = native calls + Python overhead):")
        for label, (wall, native) in [("C++ runner", fast_o), ("Python forward_cached", slow_o)]:
            print(f"    {label:<24}{wall * us:>9.1f} us = {native * us:>8.1f} us + "
                  f"{(wall - native) * us:>8.1f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
