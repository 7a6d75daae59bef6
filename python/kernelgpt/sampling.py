"""Turning logits into the next token: greedy, temperature, top-k, top-p, min-p, typical-p,
the repetition / frequency / presence penalties and a logit bias, seeded.

Two orders of the steps, because the two ecosystems people compare with differ:

``order="transformers"`` (the default), as Hugging Face transformers' logits processors:
    1. penalties: ``logit_bias`` added (-100 bans a token, +100 forces it: see below), the
       repetition penalty (CTRL, Keskar et al. 2019: for every distinct token in
       ``previous_tokens`` a positive logit is divided by the penalty, a negative one
       multiplied by it), then the OpenAI API's frequency and presence penalties
       (``logit[j] -= count[j] * frequency_penalty + (count[j] > 0) * presence_penalty``, with
       ``count[j]`` how often token j was sampled in the text generated so far);
    2. temperature: logits / T  (T = 0 means greedy: always the most likely token);
    3. top-k: drop every token whose scaled logit is below the k-th largest (tokens tied with
       the k-th all stay, as ``torch.topk``'s threshold keeps them);
    4. top-p (nucleus), on the distribution the earlier filters left, renormalised: sort it
       ascending and drop tokens while the cumulative probability is <= 1 - p (the most likely
       token always stays);
    5. min-p: drop tokens whose probability is below min_p times the top token's;
    6. typical-p (Meister et al. 2022): on the renormalised distribution, rank the tokens by
       |-log p - entropy| and keep the smallest-ranked ones until their mass reaches typical_p
       (with every token tied with the last one kept);
    7. renormalise and draw one token with the generator's next uniform number.

``order="llama.cpp"``, as llama.cpp's default sampler chain (common/sampling: logit bias,
penalties, top-k, typical-p, top-p, min-p, temperature, then the draw):
    1. the same penalties;  2. top-k: exactly k tokens;  3. typical-p: sorted by
    |-log p - entropy|, kept until the cumulative probability exceeds typical_p;  4. top-p:
    sorted by probability, kept until the cumulative probability reaches p (that token stays);
    5. min-p on the logits (logit >= max logit + log(min_p)); 6. temperature last, so every
    filter sees the temperature-1 distribution; 7. the draw.

Ties. Sorting is stable: in the transformers order, tokens tied at the top-p boundary are
ranked by id when sorted ascending, so the lower id is dropped first (torch.sort does the same
for short vectors; for long ones its order among equal values is unspecified, so transformers
itself may drop either); in the llama.cpp order the lower id ranks first among equal
logits (kept first by top-k and top-p). Greedy picks the lowest id among the largest.

``logit_bias`` maps token ids to a bias added to their logits, as the OpenAI API's: a bias of
-100 or less bans the token outright (its logit becomes -inf) and one of +100 or more forces
it: only the forced tokens stay candidates. Values in between shift the logit.

``filtered_distribution`` returns the probabilities after the filters so the explainer's "bars
of probabilities" can be printed (``filter_steps`` gives them after each step, in the chosen
order; ``top_candidates`` the first few bars).

``DEFAULT_SAMPLING`` is the one set of defaults every text-producing entry point starts from
(``generate``, ``model.generate`` / ``chat`` / ``create_chat_completion`` and the CLI's
``sample``, ``generate`` and ``chat``): temperature 0.2 and top-p 0.9, the settings
SmolLM2-Instruct's authors recommend; a few of the most likely tokens compete, so answers stay
on topic without looping. ``temperature=0`` asks for greedy decoding. ``SamplingConfig()``
itself is the neutral "filters off" distribution (temperature 1), what the lessons print.

A ``Sampler`` is one sequence's: it holds the seeded generator and the counts of the tokens it
has drawn (the frequency / presence penalties' counts), so a sequence gets the same text for
the same seed whether it runs alone or in a batch.

Logits may contain -inf (a masked token) but not NaN or +inf, and at least one entry must be
finite: anything else is a ValueError, as are invalid settings.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from . import _C

__all__ = ["SamplingConfig", "DEFAULT_SAMPLING", "sampling_config", "Sampler", "filtered_distribution",
           "filter_steps", "top_candidates", "sample", "ORDERS"]


ORDERS = ("transformers", "llama.cpp")
BAN, FORCE = -100.0, 100.0  # logit_bias values that ban / force a token (the OpenAI API's)


@dataclass
class SamplingConfig:
    temperature: float = 1.0
    top_k: int = 0                   # 0: off
    top_p: float = 1.0               # 1.0: off
    min_p: float = 0.0               # 0.0: off
    typical_p: float = 1.0           # 1.0: off
    repetition_penalty: float = 1.0  # 1.0: off
    frequency_penalty: float = 0.0   # 0.0: off (the OpenAI API takes -2..2)
    presence_penalty: float = 0.0    # 0.0: off (the OpenAI API takes -2..2)
    logit_bias: Optional[Dict[int, float]] = None  # {token id: bias}; -100 bans, +100 forces
    order: str = "transformers"      # or "llama.cpp": see the module's docstring

    def __post_init__(self):
        self.validate()

    def validate(self) -> "SamplingConfig":
        t, k, p, mp, rp = self.temperature, self.top_k, self.top_p, self.min_p, self.repetition_penalty
        if not _is_number(t) or not math.isfinite(t) or t < 0:
            raise ValueError(f"temperature must be a finite number >= 0, got {t!r}")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0 disables it), got {k!r}")
        if not _is_number(p) or not (0.0 < p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1], got {p!r}")
        if not _is_number(mp) or not (0.0 <= mp <= 1.0):
            raise ValueError(f"min_p must be in [0, 1], got {mp!r}")
        if not _is_number(self.typical_p) or not (0.0 < self.typical_p <= 1.0):
            raise ValueError(f"typical_p must be in (0, 1], got {self.typical_p!r}")
        if not _is_number(rp) or not math.isfinite(rp) or rp <= 0:
            raise ValueError(f"repetition_penalty must be a finite number > 0, got {rp!r}")
        for name in ("frequency_penalty", "presence_penalty"):
            v = getattr(self, name)
            if not _is_number(v) or not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number, got {v!r}")
        if self.order not in ORDERS:
            raise ValueError(f"order must be one of {', '.join(map(repr, ORDERS))}, got "
                             f"{self.order!r}")
        self.logit_bias = _check_logit_bias(self.logit_bias)
        return self

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def penalized(self) -> bool:
        """Whether any penalty or bias changes the logits before the filters."""
        return (self.repetition_penalty != 1.0 or self.frequency_penalty != 0.0
                or self.presence_penalty != 0.0 or bool(self.logit_bias))


def _is_number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _check_logit_bias(bias) -> Optional[Dict[int, float]]:
    """{token id: bias} with int ids >= 0 (JSON's string keys "123" accepted) and finite
    numbers; None or {} is no bias."""
    if bias is None:
        return None
    if not isinstance(bias, Mapping):
        raise ValueError(f"logit_bias must be a mapping of token id to bias, got "
                         f"{type(bias).__name__}")
    out = {}
    for key, value in bias.items():
        token = key
        if isinstance(key, str) and key.strip().lstrip("+").isdigit():
            token = int(key)
        if isinstance(token, bool) or not isinstance(token, (int, np.integer)) or token < 0:
            raise ValueError(f"logit_bias keys must be token ids (integers >= 0), got {key!r}")
        if not _is_number(value) or not math.isfinite(value):
            raise ValueError(f"logit_bias[{key!r}] must be a finite number, got {value!r}")
        out[int(token)] = float(value)
    return out or None


DEFAULT_SAMPLING = SamplingConfig(temperature=0.2, top_p=0.9)

# Other libraries' names for the same settings (llama-cpp-python's repeat_penalty, its
# typical_p is ours, llama.cpp's --typical).
_ALIASES = {"repeat_penalty": "repetition_penalty", "typical": "typical_p"}


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


def _token_ids(tokens, V: int, what: str) -> np.ndarray:
    ids = np.asarray(list(tokens) if not isinstance(tokens, np.ndarray) else tokens)
    if ids.size == 0:
        return np.zeros(0, np.int64)
    if ids.dtype.kind not in "iu":
        raise TypeError(f"{what} must be integer token ids, got {ids.dtype}")
    ids = ids.astype(np.int64).ravel()
    if ids.min() < 0 or ids.max() >= V:
        raise ValueError(f"{what} ids must be in [0, {V})")
    return ids


def _penalized(logits: np.ndarray, config: SamplingConfig,
               previous: Optional[Iterable[int]] = None,
               generated: Optional[Iterable[int]] = None) -> np.ndarray:
    """float64 logits after the logit bias, the repetition penalty (over the distinct
    ``previous`` tokens) and the frequency / presence penalties (over the ``generated`` ones,
    counted), in that order (the same in both orders)."""
    x = logits.astype(np.float64)
    V = x.size
    if config.logit_bias:
        ids = np.fromiter(config.logit_bias.keys(), np.int64, len(config.logit_bias))
        bias = np.fromiter(config.logit_bias.values(), np.float64, len(config.logit_bias))
        if ids.max() >= V:
            raise ValueError(f"logit_bias token id {int(ids.max())} is out of range [0, {V})")
        x[ids] += bias
        x[ids[bias <= BAN]] = -np.inf
        forced = ids[bias >= FORCE]
        if forced.size:  # only the forced tokens stay candidates
            keep = np.zeros(V, dtype=bool)
            keep[forced] = True
            x[~keep] = -np.inf
        if not np.isfinite(x).any():
            raise ValueError("logit_bias leaves no token to sample (every candidate banned)")
    if config.repetition_penalty != 1.0 and previous is not None:
        seen = np.unique(_token_ids(previous, V, "previous token"))
        if seen.size:
            vals = x[seen]
            x[seen] = np.where(vals < 0, vals * config.repetition_penalty,
                               vals / config.repetition_penalty)
    if (config.frequency_penalty or config.presence_penalty) and generated is not None:
        ids, counts = np.unique(_token_ids(generated, V, "generated token"), return_counts=True)
        x[ids] -= counts * config.frequency_penalty + config.presence_penalty
    return x


def _scaled(x: np.ndarray, temperature: float) -> np.ndarray:
    """x / temperature, refusing a temperature so small that nothing finite is left."""
    with np.errstate(over="ignore"):
        x = x / temperature
    if np.isposinf(x).any():  # would make the probabilities inf / inf = NaN
        raise ValueError(f"logits / temperature overflow: temperature {temperature} is "
                         f"too small for these logits (use 0 for greedy)")
    if not np.isfinite(x).any():
        raise ValueError(f"logits / temperature overflow to -inf everywhere: temperature "
                         f"{temperature} is too small for these logits (use 0 for greedy)")
    return x


# ---- the filters: each sets the logits of the tokens it drops to -inf, in place -------------
# (_steps calls a filter only when its setting is on)

def _candidates(x: np.ndarray) -> np.ndarray:
    """The ids still in the running (finite logit), in id order."""
    return np.flatnonzero(x > -np.inf)


def _softmax(v: np.ndarray) -> np.ndarray:
    e = np.exp(v - v.max())
    return e / _total(e)


def _total(e: np.ndarray) -> float:
    """The sum of e in index order, one addition after another (np.add.accumulate). Not
    e.sum(): numpy's pairwise sum is blocked differently in different numpy versions, and the
    C++ sampler (_C.sample_token), which adds in this order, must draw the same token even at a
    draw boundary, whatever numpy is installed."""
    return float(np.cumsum(e)[-1]) if e.size else 0.0


def _hf_top_k(x: np.ndarray, k: int) -> None:
    c = _candidates(x)
    if 0 < k < c.size:
        kth = np.partition(x[c], c.size - k)[c.size - k]
        x[c[x[c] < kth]] = -np.inf


# Where the two ways of measuring top-p's boundary could disagree in the last bits (a flat
# distribution, a tie, a p that a cumulative sum hits exactly), the exact ascending form runs.
TOP_P_MARGIN = 1e-9


def _hf_top_p(x: np.ndarray, p: float) -> None:
    """transformers' TopPLogitsWarper: sorted ascending, drop while the cumulative probability
    is <= 1 - p. In exact arithmetic that is: keep a token while the mass of the tokens more
    likely than it is < p, which needs only the most likely tokens sorted (the C++ step sorts
    just those); where that mass is within TOP_P_MARGIN of p at the boundary, the ascending
    form decides, summed in transformers' order."""
    c = _candidates(x)
    probs = _softmax(x[c])
    # more likely first; among equal logits the higher id first (ascending, it goes last)
    desc = np.lexsort((-c, -x[c]))
    above = np.cumsum(probs[desc])  # above[j - 1]: the mass more likely than desc[j]
    reached = np.flatnonzero(above >= p)
    keep = int(reached[0]) + 1 if reached.size else c.size
    near = abs(above[keep - 1] - p) < TOP_P_MARGIN or \
        (keep >= 2 and abs(above[keep - 2] - p) < TOP_P_MARGIN)
    if not near:
        x[c[desc[keep:]]] = -np.inf
        return
    ascending = c[np.argsort(x[c], kind="stable")]
    cum = np.cumsum(_softmax(x[ascending]))
    drop = cum <= 1.0 - p
    drop[-1] = False  # the most likely token stays
    x[ascending[drop]] = -np.inf


def _hf_min_p(x: np.ndarray, min_p: float) -> None:
    c = _candidates(x)
    probs = _softmax(x[c])
    drop = probs < min_p * probs.max()
    drop[np.argmax(probs)] = False
    x[c[drop]] = -np.inf


def _hf_typical(x: np.ndarray, mass: float) -> None:
    c = _candidates(x)
    v = x[c]
    shifted_v = v - v.max()
    logp = shifted_v - np.log(np.exp(shifted_v).sum())
    entropy = -(logp * np.exp(logp)).sum()
    score = np.abs(-logp - entropy)
    ranked = np.argsort(score, kind="stable")
    cum = np.cumsum(_softmax(v[ranked]))
    last = min(int((cum < mass).sum()), c.size - 1)
    drop = score > score[ranked[last]]
    drop[ranked[0]] = False
    x[c[drop]] = -np.inf


def _llama_top_k(x: np.ndarray, k: int) -> None:
    """Exactly the k most likely (among equal logits the lower id first): everything above the
    k-th largest value, then the lowest ids of those equal to it."""
    c = _candidates(x)
    if 0 < k < c.size:
        v = x[c]
        kth = np.partition(v, c.size - k)[c.size - k]
        tied = c[v == kth]
        drop = c[v < kth]
        extra = int((v > kth).sum()) + tied.size - k  # tied tokens beyond the k
        x[drop] = -np.inf
        if extra > 0:
            x[tied[tied.size - extra:]] = -np.inf


def _llama_typical(x: np.ndarray, mass: float) -> None:
    c = _candidates(x)
    probs = _softmax(x[c])
    with np.errstate(divide="ignore"):
        logp = np.log(probs)
    entropy = -(probs[probs > 0] * logp[probs > 0]).sum()
    ranked = np.argsort(np.abs(-logp - entropy), kind="stable")
    over = np.flatnonzero(np.cumsum(probs[ranked]) > mass)
    keep = int(over[0]) + 1 if over.size else c.size
    x[c[ranked[keep:]]] = -np.inf


def _llama_top_p(x: np.ndarray, p: float) -> None:
    c = _candidates(x)
    ranked = np.argsort(-x[c], kind="stable")
    reached = np.flatnonzero(np.cumsum(_softmax(x[c])[ranked]) >= p)
    keep = int(reached[0]) + 1 if reached.size else c.size
    x[c[ranked[keep:]]] = -np.inf


def _llama_min_p(x: np.ndarray, min_p: float) -> None:
    c = _candidates(x)
    v = x[c]
    x[c[v < v.max() + math.log(min_p)]] = -np.inf


def _steps(config: SamplingConfig):
    """[(name, step(x) -> x)] in the config's order, the penalties excluded; only the steps
    that are on."""
    c = config
    scale = ("temperature", lambda x: _scaled(x, c.temperature))
    if c.order == "transformers":
        steps = [scale if c.temperature != 1.0 else None,
                 ("top-k", _inplace(_hf_top_k, c.top_k)) if c.top_k else None,
                 ("top-p", _inplace(_hf_top_p, c.top_p)) if c.top_p < 1.0 else None,
                 ("min-p", _inplace(_hf_min_p, c.min_p)) if c.min_p > 0.0 else None,
                 ("typical-p", _inplace(_hf_typical, c.typical_p)) if c.typical_p < 1.0 else None]
    else:
        steps = [("top-k", _inplace(_llama_top_k, c.top_k)) if c.top_k else None,
                 ("typical-p", _inplace(_llama_typical, c.typical_p)) if c.typical_p < 1.0 else None,
                 ("top-p", _inplace(_llama_top_p, c.top_p)) if c.top_p < 1.0 else None,
                 ("min-p", _inplace(_llama_min_p, c.min_p)) if c.min_p > 0.0 else None,
                 scale if c.temperature != 1.0 else None]
    return [s for s in steps if s is not None]


def _inplace(fn, setting):
    def step(x):
        fn(x, setting)
        return x
    return step


def _distribution(x: np.ndarray) -> np.ndarray:
    """softmax over the candidates, zero elsewhere (float64, [V])."""
    probs = np.zeros(x.size)
    c = _candidates(x)
    probs[c] = _softmax(x[c])
    return probs


def _greedy(x: np.ndarray) -> np.ndarray:
    probs = np.zeros(x.size)
    probs[int(np.argmax(x))] = 1.0
    return probs


def filter_steps(logits, config: Optional[SamplingConfig] = None,
                 previous_tokens: Optional[Sequence[int]] = None,
                 generated_tokens: Optional[Sequence[int]] = None,
                 **settings) -> List[Tuple[str, np.ndarray]]:
    """[(step name, probabilities [V] after it)] for each step that is on, in the config's
    order, starting with ("logits", the plain softmax) and, when any is set, ("penalties", ...):
    the explainer's bars after each filter. The last entry is filtered_distribution's."""
    config = (config or SamplingConfig(**settings)).validate()
    logits = _check_logits(logits)
    x = logits.astype(np.float64)
    out = [("logits", _distribution(x))]
    if config.penalized:
        x = _penalized(logits, config, previous_tokens, generated_tokens)
        out.append(("penalties", _distribution(x)))
    if config.greedy:
        out.append(("greedy", _greedy(x)))
        return out
    for name, step in _steps(config):
        x = step(x)
        out.append((name, _distribution(x)))
    return out


def filtered_distribution(logits, config: Optional[SamplingConfig] = None,
                          previous_tokens: Optional[Sequence[int]] = None,
                          generated_tokens: Optional[Sequence[int]] = None,
                          **settings) -> np.ndarray:
    """Probabilities [V] (float64, summing to 1) after the penalties, temperature and the
    filters, in the config's order; greedy (temperature 0) puts all the mass on the argmax.
    ``previous_tokens``: the context the repetition penalty looks at; ``generated_tokens``:
    the tokens sampled so far, which the frequency / presence penalties count."""
    config = (config or SamplingConfig(**settings)).validate()
    logits = _check_logits(logits)
    x = _penalized(logits, config, previous_tokens, generated_tokens)
    if config.greedy:
        return _greedy(x)
    for _, step in _steps(config):
        x = step(x)
    return _distribution(x)


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
    """One sequence's seeded sampler: ``Sampler(SamplingConfig(temperature=0.8, top_k=40),
    seed=1)(logits)``. The same seed and the same logits give the same tokens. It counts the
    tokens it draws (``generated``), which the frequency and presence penalties look at; use a
    new Sampler (or ``reset()``) for a new reply."""

    def __init__(self, config: Optional[SamplingConfig] = None, seed: Optional[int] = None, **settings):
        self.config = (config or SamplingConfig(**settings)).validate()
        self.rng = np.random.default_rng(seed)
        self.generated: List[int] = []

    def reset(self) -> None:
        """Forget the drawn tokens (the generator continues)."""
        self.generated.clear()

    def _counted(self) -> bool:
        c = self.config
        return bool(c.frequency_penalty or c.presence_penalty)

    def __call__(self, logits, previous_tokens: Optional[Sequence[int]] = None) -> int:
        c = self.config
        if c.greedy and not c.penalized:
            token = int(np.argmax(_check_logits(logits)))
        else:
            probs = filtered_distribution(logits, c, previous_tokens,
                                          self.generated if self._counted() else None)
            token = int(np.argmax(probs)) if c.greedy else sample(probs, self.rng)
        self.generated.append(token)
        return token

    def fast(self, logits: np.ndarray, previous_tokens: Optional[Sequence[int]] = None) -> int:
        """The same step in C++ (kernelgpt._C.sample_token): the same token as calling the
        sampler, for the same logits and the same generator state (it draws the one uniform
        number the same way, and none when greedy), with a few microseconds of Python.
        Typical-p and the llama.cpp order run the Python step; the logit bias and the frequency
        / presence penalties are applied in Python (float64, exactly as the Python step does)
        before the C++ filters."""
        c = self.config
        if c.typical_p < 1.0 or c.order != "transformers" or (c.greedy and not c.penalized):
            return self(logits, previous_tokens)  # (greedy: numpy's argmax is the fastest)
        rp, previous = c.repetition_penalty, previous_tokens
        if c.logit_bias or self._counted():
            logits = _penalized(_check_logits(logits), c, previous_tokens,
                                self.generated if self._counted() else None)
            rp, previous = 1.0, None
        u = 0.0 if c.temperature == 0 else self.rng.random()
        token = _C.sample_token(logits, c.temperature, c.top_k, c.top_p, c.min_p, rp,
                                previous if rp != 1.0 else None, u)
        self.generated.append(token)
        return token
