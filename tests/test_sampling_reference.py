"""The sampler against its references (issue 25): transformers' own logits processors for the
default order, a re-implementation of llama.cpp's sampler chain (written from llama.cpp's
src/llama-sampling.cpp, candidate list by candidate list) for order="llama.cpp", and the OpenAI
API's documented penalty formula. Every combination of the filters on random logits of several
shapes: the same kept tokens and probabilities within 1e-6."""
import itertools
import math

import numpy as np
import pytest

from kernelgpt.sampling import Sampler, SamplingConfig, filter_steps, filtered_distribution

V = 2000


def random_logits(rng, kind, n=V):
    if kind == "normal":
        return rng.normal(0, 3, n)
    if kind == "peaked":
        x = rng.normal(0, 1, n)
        x[rng.integers(0, n, 3)] += 12
        return x
    if kind == "flat":
        return np.zeros(n) + 0.25
    if kind == "ties":  # few distinct values: ties at every boundary
        return rng.integers(-4, 5, n).astype(np.float64) * 0.75
    if kind == "masked":
        x = rng.normal(0, 2, n)
        x[rng.random(n) < 0.6] = -np.inf
        return x
    raise ValueError(kind)


KINDS = ["normal", "peaked", "flat", "ties", "masked"]
TEMPERATURES = [1.0, 0.7, 1.6]
TOP_K = [0, 1, 7, 50]
TOP_P = [1.0, 0.6, 0.95]
MIN_P = [0.0, 0.05]
TYPICAL_P = [1.0, 0.5, 0.9]
REPETITION = [1.0, 1.3]
GRID = list(itertools.product(TEMPERATURES, TOP_K, TOP_P, MIN_P, TYPICAL_P, REPETITION))


def assert_same(got, expected, logits, what):
    """The same kept tokens and probabilities within 1e-6. Tokens tied (equal logits) at a
    boundary may be swapped: torch.sort is not stable on long vectors, so transformers itself
    keeps either; then the kept counts and the sorted probabilities must still agree."""
    kept, want = got > 0, expected > 0
    if not np.array_equal(kept, want):
        differ = np.flatnonzero(kept != want)
        assert kept.sum() == want.sum(), (what, "kept", kept.sum(), want.sum())
        values = np.unique(logits[differ])
        assert values.size == 1, (what, "kept tokens differ beyond a tie", differ[:10])
        np.testing.assert_allclose(np.sort(got), np.sort(expected), rtol=0, atol=1e-6,
                                   err_msg=str(what))
        return
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6, err_msg=str(what))


# ---- transformers ------------------------------------------------------------------------

def transformers_distribution(logits, previous, t, k, p, mp, typ, rp):
    torch = pytest.importorskip("torch")
    lp = pytest.importorskip("transformers.generation.logits_process")
    processors = []  # transformers' _get_logits_processor order, with do_sample=True
    if rp != 1.0:
        processors.append(lp.RepetitionPenaltyLogitsProcessor(penalty=rp))
    if t != 1.0:
        processors.append(lp.TemperatureLogitsWarper(t))
    if k:
        processors.append(lp.TopKLogitsWarper(top_k=k))
    if p < 1.0:
        processors.append(lp.TopPLogitsWarper(top_p=p))
    if mp:
        processors.append(lp.MinPLogitsWarper(min_p=mp))
    if typ < 1.0:
        processors.append(lp.TypicalLogitsWarper(mass=typ))
    scores = torch.tensor(logits, dtype=torch.float64)[None]
    ids = torch.tensor([previous], dtype=torch.long)
    for proc in processors:
        scores = proc(ids, scores)
    return torch.softmax(scores, dim=-1)[0].numpy()


@pytest.mark.parametrize("kind", KINDS)
def test_transformers_order_matches_transformers(kind):
    pytest.importorskip("transformers")
    rng = np.random.default_rng(KINDS.index(kind))
    logits = random_logits(rng, kind)
    previous = [int(i) for i in rng.integers(0, V, 30)]
    for settings in GRID:
        t, k, p, mp, typ, rp = settings
        cfg = SamplingConfig(temperature=t, top_k=k, top_p=p, min_p=mp, typical_p=typ,
                             repetition_penalty=rp)
        got = filtered_distribution(logits, cfg, previous)
        expected = transformers_distribution(logits, previous, *settings)
        assert_same(got, expected, logits, (kind, settings))


def test_top_k_then_top_p_renormalises():
    """The case the issue found: top-p measured on what top-k left, renormalised."""
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 1, 2000)
    got = filtered_distribution(logits, top_k=7, top_p=0.6)
    top7 = np.sort(logits)[::-1][:7]
    p7 = np.exp(top7 - top7.max())
    p7 /= p7.sum()
    n = int(np.searchsorted(np.cumsum(p7), 0.6)) + 1
    assert (got > 0).sum() == n < 7


