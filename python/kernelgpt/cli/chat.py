"""`kernelgpt chat`: an interactive, streaming chat with SmolLM2-135M-Instruct or another model.

The conversation is a ChatSession (kernelgpt.text_model): it owns its KV cache, so each turn
prefills only what is new, and drops the oldest turns when the conversation outgrows the
context (a note says so). In the terminal: arrow keys edit the line and walk the history
(readline; the history is kept in the kernelgpt cache directory unless --history ''); Ctrl-C
during a reply stops it (what was written is kept as the reply); Ctrl-C twice at the prompt,
Ctrl-D or /quit leaves.
"""
from __future__ import annotations

import sys
from pathlib import Path

from .generate import add_model_arguments, load_model_from_args, print_stats, sampling_settings

COMMANDS = [
    ("/reset", "forget the conversation (the system prompt stays)"),
    ("/system TEXT", "set the system prompt (empty: the template's default) and start over"),
    ("/help", "this list"),
    ("/quit, /exit", "leave (also Ctrl-D, or Ctrl-C twice at the prompt)"),
]
_HINT = "(Ctrl-C again or Ctrl-D to quit, /help for the commands)"


def add_arguments(p) -> None:
    add_model_arguments(p)
    p.add_argument("--system", default=None,
                   help="system prompt (default: the chat template's own, if it has one)")
    p.add_argument("--history", default=None, metavar="FILE",
                   help="where the typed lines are kept between sessions; '' keeps none "
                        "(default: chat_history in the kernelgpt cache directory)")


def _note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _is_tty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False


class _LineEditing:
    """readline (arrow keys, history) when the module exists; the history file best-effort:
    any failure to read or write it is ignored."""

    def __init__(self, path):
        try:
            import readline
        except ImportError:  # e.g. Windows without pyreadline: plain input()
            self.readline = None
            return
        self.readline = readline
        self.path = None
        try:
            if path is None:
                from ..io.fetch import cache_dir
                path = cache_dir() / "chat_history"
            if path:
                self.path = Path(path)
                readline.set_history_length(1000)
                if self.path.is_file():
                    readline.read_history_file(str(self.path))
        except Exception:  # noqa: BLE001 - history is a convenience, never a reason to fail
            pass

    def save(self) -> None:
        if self.readline is None or self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.readline.write_history_file(str(self.path))
        except Exception:  # noqa: BLE001
            pass


def _size(n_bytes: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.{1 if unit == 'GB' else 0}f} {unit}"
    return f"{n_bytes / 1e3:.0f} kB"


def _banner(model, session) -> str:
    c = model.config
    context = session.context_length
    kv = _size(model.kv_cache_bytes(context))
    name = getattr(model, "name", "") or Path(str(model.source)).name
    return (f"kernelgpt chat: {name}, {c.n_layer} layers, {model.weights} weights on "
            f"{model.device}; context {context} tokens (KV cache up to {kv}). "
            "/help for the commands, /quit to leave")


def _reply(session, line: str, args, settings: dict) -> bool:
    """Streams the reply to `line`; False if Ctrl-C stopped it."""
    reply = session.send(line, max_tokens=args.max_new_tokens, seed=args.seed, **settings)
    if reply.notice:  # decided before the reply starts: the oldest turns make room
        _note(f"[{reply.notice}]")
    stopped = False
    try:
        for piece in reply:
            sys.stdout.write(piece)
            sys.stdout.flush()
    except KeyboardInterrupt:
        stopped = True
        close = getattr(reply, "close", None)
        if close is not None:
            close()  # the partial reply becomes the assistant's turn ("interrupted")
    sys.stdout.write("\n")
    sys.stdout.flush()
    last = session.last
    if stopped:
        _note("[stopped]")
    if last is None:
        return not stopped
    if last.finish_reason == "length":
        if getattr(last.stats, "stop_reason", "length") == "context":
            _note(f"[reply cut: the {session.context_length}-token context is full; /reset "
                  "starts over]")
        else:
            _note(f"[reply cut at {last.completion_tokens} tokens: --max-new-tokens]")
    if args.stats and last.stats is not None:
        print_stats(last.stats)
    return not stopped


def main(args) -> int:
    """Interactive chat: type a message; /reset forgets the conversation, /system TEXT sets the
    system prompt, /help lists the commands, /quit (or Ctrl-D) leaves."""
    settings = sampling_settings(args)
    model = load_model_from_args(args)
    session = model.chat_session(system=args.system)  # no chat template: MissingTemplateError
    _note(_banner(model, session))
    if model.device == "emu":
        _note("(device emu: the CUDA kernels on the CPU emulator, for checking them: seconds "
              "per token)")
    interactive = _is_tty(sys.stdin)
    editing = _LineEditing(args.history) if interactive else None
    prompt = "> " if interactive else ""
    try:
        return _loop(session, args, settings, prompt)
    finally:
        if editing is not None:
            editing.save()


def _loop(session, args, settings, prompt: str) -> int:
    interrupted = False  # the last thing at the prompt was Ctrl-C
    while True:
        try:
            line = input(prompt)
        except EOFError:
            print()
            return 0
        except KeyboardInterrupt:
            print()
            if interrupted:
                return 0
            interrupted = True
            _note(_HINT)
            continue
        interrupted = False
        text = line.strip()
        if not text:
            continue
        word = text.split(maxsplit=1)[0]
        if word in ("/quit", "/exit"):
            return 0
        if word == "/help":
            _note("\n".join(f"  {c:14s} {h}" for c, h in COMMANDS)
                  + "\n  (a line that starts with // sends the rest with one /)")
            continue
        if word == "/reset":
            session.reset()
            _note("(conversation cleared)")
            continue
        if word == "/system":
            system = text[len("/system"):].strip() or None
            session.system = system
            _note(f"(system prompt {'set' if system else 'reset to the default'}; conversation "
                  "cleared)")
            continue
        if text.startswith("//"):
            line = line.lstrip()[1:]
        elif text.startswith("/") and " " not in word[1:] and word[1:].isalpha():
            _note(f"(unknown command {word}: /help lists the commands; start the line with // "
                  "to send it as it is)")
            continue
        _reply(session, line, args, settings)
