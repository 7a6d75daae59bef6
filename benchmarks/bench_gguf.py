"""GGUF open time: kernelgpt.io.gguf against the `gguf` package (llama.cpp's Python reader).

    kernelgpt fetch smollm2
    pip install gguf                                              # the peer (optional)
    flock .bench.lock python benchmarks/bench_gguf.py [--repeats 21] [--file F.gguf]

Prints one table (median of repeats, the page cache warm: the file was read once before):
  open                 GGUFFile(path): mmap + the whole header parsed and validated in C++
  open + close         the same, mapping released
  tokens / merges      first access to tokenizer.ggml.tokens / merges (lists of str)
  validate_llama       the model-level checks (includes building the vocabulary dict)
  gguf.GGUFReader      the peer's open (it decodes every field and tensor info eagerly)
The issue's target: open <= 50 ms for SmolLM2-135M-Instruct (98 MB, 49,152 tokens, 272 tensors).
"""
from __future__ import annotations

import argparse
import sys

from kernelgpt.bench import median_best
from kernelgpt.io import fetch
from kernelgpt.io.gguf import GGUFFile, validate_llama

try:
    import gguf  # llama.cpp's reader, the peer (optional)
except ImportError:
    gguf = None


def median_ms(f, repeats):
    """(median, best) milliseconds after a warm-up call (page cache, first imports), the
    garbage collector run before each call."""
    return tuple(t * 1e3 for t in median_best(f, repeats, collect=True))


def open_close(path):
    GGUFFile(path).close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--file", default=None, help="a GGUF file (default: the fetched SmolLM2)")
    args = parser.parse_args(argv)
    path = args.file or fetch.cached("smollm2")
    if path is None:
        print("no GGUF file: run `kernelgpt fetch smollm2` or pass --file", file=sys.stderr)
        return 2
    path = str(path)
    with open(path, "rb") as f:  # warm the page cache, as every row assumes
        while f.read(1 << 24):
            pass

    rows = []

    def opened():
        return GGUFFile(path)

    def key(name):
        def read():
            with GGUFFile(path) as f:
                f.metadata[name]
        return read

    def validate():
        with GGUFFile(path) as f:
            validate_llama(f.metadata, f.tensors)

    rows.append(("open", *median_ms(opened, args.repeats)))
    rows.append(("open + close", *median_ms(lambda: open_close(path), args.repeats)))
    base = rows[-1][1]
    for name in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges"):
        med, low = median_ms(key(name), args.repeats)
        rows.append((f"  + read {name.split('.')[-1]}", med - base, low - base))
    med, low = median_ms(validate, max(3, args.repeats // 3))
    rows.append(("  + validate_llama", med - base, low - base))
    if gguf is not None:
        rows.append(("gguf.GGUFReader(path)", *median_ms(lambda: gguf.GGUFReader(path), 3)))
    else:
        rows.append(("gguf.GGUFReader(path)", float("nan"), float("nan")))

    print(f"{path}")
    print(f"{'what':32s} {'median ms':>10s} {'min ms':>10s}")
    for name, med, low in rows:
        print(f"{name:32s} {med:10.2f} {low:10.2f}")
    ours, peer = rows[0][1], rows[-1][1]
    if peer == peer:
        print(f"open: {peer / ours:.0f}x faster than gguf.GGUFReader")
    return 0


if __name__ == "__main__":
    sys.exit(main())