# ---- llama.cpp ---------------------------------------------------------------------------

def llama_cpp_distribution(logits, t, k, p, mp, typ):
    """llama.cpp's chain (top-k, typical, top-p, min-p, temperature, dist) on a candidate list
    [(id, logit)], each sampler as llama-sampling.cpp writes it (with a stable sort)."""
    cur = [(i, float(v)) for i, v in enumerate(logits) if v > -math.inf]

    def softmax(cands):
        cands = sorted(cands, key=lambda c: -c[1])
        m = cands[0][1]
        e = [math.exp(c[1] - m) for c in cands]
        s = sum(e)
        return cands, [x / s for x in e]

    if k > 0:
        cur = sorted(cur, key=lambda c: -c[1])[:min(k, len(cur))]
    if typ < 1.0:
        cur, probs = softmax(cur)
        entropy = -sum(q * math.log(q) for q in probs if q > 0)
        shifted = [abs(-math.log(q) - entropy) if q > 0 else math.inf for q in probs]
        order = sorted(range(len(cur)), key=lambda i: shifted[i])
        cum, last = 0.0, len(order)
        for n, i in enumerate(order):
            cum += probs[i]
            if cum > typ:
                last = n + 1
                break
        cur = [cur[i] for i in order[:last]]
    if p < 1.0:
        cur, probs = softmax(cur)
        cum, last = 0.0, len(cur)
        for n, q in enumerate(probs):
            cum += q
            if cum >= p:
                last = n + 1
                break
        cur = cur[:last]
    if mp > 0.0:
        top = max(c[1] for c in cur)
        cur = [c for c in cur if c[1] >= top + math.log(mp)]
    cur = [(i, v / t) for i, v in cur]
    cur, probs = softmax(cur)
    out = np.zeros(len(logits))
    for (i, _), q in zip(cur, probs):
        out[i] = q
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_llama_cpp_order_matches_its_chain(kind):
    rng = np.random.default_rng(10 + KINDS.index(kind))
    logits = random_logits(rng, kind, 300)
    for t, k, p, mp, typ, _ in GRID[::2]:
        cfg = SamplingConfig(temperature=t, top_k=k, top_p=p, min_p=mp, typical_p=typ,
                             order="llama.cpp")
        got = filtered_distribution(logits, cfg)
        expected = llama_cpp_distribution(logits, t, k, p, mp, typ)
        assert_same(got, expected, logits, (kind, t, k, p, mp, typ))


def test_the_two_orders_differ_where_temperature_matters():
    logits = np.log(np.array([0.4, 0.3, 0.2, 0.1]))
    hf = filtered_distribution(logits, temperature=3.0, top_p=0.7)
    cpp = filtered_distribution(logits, temperature=3.0, top_p=0.7, order="llama.cpp")
    # llama.cpp's top-p sees the temperature-1 distribution: 0.4 + 0.3 >= 0.7
    assert (cpp > 0).sum() == 2 and (hf > 0).sum() == 3


# ---- the OpenAI API's penalties and logit_bias ---------------------------------------------

def test_frequency_and_presence_penalties_follow_the_openai_formula():
    rng = np.random.default_rng(5)
    logits = rng.normal(0, 2, 500)
    generated = [int(i) for i in rng.integers(0, 40, 60)]
    for f, pres in [(0.5, 0.0), (0.0, 1.5), (-0.7, 0.3), (2.0, 2.0)]:
        counts = np.bincount(generated, minlength=500)
        mu = logits - counts * f - (counts > 0) * pres  # mu[j] - c[j]*a_f - [c[j] > 0]*a_p
        expected = np.exp(mu - mu.max())
        expected /= expected.sum()
        got = filtered_distribution(logits, frequency_penalty=f, presence_penalty=pres,
                                    generated_tokens=generated)
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-300)


def test_penalties_apply_in_order_bias_repetition_frequency():
    logits = np.array([2.0, -1.0, 0.5, 0.0])
    cfg = SamplingConfig(logit_bias={0: 1.0, 1: -0.5}, repetition_penalty=2.0,
                         frequency_penalty=0.25, presence_penalty=0.1)
    steps = dict(filter_steps(logits, cfg, previous_tokens=[0, 1], generated_tokens=[0, 0, 2]))
    x = np.array([(2.0 + 1.0) / 2 - 2 * 0.25 - 0.1, (-1.0 - 0.5) * 2, 0.5 - 0.25 - 0.1, 0.0])
    e = np.exp(x - x.max())
    np.testing.assert_allclose(steps["penalties"], e / e.sum(), rtol=1e-12)


