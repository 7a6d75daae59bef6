"""Turning logits into the next token: greedy, temperature, top-k, top-p, min-p and a
repetition penalty, seeded.

The steps, in order (the order Hugging Face transformers uses):
    1. repetition penalty: for every token already in the context, a positive logit is
       divided by the penalty and a negative one multiplied by it (CTRL, Keskar et al. 2019);
    2. temperature: logits / T  (T = 0 means greedy: always the most likely token);
    3. top-k: keep the k most likely tokens;
    4. top-p (nucleus): keep the smallest set of most likely tokens whose probability adds up
       to at least p;
    5. min-p: drop tokens whose probability is below min_p times the top token's;
    6. renormalise and draw one token with the generator's next uniform number.

``filtered_distribution`` returns the probabilities after steps 1-5 so the explainer's "bars
of probabilities" can be printed (``top_candidates`` gives the first few bars).

``DEFAULT_SAMPLING`` is the one set of defaults every text-producing entry point starts from
(``generate``, ``model.generate`` / ``chat`` / ``create_chat_completion`` and the CLI's
``sample``, ``generate`` and ``chat``): temperature 0.2 and top-p 0.9, the settings
SmolLM2-Instruct's authors recommend; a few of the most likely tokens compete, so answers stay
on topic without looping. ``temperature=0`` asks for greedy decoding. ``SamplingConfig()``
itself is the neutral "filters off" distribution (temperature 1), what the lessons print.

Logits may contain -inf (a masked token) but not NaN or +inf, and at least one entry must be
finite: anything else is a ValueError, as are invalid settings.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np

from . import _C

__all__ = ["SamplingConfig", "DEFAULT_SAMPLING", "sampling_config", "Sampler", "filtered_distribution", "top_candidates", "sample"]


@dataclass
class SamplingConfig:
    temperature: float = 1.0
    top_k: int = 0             # 0: off
    top_p: float = 1.0         # 1.0: off
    min_p: float = 0.0         # 0.0: off
    repetition_penalty: float = 1.0  # 1.0: off

    def __post_init__(self):
        self.validate()

    def validate(self) -> "SamplingConfig":
        t, k, p, mp, rp = self.temperature, self.top_k, self.top_p, self.min_p, self.repetition_penalty
        if not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
            raise ValueError(f"temperature must be a finite number >= 0, got {t!r}")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0 disables it), got {k!r}")
        if not isinstance(p, (int, float)) or not (0.0 < p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1], got {p!r}")
        if not isinstance(mp, (int, float)) or not (0.0 <= mp <= 1.0):
            raise ValueError(f"min_p must be in [0, 1], got {mp!r}")
        if not isinstance(rp, (int, float)) or not math.isfinite(rp) or rp <= 0:
            raise ValueError(f"repetition_penalty must be a finite number > 0, got {rp!r}")
        return self

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


DEFAULT_SAMPLING = SamplingConfig(temperature=0.2, top_p=0.9)

# Other libraries' names for the same settings (llama-cpp-python's repeat_penalty).
_ALIASES = {"repeat_penalty": "repetition_penalty"}


def sampling_config(settings: Optional[dict] = None, base: Optional[SamplingConfig] = None,
                    where: str = "sampling", also: Sequence[str] = ()) -> SamplingConfig:
    """``base`` (default DEFAULT_SAMPLING) with the given fields replaced. A name that is not a
    sampling setting raises TypeError listing the accepted ones (``where`` names the caller,
    ``also`` its other keyword arguments, for the message); None values are ignored (an
    OpenAI-style request may send temperature=None)."""
    base = DEFAULT_SAMPLING if base is None else base
    fields = dict(base.__dict__)
    for name, value in (settings or {}).items():
        key = _ALIASES.get(name, name)
        if key not in fields:
            accepted = ", ".join(sorted(set(fields) | set(_ALIASES) | set(also)))
            raise TypeError(f"{where}() got an unexpected keyword argument {name!r}; it accepts: "
                            f"{accepted}")
        if value is not None:
            fields[key] = value
    return SamplingConfig(**fields)


def _check_logits(logits) -> np.ndarray:
    logits = np.asarray(logits)
    if logits.ndim != 1 or logits.size == 0:
        raise ValueError(f"logits must be a non-empty 1-D array, got shape {logits.shape}")
    if logits.dtype.kind != "f":
        raise TypeError(f"logits must be floating point, got {logits.dtype}")
    if np.isnan(logits).any():
        raise ValueError("logits contain NaN")
    if np.isposinf(logits).any():
        raise ValueError("logits contain +inf")
    if not np.isfinite(logits).any():
        raise ValueError("logits are all -inf: no token can be sampled")
    return logits


def _penalized(logits: np.ndarray, penalty: float, previous: Optional[Iterable[int]]) -> np.ndarray:
    x = logits.astype(np.float64)
    if penalty != 1.0 and previous is not None:
        seen = np.unique(np.asarray(list(previous), dtype=np.int64))
        if seen.size:
            if seen.min() < 0 or seen.max() >= x.size:
                raise ValueError(f"previous token ids must be in [0, {x.size})")
            vals = x[seen]
            x[seen] = np.where(vals > 0, vals / penalty, vals * penalty)
    return x


def filtered_distribution(logits, config: Optional[SamplingConfig] = None,
                          previous_tokens: Optional[Sequence[int]] = None, **settings) -> np.ndarray:
    """Probabilities [V] (float64, summing to 1) after penalty, temperature and the filters;
    greedy (temperature 0) puts all the mass on the argmax."""
    config = (config or SamplingConfig(**settings)).validate()
    logits = _check_logits(logits)
    x = _penalized(logits, config.repetition_penalty, previous_tokens)
    V = x.size
    if config.greedy:
        probs = np.zeros(V)
        probs[int(np.argmax(x))] = 1.0
        return probs
    with np.errstate(over="ignore"):
        x = x / config.temperature
    if np.isposinf(x).any():  # would make the probabilities inf / inf = NaN
        raise ValueError(f"logits / temperature overflow: temperature {config.temperature} is "
                         f"too small for these logits (use 0 for greedy)")
    if not np.isfinite(x).any():
        raise ValueError(f"logits / temperature overflow to -inf everywhere: temperature "
                         f"{config.temperature} is too small for these logits (use 0 for greedy)")
    x = x - x[np.isfinite(x)].max()
    probs = np.exp(x)  # exp(-inf) = 0
    probs /= probs.sum()
    keep = np.ones(V, dtype=bool)
    order = None
    if config.top_k and config.top_k < V:
        order = np.argsort(-probs, kind="stable")
        keep[order[config.top_k:]] = False
    if config.top_p < 1.0:
        if order is None:
            order = np.argsort(-probs, kind="stable")
        sorted_p = probs[order]
        cum = np.cumsum(sorted_p)
        # keep tokens until the cumulative probability first reaches top_p (the one that
        # crosses the threshold stays in)
        cutoff = int(np.searchsorted(cum, config.top_p, side="left")) + 1
        keep[order[cutoff:]] = False
    if config.min_p > 0.0:
        keep &= probs >= config.min_p * probs.max()
    probs = np.where(keep, probs, 0.0)
    total = probs.sum()
    if total <= 0:  # cannot happen (the top token always survives), but never divide by 0
        probs = np.zeros(V)
        probs[int(np.argmax(x))] = 1.0
        return probs
    return probs / total


def top_candidates(logits, n: int = 10, tokenizer=None, **settings) -> List[Tuple[int, str, float]]:
    """The n most likely next tokens after filtering: [(id, text, probability)], for printing
    the distribution the sampler draws from."""
    probs = filtered_distribution(logits, **settings)
    ids = np.argsort(-probs, kind="stable")[:n]
    out = []
    for i in ids:
        text = ""
        if tokenizer is not None:
            try:
                text = tokenizer.decode([int(i)])
            except Exception:
                text = "?"
        out.append((int(i), text, float(probs[i])))
    return out


def sample(probs: np.ndarray, rng: np.random.Generator) -> int:
    """Draws an index from probs with one uniform number from rng (inverse CDF)."""
    u = rng.random()
    cum = np.cumsum(probs)
    i = int(np.searchsorted(cum, u * cum[-1], side="right"))
    return min(i, probs.size - 1)


class Sampler:
    """Seeded sampler: ``Sampler(SamplingConfig(temperature=0.8, top_k=40), seed=1)(logits)``.
    The same seed and the same logits give the same tokens."""

    def __init__(self, config: Optional[SamplingConfig] = None, seed: Optional[int] = None, **settings):
        self.config = (config or SamplingConfig(**settings)).validate()
        self.rng = np.random.default_rng(seed)

    def __call__(self, logits, previous_tokens: Optional[Sequence[int]] = None) -> int:
        if self.config.greedy and self.config.repetition_penalty == 1.0:
            logits = _check_logits(logits)
            return int(np.argmax(logits))
        probs = filtered_distribution(logits, self.config, previous_tokens)
        if self.config.greedy:
            return int(np.argmax(probs))
        return sample(probs, self.rng)

    def fast(self, logits: np.ndarray, previous_tokens: Optional[Sequence[int]] = None) -> int:
        """The same step in C++ (kernelgpt._C.sample_token): the same token as calling the
        sampler, for the same logits and the same generator state (it draws the one uniform
        number the same way, and none when greedy), with a few microseconds of Python."""
        c = self.config
        u = 0.0 if c.temperature == 0 else self.rng.random()
        return _C.sample_token(logits, c.temperature, c.top_k, c.top_p, c.min_p,
                               c.repetition_penalty,
                               previous_tokens if c.repetition_penalty != 1.0 else None, u)
