"""`kernelgpt tokenize`: encode or decode text with a BPE vocabulary, or train one
(the library: kernelgpt.tokenizer)."""
from __future__ import annotations

import os
import pathlib
import sys

from ..tokenizer import Encoding, format_trace, get_encoding, train
from ..tokenizer.training import show_bytes
from ._common import add_threads_argument, positive_int


def add_arguments(parser) -> None:
    parser.add_argument("text", nargs="*", help="text to encode (default: read standard input)")
    parser.add_argument("-e", "--encoding", default="cl100k_base",
                        help="encoding name (cl100k_base, o200k_base, gpt2, ...) or a .tiktoken "
                             "file")
    parser.add_argument("-m", "--model", metavar="PATH",
                        help="use the tokenizer of this model file instead: a .gguf (any "
                             "weights; its tokenizer.ggml.* metadata) or a tokenizer.json")
    parser.add_argument("--pattern", default="cl100k",
                        help="pre-tokenizer for --train or a .tiktoken file: cl100k, o200k, gpt2, "
                             "whitespace, or a regular expression")
    parser.add_argument("-d", "--decode", action="store_true",
                        help="decode: the arguments (or standard input) are token ids")
    parser.add_argument("--pieces", action="store_true",
                        help="show each token's text instead of only the ids")
    parser.add_argument("--count", action="store_true", help="print only the number of tokens")
    parser.add_argument("--train", nargs="+", metavar="FILE",
                        help="train a vocabulary on these files ('-' reads standard input)")
    parser.add_argument("--vocab-size", type=positive_int, default=1024,
                        help="vocabulary size for --train")
    parser.add_argument("--trace", action="store_true", help="print every merge of --train")
    parser.add_argument("--save", metavar="PATH", help="write the trained vocabulary (.tiktoken)")
    add_threads_argument(parser)


def _encoding_for_cli(args) -> Encoding:
    if args.model:
        return model_tokenizer(args.model)
    if args.encoding.endswith(".tiktoken") or os.path.sep in args.encoding:
        return Encoding.from_tiktoken_file(args.encoding, args.pattern)
    return get_encoding(args.encoding)


def model_tokenizer(path: str) -> Encoding:
    """The tokenizer of a .gguf file (read from its metadata, whatever its weights) or of a
    Hugging Face tokenizer.json."""
    p = pathlib.Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--model {path}: no such file")
    if p.suffix == ".json":
        return Encoding.from_tokenizer_json(p)
    from ..io.gguf import GGUFFile
    metadata = GGUFFile(p).metadata
    return Encoding.from_gguf_metadata(
        {k: v for k, v in metadata.items() if k.startswith("tokenizer.ggml.")}, name=p.stem)


def _check_ids(enc: Encoding, ids) -> None:
    """ValueError for an id the vocabulary does not have (out of range, or in one of its
    holes, as cl100k_base has)."""
    for i in ids:
        if not 0 <= i < enc.n_vocab:
            raise ValueError(f"token id {i} is out of range [0, {enc.n_vocab}) of {enc.name}")
        try:
            enc.decode_single_token_bytes(i)
        except KeyError:
            raise ValueError(f"token id {i} is not in {enc.name} (a hole in its ids)") from None


def main(args) -> int:
    if args.train:
        inputs = [sys.stdin.read() if f == "-" else pathlib.Path(f) for f in args.train]
        enc = train(inputs, args.vocab_size, pattern=args.pattern, trace=args.trace,
                    num_threads=args.threads)
        stats = enc.training_stats
        print(f"trained {enc.n_vocab} tokens ({len(enc.trace or []) or enc.n_vocab - 256} merges) "
              f"on {stats['bytes']} bytes, {stats['pieces']} pieces "
              f"({stats['distinct_pieces']} distinct), pattern {enc.pattern}")
        if args.trace:
            print(format_trace(enc))
        if args.save:
            enc.save(args.save)
            print(f"saved {args.save} (load with Encoding.from_tiktoken_file(path, "
                  f"{enc.pattern!r}))")
        if args.text:
            text = " ".join(args.text)
            ids = enc.encode_ordinary(text)
            print(ids)
            print(" | ".join(show_bytes(b) for b in enc.decode_tokens_bytes(ids)))
        return 0
    enc = _encoding_for_cli(args)
    if args.decode:
        words = args.text or sys.stdin.read().replace(",", " ").replace("[", " ").replace("]", " ").split()
        try:
            ids = [int(w) for w in words]
        except ValueError as err:
            raise ValueError(f"--decode expects integer token ids: {err}") from None
        _check_ids(enc, ids)
        sys.stdout.write(enc.decode(ids))
        sys.stdout.write("\n")
        return 0
    text = " ".join(args.text) if args.text else sys.stdin.read()
    if args.count:
        print(enc.count(text, disallowed_special=()))
        return 0
    ids = enc.encode(text, disallowed_special=())
    print(ids)
    if args.pieces:
        print(" | ".join(show_bytes(b) for b in enc.decode_tokens_bytes(ids)))
    return 0
