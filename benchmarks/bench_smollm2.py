"""SmolLM2-135M-Instruct end to end: prefill and greedy decode speed, kernelgpt vs llama.cpp
(llama-cpp-python, when installed) on the same GGUF, same token ids, same thread count,
alternating runs, medians.

    flock .bench.lock python benchmarks/bench_smollm2.py [--threads 2] [--prompt-tokens 128]
        [--new-tokens 128] [--rounds 5] [--weights quantized,fp32]
        [--sections main,ceiling,contexts,load]

Sections (default all):
  main      prefill of the prompt and greedy decode, kernelgpt against llama.cpp.
  ceiling   where a decoded token's time goes (the runner's profile: matrix-vector products,
            attention over the cache, the rest) and the bandwidth ceiling measured in the same
            run: the bytes of weights read per token / the read bandwidth of a 256 MiB sum
            (kernelgpt._C.stream_sum on the same threads, one pass between decode rounds).
  contexts  decode at 1k and 4k tokens of context (attention over the cache grows), and a
            2,000-token prompt prefilled in chunks of --chunk tokens.
  load      decode with another process busy on one core: the default threads against one
            thread, alternating, in the same minute.

kernelgpt runs the weights as stored (Q4_1 / Q8_0) by default; --weights fp32 also times the
dequantized model. llama.cpp is loaded with use_extra_bufts = False (its AMX / repacked buffers
crash on this CPU for prompts of 2+ tokens, see the project's data notes, DATA.md) and logits
of the last position only. Threads: kernelgpt.bench.setup_threads; a 0.2 s pause
(kernelgpt.bench.PAUSE) before each run lets the other library's worker threads go idle.
"""
from __future__ import annotations

import argparse
import ctypes
import statistics
import subprocess
import sys
import time

import numpy as np

from kernelgpt import _C
from kernelgpt.bench import PAUSE, setup_threads
from kernelgpt.llama import load_model
from kernelgpt.precision import Bf16Weight, QuantWeight

TEXT = ("The Roman Empire was the post-Republican state of ancient Rome. It included large "
        "territorial holdings around the Mediterranean Sea in Europe, North Africa, and Western "
        "Asia, and was ruled by emperors. ") * 20


def prefill(model, ids, cache, chunk=None):
    """Logits [V] after the prompt ids, fed in chunks of `chunk` tokens (None: one pass)."""
    chunk = chunk or len(ids)
    for i in range(0, len(ids), chunk):
        logits = model.forward_cached(np.asarray([ids[i:i + chunk]]), cache)[0]
    return logits


def kernelgpt_run(model, ids, new_tokens, chunk=None, profile=None):
    """(prefill s, decode s, greedy tokens); profile: a dict to fill with the runner's
    profile of the decoded tokens."""
    cache = model.new_cache(len(ids) + new_tokens + 1)
    t0 = time.perf_counter()
    logits = prefill(model, ids, cache, chunk)
    pre = time.perf_counter() - t0
    out = []
    buf = np.empty(model.config.vocab_size, np.float32)
    runner = model.decode_runner(cache)
    runner.set_profiling(profile is not None)
    t1 = time.perf_counter()
    for _ in range(new_tokens):
        token = int(np.argmax(logits))
        out.append(token)
        logits = model.decode_next(token, cache, out=buf)
    t2 = time.perf_counter()
    if profile is not None:
        profile.update(runner.profile())
        runner.set_profiling(False)
    return pre, t2 - t1, out


def weight_bytes_per_token(model) -> int:
    """Bytes of parameters one decoded token reads: every matrix once (the embedding table
    once more only as the tied LM head; an untied one is read one row per token)."""
    total = 0
    for name in model.params.names():
        w = model.params[name]
        n = w.raw.nbytes if isinstance(w, QuantWeight) else \
            w.bits.nbytes if isinstance(w, Bf16Weight) else w.nbytes
        if name == "wte" and not model.config.tied_head:
            n //= model.config.vocab_size
        total += n
    return total


