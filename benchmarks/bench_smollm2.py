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
  batch     greedy decode of --batch sequences together (GPT.batch_decoder: one pass over the
            weights per step) against one sequence, tokens/s; checks each batched sequence's
            tokens equal its run alone.

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
    """Logits [V] after the prompt ids, fed in chunks of `chunk` tokens (None: one pass), as
    generate() does (GPT.prefill: one native call per chunk)."""
    chunk = chunk or len(ids)
    for i in range(0, len(ids), chunk):
        logits = model.prefill(np.asarray([ids[i:i + chunk]]), cache)
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


def long_text(tokenizer, n):
    """n token ids of real text (Shakespeare when fetched, else TEXT repeated)."""
    try:
        from kernelgpt.data import shakespeare_text
        text = shakespeare_text()[:n * 8]
    except Exception:  # not fetched: kernelgpt fetch shakespeare
        text = TEXT
    ids = tokenizer.encode(text)
    while len(ids) < n:
        ids = ids + ids
    return ids[:n]


def section_main(args, models, ids):
    peers = {f"kernelgpt {w}": (lambda i, n, m=m: kernelgpt_run(m, i, n)) for w, m in models.items()}
    any_model = next(iter(models.values()))
    try:
        lc = LlamaCpp(any_model.source, args.threads, args.prompt_tokens + args.new_tokens + 8)
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
    print(f"\n## prefill and decode: {len(ids)}-token prompt, {args.new_tokens} greedy tokens, "
          f"{args.threads} threads, median of {args.rounds}")
    base = next((k for k in peers if k.startswith("llama.cpp")), None)
    for name, (pre, dec) in times.items():
        p = len(ids) / statistics.median(pre)
        d = args.new_tokens / statistics.median(dec)
        line = f"{name:>34}: prefill {p:7.0f} tok/s, decode {d:6.1f} tok/s"
        if base and name != base:
            bp = len(ids) / statistics.median(times[base][0])
            bd = args.new_tokens / statistics.median(times[base][1])
            same = sum(a == b for a, b in zip(texts[name], texts[base]))
            line += (f"  ({p / bp:.2f}x, {d / bd:.2f}x llama.cpp; greedy tokens equal for "
                     f"{same}/{args.new_tokens})")
        print(line)


def section_ceiling(args, model, ids):
    """Decode rounds alternating with read-bandwidth passes; the runner's profile."""
    bw, per_token = ReadBandwidth(), weight_bytes_per_token(model)
    kernelgpt_run(model, ids, 8)
    gbs, dec, profs = [], [], []
    for _ in range(args.rounds):
        gbs.append(bw.measure())
        time.sleep(PAUSE)
        dec.append(kernelgpt_run(model, ids, args.new_tokens)[1] / args.new_tokens)
        prof = {}
        kernelgpt_run(model, ids, args.new_tokens, profile=prof)
        profs.append(prof)
    g, t = statistics.median(gbs), statistics.median(dec)
    ceiling = per_token / (g * 1e9)
    split = {k: statistics.median(p[k + "_s"] / p["tokens"] for p in profs)
             for k in ("matvec", "attention", "other")}
    print(f"\n## bandwidth ceiling: {per_token / 1e6:.1f} MB of weights per token, read "
          f"bandwidth {g:.1f} GB/s ({args.threads} threads, _C.stream_sum over 256 MiB, median "
          f"of {args.rounds} passes between the decode rounds)")
    print(f"  ceiling {ceiling * 1e3:.2f} ms/token = {1 / ceiling:.0f} tok/s; decode "
          f"{t * 1e3:.2f} ms/token = {1 / t:.1f} tok/s = {ceiling / t:.2f} of the ceiling")
    total = sum(split.values())
    print("  per token (profiled run): " + ", ".join(
        f"{k} {v * 1e3:.3f} ms ({v / total:.0%})" for k, v in split.items()) +
        f"; matrix-vector products at {per_token / split['matvec'] / 1e9:.1f} GB/s "
        f"= {ceiling / split['matvec']:.2f} of the read bandwidth")