def test_logit_bias_bans_forces_and_shifts():
    logits = np.array([3.0, 1.0, 0.0, -1.0, 2.0])
    p = filtered_distribution(logits, logit_bias={0: -100})
    assert p[0] == 0 and abs(p.sum() - 1) < 1e-12
    p = filtered_distribution(logits, logit_bias={"3": 100})  # JSON's string keys
    assert p[3] == 1.0
    p = filtered_distribution(logits, logit_bias={2: 100, 3: 100})
    assert set(np.flatnonzero(p)) == {2, 3} and p[2] > p[3]
    p = filtered_distribution(logits, logit_bias={1: 0.5})
    e = np.exp(logits + np.array([0, 0.5, 0, 0, 0]))
    np.testing.assert_allclose(p, e / e.sum(), rtol=1e-12)
    assert Sampler(temperature=0, logit_bias={4: 1.5})(logits) == 4


@pytest.mark.parametrize("bias, message", [
    ({-1: 1.0}, "token ids"), ({"x": 1.0}, "token ids"), ({1: float("nan")}, "finite"),
    ([1, 2], "mapping"), ({True: 1.0}, "token ids")])
def test_logit_bias_bad_input(bias, message):
    with pytest.raises(ValueError, match=message):
        SamplingConfig(logit_bias=bias)


def test_logit_bias_out_of_range_or_banning_everything():
    with pytest.raises(ValueError, match="out of range"):
        filtered_distribution(np.zeros(3), logit_bias={3: 1.0})
    with pytest.raises(ValueError, match="no token"):
        filtered_distribution(np.zeros(2), logit_bias={0: -100, 1: -100})


@pytest.mark.parametrize("field, value", [
    ("typical_p", 0.0), ("typical_p", 1.5), ("frequency_penalty", float("inf")),
    ("presence_penalty", "1"), ("order", "vllm")])
def test_bad_settings(field, value):
    with pytest.raises(ValueError, match=field.split("_")[0] if field != "order" else "order"):
        SamplingConfig(**{field: value})


# ---- the Sampler: counts, the fast path, the same text alone or in a batch ----------------------

@pytest.mark.parametrize("settings", [
    dict(temperature=0.9, frequency_penalty=0.8, presence_penalty=0.4),
    dict(temperature=0.8, top_k=20, top_p=0.9, logit_bias={5: 2.0, 9: -100}),
    dict(temperature=1.1, typical_p=0.7, repetition_penalty=1.2),
    dict(temperature=0.7, top_k=40, top_p=0.95, min_p=0.05, order="llama.cpp"),
    dict(temperature=0, frequency_penalty=1.0),
])
def test_fast_path_equals_python_with_every_setting(settings):
    rng = np.random.default_rng(11)
    cfg = SamplingConfig(**settings)
    python, native = Sampler(cfg, seed=4), Sampler(cfg, seed=4)
    context = [int(i) for i in rng.integers(0, 300, 10)]
    for step in range(60):
        logits = rng.normal(0, 2, 300).astype(np.float32)
        a = python(logits, context)
        b = native.fast(logits, context)
        assert a == b, (settings, step)
        context.append(a)
    assert python.generated == native.generated == context[10:]


def test_frequency_penalty_counts_what_the_sampler_drew():
    logits = np.zeros(4)
    logits[0] = 1.0
    s = Sampler(temperature=0, frequency_penalty=0.6)
    drawn = [s(logits) for _ in range(4)]
    # token 0: 1.0, then 1.0 - 0.6 = 0.4 (still the largest), then -0.2: the others' turn
    assert drawn == [0, 0, 1, 2]
    s.reset()
    assert s(logits) == 0


@pytest.mark.parametrize("kind", KINDS)
def test_native_step_equals_python_at_top_p_boundaries(kind):
    """The C++ step walks top-p from the most likely token and falls back to the ascending form
    near the boundary (flat and tied logits land there): the same distribution, bit for bit, as
    the numpy step, so the same token for every uniform number."""
    from kernelgpt import _C
    from kernelgpt.sampling import sample
    rng = np.random.default_rng(20 + KINDS.index(kind))
    logits = random_logits(rng, kind)

    class FixedU:
        def __init__(self, u):
            self.u = u

        def random(self):
            return self.u

    for t, k, p, mp in itertools.product([1.0, 0.5], [0, 50], [0.5, 0.9, 0.95, 0.999], [0, 0.02]):
        cfg = SamplingConfig(temperature=t, top_k=k, top_p=p, min_p=mp)
        probs = filtered_distribution(logits, cfg)
        cum = np.cumsum(probs)
        us = list(rng.random(10)) + [min(float(c / cum[-1]), float(np.nextafter(1.0, 0)))
                                     for c in cum[np.flatnonzero(probs)[:20]]]
        for u in us:
            got = _C.sample_token(logits, t, k, p, mp, 1.0, None, u)
            assert got == sample(probs, FixedU(u)), (kind, t, k, p, mp, u)