class ReadBandwidth:
    """GB/s of one pass of _C.stream_sum over 256 MiB (far beyond the caches), on the
    threads set by setup_threads."""

    def __init__(self, mib=256):
        self.src = np.random.default_rng(0).random(mib << 18, dtype=np.float32)
        _C.stream_sum(self.src)

    def measure(self, passes=3) -> float:
        times = []
        for _ in range(passes):
            t0 = time.perf_counter()
            _C.stream_sum(self.src)
            times.append(time.perf_counter() - t0)
        return self.src.nbytes / min(times) / 1e9


class LlamaCpp:
    def __init__(self, path, threads, n_ctx):
        import llama_cpp as L
        self.L, self.ctypes = L, ctypes
        # keep llama.cpp's load log off the table
        self._quiet = L.llama_log_callback(lambda level, text, user: None)
        L.llama_log_set(self._quiet, ctypes.c_void_p())
        L.llama_backend_init()
        mp = L.llama_model_default_params()
        if hasattr(mp, "use_extra_bufts"):
            mp.use_extra_bufts = False
        self.model = L.llama_model_load_from_file(str(path).encode(), mp)
        cp = L.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_ubatch = n_ctx, n_ctx, n_ctx
        cp.n_threads, cp.n_threads_batch = threads, threads
        self.cp = cp
        self.n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(self.model))
        self.ctx = None

    def _logits(self):
        ptr = self.L.llama_get_logits_ith(self.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))

    def _decode(self, ids):
        arr = (self.L.llama_token * len(ids))(*ids)
        if self.L.llama_decode(self.ctx, self.L.llama_batch_get_one(arr, len(ids))) != 0:
            raise RuntimeError("llama_decode failed")

    def run(self, ids, new_tokens):
        if self.ctx is not None:
            self.L.llama_free(self.ctx)
        self.ctx = self.L.llama_init_from_model(self.model, self.cp)
        t0 = time.perf_counter()
        self._decode(ids)
        logits = self._logits()
        t1 = time.perf_counter()
        out = []
        for _ in range(new_tokens):
            token = int(np.argmax(logits))
            out.append(token)
            self._decode([token])
            logits = self._logits()
        t2 = time.perf_counter()
        return t1 - t0, t2 - t1, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--weights", default="quantized", help="comma list: quantized,fp32")
    args = ap.parse_args()
    _limiter = setup_threads(args.threads, torch=None)
    peers = {}
    for w in args.weights.split(","):
        t0 = time.perf_counter()
        m = load_model("smollm2", weights=w)
        print(f"# kernelgpt {w}: loaded in {time.perf_counter() - t0:.2f} s")
        peers[f"kernelgpt {w}"] = lambda ids, n, m=m: kernelgpt_run(m, ids, n)
    ids = m.tokenizer.encode(TEXT)[: args.prompt_tokens]
    try:
        lc = LlamaCpp(m.source, args.threads, args.prompt_tokens + args.new_tokens + 8)
        import llama_cpp
        peers[f"llama.cpp ({llama_cpp.__version__})"] = lc.run
    except ImportError:
        print("# llama-cpp-python not installed: kernelgpt only")
    times = {k: ([], []) for k in peers}
    texts = {}
    for name, fn in peers.items():  # warm up
        texts[name] = fn(ids, 8)[2]
    for _ in range(args.rounds):
        for name, fn in peers.items():
            time.sleep(PAUSE)
            pre, dec, out = fn(ids, args.new_tokens)
            times[name][0].append(pre)
            times[name][1].append(dec)
            texts[name] = out
    print(f"# SmolLM2-135M-Instruct, {len(ids)}-token prompt, {args.new_tokens} greedy tokens, "
          f"{args.threads} threads, median of {args.rounds}")
    base = next((k for k in peers if k.startswith("llama.cpp")), None)
    for name, (pre, dec) in times.items():
        p = len(ids) / statistics.median(pre)
        d = args.new_tokens / statistics.median(dec)
        line = f"{name:>28}: prefill {p:7.0f} tok/s, decode {d:6.1f} tok/s"
        if base and name != base:
            bp = len(ids) / statistics.median(times[base][0])
            bd = args.new_tokens / statistics.median(times[base][1])
            same = sum(a == b for a, b in zip(texts[name], texts[base]))
            line += (f"  ({p / bp:.2f}x, {d / bd:.2f}x llama.cpp; greedy tokens equal for "
                     f"{same}/{args.new_tokens})")
        print(line)


if __name__ == "__main__":
    main()