def section_contexts(args, model):
    """Decode speed at several context lengths, and a long prompt prefilled in chunks."""
    n_new = 64
    lengths = [args.prompt_tokens] + [int(c) for c in args.contexts.split(",") if c]
    ids_all = long_text(model.tokenizer, max(lengths + [args.long_prompt]))
    print(f"\n## context length: decode {n_new} greedy tokens after a prompt of N tokens "
          f"(prefilled in chunks of {args.chunk}), median of {max(1, args.rounds // 2)}")
    base = None
    for n in lengths:
        decs = []
        for _ in range(max(1, args.rounds // 2)):
            time.sleep(PAUSE)
            decs.append(kernelgpt_run(model, ids_all[:n], n_new, chunk=args.chunk)[1])
        d = n_new / statistics.median(decs)
        base = base or d
        print(f"  context {n:5d}: decode {d:6.1f} tok/s ({d / base:.2f} of {lengths[0]})")
    pres = []
    for _ in range(max(1, args.rounds // 2)):
        time.sleep(PAUSE)
        pres.append(kernelgpt_run(model, ids_all[:args.long_prompt], 1, chunk=args.chunk)[0])
    p = statistics.median(pres)
    print(f"  prefill of a {args.long_prompt}-token prompt in chunks of {args.chunk}: "
          f"{p:.2f} s = {args.long_prompt / p:.0f} tok/s")


def section_load(args, model, ids):
    """Decode with a busy process on one core: args.threads against 1 thread, alternating."""
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    res = {args.threads: [], 1: []}
    try:
        time.sleep(0.5)
        for _ in range(args.rounds):
            for n in res:
                _C.set_num_threads(n)
                res[n].append(args.new_tokens / kernelgpt_run(model, ids, args.new_tokens)[1])
    finally:
        busy.kill()
        busy.wait()
        _C.set_num_threads(args.threads)
    a, b = statistics.median(res[args.threads]), statistics.median(res[1])
    print(f"\n## under load (another process busy on one core), {args.new_tokens} tokens, "
          f"median of {args.rounds}")
    print(f"  {args.threads} threads {a:6.1f} tok/s, 1 thread {b:6.1f} tok/s: "
          f"{a / b:.2f}x the one-thread speed")


def section_batch(args, model):
    prompts = [TEXT[i * 37:i * 37 + 200] for i in range(args.batch)]
    ids = [model.tokenizer.encode(p)[:args.prompt_tokens] for p in prompts]
    n = args.new_tokens

    def run_batch():
        caches = [model.new_cache(len(p) + n + 1) for p in ids]
        logits = np.stack([prefill(model, p, c) for p, c in zip(ids, caches)])
        dec = model.batch_decoder(caches)
        out = [[] for _ in ids]
        t0 = time.perf_counter()
        for _ in range(n):
            tokens = [int(t) for t in np.argmax(logits, axis=1)]
            for o, t in zip(out, tokens):
                o.append(t)
            logits = dec.step(tokens)
        return time.perf_counter() - t0, out

    singles, batches = [], []
    run_batch()
    for _ in range(args.rounds):
        time.sleep(PAUSE)
        singles.append(kernelgpt_run(model, ids[0], n)[1])
        time.sleep(PAUSE)
        t, out = run_batch()
        batches.append(t)
    same = sum(out[i] == kernelgpt_run(model, ids[i], n)[2] for i in range(len(ids)))
    one = n / statistics.median(singles)
    many = len(ids) * n / statistics.median(batches)
    print(f"\n## batched decode: {len(ids)} sequences x {n} greedy tokens, median of {args.rounds}")
    print(f"  one sequence {one:6.1f} tok/s; {len(ids)} together {many:7.1f} tok/s = "
          f"{many / one:.2f}x; tokens equal to each sequence alone: {same}/{len(ids)}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--weights", default="quantized",
                    help="comma list: quantized (int8 path where the CPU has VNNI or AVX2), "
                         "quantized-fp32 (fp32 activations), quantized-x8 (one int8 pass), "
                         "quantized-kv32 (a float32 KV cache), fp32, bf16")
    ap.add_argument("--sections", default="main,ceiling,contexts,load,batch")
    ap.add_argument("--batch", type=int, default=8, help="sequences for the batch section")
    ap.add_argument("--contexts", default="1024,4096", help="decode at these context lengths")
    ap.add_argument("--long-prompt", type=int, default=2000)
    ap.add_argument("--chunk", type=int, default=256, help="prefill chunk for long prompts")
    args = ap.parse_args()
    _limiter = setup_threads(args.threads, torch=None)
    models = {}
    for w in args.weights.split(","):
        t0 = time.perf_counter()
        kw = {"quantized-fp32": dict(int8=False), "quantized-x8": dict(x_bits=8),
              "quantized-kv32": dict(kv_dtype="float32")}.get(w, {})
        models[w] = load_model("smollm2", weights=w.split("-")[0], **kw)
        print(f"# kernelgpt {w}: loaded in {time.perf_counter() - t0:.2f} s")
    first = next(iter(models.values()))
    ids = first.tokenizer.encode(TEXT)[: args.prompt_tokens]
    sections = args.sections.split(",")
    if "main" in sections:
        section_main(args, models, ids)
    if "ceiling" in sections:
        section_ceiling(args, first, ids)
    if "contexts" in sections:
        for w, m in models.items():
            print(f"\n# {w} (KV cache {m.gpt.kv_dtype})")
            section_contexts(args, m)
    if "load" in sections:
        section_load(args, first, ids)
    if "batch" in sections:
        section_batch(args, first)


if __name__ == "__main__":
    main()
