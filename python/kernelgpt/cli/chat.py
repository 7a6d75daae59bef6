"""`kernelgpt chat`: an interactive, streaming chat with SmolLM2-135M-Instruct or another GGUF."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List

from ..generate import GenerationStats
from ..llama import load_model
from .generate import add_model_arguments, print_stats, sampling_settings


def add_arguments(p) -> None:
    add_model_arguments(p)
    p.add_argument("--system", default=None, help="system prompt (default: the template's)")


def main(args) -> int:
    """Interactive chat: type a message; /reset forgets the conversation, /system TEXT sets the
    system prompt, /quit (or Ctrl-D) leaves."""
    model = load_model(args.model, weights=args.weights, device=args.device)
    system = args.system
    history: List[dict] = []
    print(f"kernelgpt chat: {Path(model.source).name}, {model.config.n_layer} layers, "
          f"{model.weights} weights on {model.device}. /reset, /system TEXT, /quit",
          file=sys.stderr)
    if model.device == "emu":
        print("(device emu: the CUDA kernels on the CPU emulator, for checking them: seconds per "
              "token)", file=sys.stderr)
    while True:
        try:
            line = input("> ")
        except EOFError:
            print()
            return 0
        if not line.strip():
            continue
        if line.strip() in ("/quit", "/exit"):
            return 0
        if line.strip() == "/reset":
            history = []
            print("(conversation cleared)", file=sys.stderr)
            continue
        if line.startswith("/system"):
            system = line[len("/system"):].strip() or None
            history = []
            print(f"(system prompt {'set' if system else 'reset to the default'}; conversation "
                  "cleared)", file=sys.stderr)
            continue
        history.append({"role": "user", "content": line})
        messages = ([{"role": "system", "content": system}] if system else []) + history
        stats = GenerationStats()
        reply = []
        for piece in model.chat(messages, args.max_new_tokens, seed=args.seed, stats=stats,
                                **sampling_settings(args)):
            reply.append(piece)
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        history.append({"role": "assistant", "content": "".join(reply)})
        if args.stats:
            print_stats(stats)
