#!/usr/bin/env python3
"""A GGUF model on a device against the CPU: logits of a few prompts and greedy continuations.

    python tools/gpu_model_check.py MODEL.gguf [--device cuda|emu] [--tokens 16] [--json OUT.json]

The CPU side is the oracle path (quantized weights dequantized against fp32 activations, fp32
KV cache: `load_model(..., int8=False, kv_dtype="float32")`); the device side is
`load_model(..., device=...)`. For each prompt: max |logit difference| / max |logit| of the
whole prompt's logits (must be <= --tolerance, 2e-3 by default, issue 16's bound), and the
greedy tokens of both sides; where they part, the CPU's margin between its top two logits at
that step is reported (a near-tie flips under rounding; a wide margin is a bug). Exit status
0 when every prompt passes. Used by tools/gpu_check.sh on SmolLM2's first blocks.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from kernelgpt.device import to_numpy
from kernelgpt.llama import load_model

PROMPTS = ["The capital of France is", "def fibonacci(n):",
           "Gravity is the force that", "1, 1, 2, 3, 5, 8,"]


def greedy(tm, ids, n):
    """n greedy tokens after ids, and the logits of each step (float64)."""
    gpt = tm.gpt
    cache = gpt.new_cache(len(ids) + n)
    logits = to_numpy(gpt.prefill(np.asarray(ids, np.int64), cache)).astype(np.float64).ravel()
    out, steps = [], []
    for _ in range(n):
        steps.append(logits)
        t = int(np.argmax(logits))
        out.append(t)
        logits = to_numpy(gpt.decode_next(t, cache)).astype(np.float64).ravel()
    return out, steps


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--device", default="cuda", choices=["cuda", "emu"])
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--tolerance", type=float, default=2e-3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    cpu = load_model(args.model, int8=False, kv_dtype="float32")
    t0 = time.perf_counter()
    dev = load_model(args.model, device=args.device)
    load_s = time.perf_counter() - t0
    results, ok = [], True
    for prompt in PROMPTS:
        ids = cpu.tokenizer.encode(prompt)
        ref = to_numpy(cpu.gpt.logits(np.asarray([ids]))).astype(np.float64)
        got = to_numpy(dev.gpt.logits(np.asarray([ids]))).astype(np.float64)
        rel = float(np.abs(ref - got).max() / max(np.abs(ref).max(), 1e-30))
        a, a_steps = greedy(cpu, ids, args.tokens)
        b, _ = greedy(dev, ids, args.tokens)
        first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
        margin = None
        if first is not None:
            top2 = np.sort(a_steps[first])[-2:]
            margin = float(top2[1] - top2[0])
        passed = bool(np.isfinite(got).all()) and rel <= args.tolerance and first is None
        ok &= passed
        results.append({"prompt": prompt, "max_rel_logit_diff": rel, "cpu_tokens": a,
                        "device_tokens": b, "first_difference": first,
                        "cpu_margin_there": margin, "passed": passed})
        print(f"{'ok  ' if passed else 'FAIL'} {prompt!r}: logits within {rel:.2e} of the CPU's "
              f"max |logit|; greedy {args.tokens} tokens " +
              ("identical" if first is None else
               f"part at token {first} (CPU margin there {margin:.4f})"), flush=True)
    summary = {"model": args.model, "device": args.device, "load_seconds": load_s,
               "n_layer": cpu.gpt.config.n_layer, "tolerance": args.tolerance,
               "prompts": results, "passed": ok}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
