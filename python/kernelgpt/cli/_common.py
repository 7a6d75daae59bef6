"""What the `kernelgpt` commands share: the help formatter that shows defaults, argument
types that check their range, --threads, and the sampling options (one set of defaults:
kernelgpt.sampling.DEFAULT_SAMPLING)."""
from __future__ import annotations

import argparse
import math

from ..sampling import DEFAULT_SAMPLING, ORDERS, SamplingConfig


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps descriptions as written and appends "(default: X)" to every option whose
    default says something (not None, not False, not already in the help text)."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if ("%(default)" in text or "(default" in text or default is None or default is False
                or default is argparse.SUPPRESS or default in ("", []) or not action.option_strings):
            return text
        if isinstance(default, (list, tuple)):
            default = " ".join(str(x) for x in default)
            return f"{text} (default: {default})".strip()
        return f"{text} (default: %(default)s)".strip()


def _int_at_least(low: int, what: str = "an integer"):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value
    parse.__name__ = "int"
    return parse


positive_int = _int_at_least(1)
non_negative_int = _int_at_least(0)


def _float_in(low: float, high: float, low_open: bool = False, name: str = "a number"):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {name}, got {text!r}") from None
        ok = math.isfinite(value) and (value > low if low_open else value >= low) and value <= high
        if not ok and high == math.inf:
            raise argparse.ArgumentTypeError(
                f"must be a finite number {'>' if low_open else '>='} {low:g}, got {text}")
        if not ok:
            lo = "(" if low_open else "["
            raise argparse.ArgumentTypeError(f"must be in {lo}{low:g}, {high:g}], got {text}")
        return value
    parse.__name__ = "float"
    return parse


def add_threads_argument(p) -> None:
    p.add_argument("--threads", type=positive_int, default=None, metavar="N",
                   help="threads the kernels use, >= 1 (default: every CPU this process may "
                        "use)")


def apply_threads(args) -> None:
    """kernelgpt.set_num_threads(args.threads) when --threads was given."""
    n = getattr(args, "threads", None)
    if n is not None:
        from .. import set_num_threads
        set_num_threads(int(n))


def add_max_tokens_argument(p, default: int) -> None:
    p.add_argument("--max-new-tokens", "--max-tokens", dest="max_new_tokens", type=positive_int,
                   default=default, metavar="N", help="the most tokens to generate")


def add_sampling_arguments(p) -> None:
    """--temperature, --top-k, --top-p, --min-p, --repetition-penalty (DEFAULT_SAMPLING's
    defaults) and --seed."""
    d = DEFAULT_SAMPLING
    p.add_argument("--temperature", type=_float_in(0.0, math.inf), default=d.temperature,
                   metavar="T", help="sampling temperature, >= 0; 0 = greedy (always the most "
                                     "likely token)")
    p.add_argument("--top-k", type=non_negative_int, default=d.top_k, metavar="K",
                   help="sample among the K most likely tokens; 0 = off")
    p.add_argument("--top-p", type=_float_in(0.0, 1.0, low_open=True), default=d.top_p,
                   metavar="P", help="nucleus sampling: the most likely tokens whose "
                                     "probabilities add up to P, in (0, 1]; 1 = off")
    p.add_argument("--min-p", type=_float_in(0.0, 1.0), default=d.min_p, metavar="P",
                   help="drop tokens less likely than P times the most likely one, in [0, 1]; "
                        "0 = off")
    p.add_argument("--repetition-penalty", type=_float_in(0.0, math.inf, low_open=True),
                   default=d.repetition_penalty, metavar="R",
                   help="divide the scores of tokens already seen by R (> 0); 1 = off")
    p.add_argument("--typical-p", type=_float_in(0.0, 1.0, low_open=True), default=d.typical_p,
                   metavar="P", help="locally typical sampling: keep the tokens whose surprise "
                                     "is closest to the entropy, mass P, in (0, 1]; 1 = off")
    p.add_argument("--frequency-penalty", type=_float_in(-2.0, 2.0), default=d.frequency_penalty,
                   metavar="F", help="subtract F x (times the token was generated) from its "
                                     "logit, in [-2, 2] as the OpenAI API; 0 = off")
    p.add_argument("--presence-penalty", type=_float_in(-2.0, 2.0), default=d.presence_penalty,
                   metavar="P", help="subtract P from the logit of every token generated at "
                                     "least once, in [-2, 2]; 0 = off")
    p.add_argument("--logit-bias", type=_logit_bias_item, action="append", default=None,
                   metavar="ID=BIAS", help="add BIAS to token ID's logit (repeatable); -100 "
                                           "bans the token, 100 forces it")
    p.add_argument("--sampling-order", choices=ORDERS, default=d.order,
                   help="the order of the filters: transformers' (temperature first) or "
                        "llama.cpp's (temperature last)")
    p.add_argument("--seed", type=int, default=None,
                   help="random seed, for a repeatable reply (default: a fresh one each run)")


def _logit_bias_item(text: str):
    token, sep, bias = text.partition("=")
    try:
        if not sep:
            raise ValueError
        return int(token), float(bias)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ID=BIAS (a token id and a number), got "
                                         f"{text!r}") from None


def sampling_settings(args) -> dict:
    """The sampling options as keyword arguments (checked: SamplingConfig raises ValueError)."""
    settings = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                    min_p=args.min_p, typical_p=args.typical_p,
                    repetition_penalty=args.repetition_penalty,
                    frequency_penalty=args.frequency_penalty,
                    presence_penalty=args.presence_penalty,
                    logit_bias=dict(args.logit_bias) if args.logit_bias else None,
                    order=args.sampling_order)
    SamplingConfig(**settings)
    return settings
