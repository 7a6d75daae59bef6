"""Load test of `kernelgpt serve` (loopback only), side by side with llama-cpp-python's
OpenAI server on the same GGUF where it is installed (pip install "llama-cpp-python[server]").

    python benchmarks/bench_serve.py [--clients 1,4,16] [--requests 32] [--max-tokens 64]

Each server runs in its own process with 2 threads, one server at a time. For each number of
concurrent clients, that many threads send streaming chat completions (the official `openai`
client, temperature 0, a different question each) until --requests have been answered.
Reported per level: aggregate completion tokens/s (all tokens / wall time), time to first
token p50 / p95, errors and lost requests (a stream without a finish_reason); during the
largest level a probe also times GET /health every 50 ms (p50 / p95).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

import openai

QUESTIONS = ["What is the capital of {}?", "Tell me one fact about {}.",
             "Write a short poem about {}.", "Why do people visit {}?"]
PLACES = ["France", "Japan", "Peru", "Kenya", "Norway", "Chile", "India", "Egypt", "Canada",
          "Spain", "Italy", "Brazil", "Ghana", "Nepal", "Cuba", "Iceland"]


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_ready(url: str, proc, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited: {proc.stdout.read().decode()[-2000:]}")
        try:
            with urllib.request.urlopen(url + "/v1/models", timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError("the server did not start")


def one_request(client, model, i, max_tokens):
    """(ttft seconds, completion tokens, finished) of one streaming chat completion."""
    q = QUESTIONS[i % len(QUESTIONS)].format(PLACES[i % len(PLACES)])
    t0 = time.perf_counter()
    ttft, pieces, finish, usage = None, 0, None, None
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": q}], max_tokens=max_tokens,
        temperature=0, stream=True, stream_options={"include_usage": True})
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage.completion_tokens
        for c in chunk.choices:
            if c.delta.content:
                pieces += 1
                if ttft is None:
                    ttft = time.perf_counter() - t0
            if c.finish_reason:
                finish = c.finish_reason
    return ttft if ttft is not None else time.perf_counter() - t0, usage or pieces, finish is not None


def run_level(url, model, clients, requests, max_tokens, probe_health):
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=600)
    lock = threading.Lock()
    next_i = [0]
    ttfts, tokens, errors, lost = [], [0], [0], [0]

    def worker():
        while True:
            with lock:
                i = next_i[0]
                next_i[0] += 1
            if i >= requests:
                return
            try:
                ttft, n, finished = one_request(client, model, i, max_tokens)
            except Exception as e:  # noqa: BLE001 - counted, reported
                with lock:
                    errors[0] += 1
                print(f"    request {i}: {type(e).__name__}: {e}", file=sys.stderr)
                continue
            with lock:
                ttfts.append(ttft)
                tokens[0] += n
                lost[0] += not finished

    health, stop = [], threading.Event()

    def probe():
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                with urllib.request.urlopen(url + "/health", timeout=10) as r:
                    r.read()
                health.append(time.perf_counter() - t0)
            except OSError:
                health.append(float("inf"))
            stop.wait(0.05)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    prober = threading.Thread(target=probe) if probe_health else None
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    if prober:
        prober.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    stop.set()
    if prober:
        prober.join()
    q = statistics.quantiles(ttfts, n=20) if len(ttfts) >= 2 else [ttfts[0]] * 19 if ttfts else [0] * 19
    res = dict(clients=clients, tok_s=tokens[0] / wall, ttft_p50=statistics.median(ttfts) if ttfts else 0,
               ttft_p95=q[18], errors=errors[0], lost=lost[0], tokens=tokens[0], wall=wall)
    if health:
        hq = statistics.quantiles(health, n=20) if len(health) >= 2 else health * 19
        res.update(health_p50=statistics.median(health), health_p95=hq[18], health_n=len(health))
    return res


def bench_server(name, cmd, url, model, args, env):
    print(f"\n## {name}: {' '.join(cmd[:4])} ...", flush=True)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        wait_ready(url, proc)
        one_request(openai.OpenAI(base_url=url + "/v1", api_key="none"), model, 0, 4)  # warm up
        out = []
        levels = [int(c) for c in args.clients.split(",")]
        for c in levels:
            r = run_level(url, model, c, max(args.requests, c), args.max_tokens,
                          probe_health=(c == max(levels) and name == "kernelgpt"))
            out.append(r)
            line = (f"  {c:3d} clients: {r['tok_s']:7.1f} tok/s aggregate, TTFT p50 "
                    f"{r['ttft_p50'] * 1e3:6.0f} ms p95 {r['ttft_p95'] * 1e3:6.0f} ms, "
                    f"{r['tokens']} tokens in {r['wall']:.1f} s, errors {r['errors']}, lost {r['lost']}")
            if "health_p95" in r:
                line += (f"; /health p50 {r['health_p50'] * 1e3:.1f} ms p95 "
                         f"{r['health_p95'] * 1e3:.1f} ms ({r['health_n']} probes)")
            print(line, flush=True)
        return out
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--requests", type=int, default=32, help="requests per level (>= clients)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--servers", default="kernelgpt,llama-cpp-python")
    args = ap.parse_args()
    from kernelgpt.io import fetch
    gguf = str(fetch.cached("smollm2") or fetch.fetch("smollm2"))
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    results = {}
    for name in args.servers.split(","):
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        if name == "kernelgpt":
            cmd = [sys.executable, "-m", "kernelgpt", "serve", "--model", gguf, "--port", str(port),
                   "--threads", str(args.threads), "--max-batch", "16", "--max-context", "2048"]
            model = os.path.basename(gguf)[:-len(".gguf")]
        elif name == "llama-cpp-python":
            try:
                import llama_cpp.server  # noqa: F401
            except ImportError:
                print("\n## llama-cpp-python: not installed (pip install 'llama-cpp-python[server]')")
                continue
            cmd = [sys.executable, "-m", "llama_cpp.server", "--model", gguf, "--port", str(port),
                   "--n_threads", str(args.threads), "--n_threads_batch", str(args.threads),
                   "--n_ctx", "2048", "--verbose", "False",
                   # queue concurrent requests (by default a new request interrupts the
                   # stream in flight, which then ends without a finish_reason: lost)
                   "--interrupt_requests", "False"]
            model = gguf
        else:
            raise SystemExit(f"unknown server {name!r}")
        results[name] = bench_server(name, cmd, url, model, args, env)
    if "kernelgpt" in results:
        k = results["kernelgpt"]
        print(f"\nkernelgpt: {k[-1]['clients']} clients vs 1: {k[-1]['tok_s'] / k[0]['tok_s']:.2f}x "
              "aggregate tokens/s")
        if "llama-cpp-python" in results:
            ll = results["llama-cpp-python"]
            for a, b in zip(k, ll):
                print(f"  {a['clients']:3d} clients: kernelgpt / llama-cpp-python = "
                      f"{a['tok_s'] / b['tok_s']:.2f}x aggregate tokens/s")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
