"""Sampler semantics: greedy, temperature, top-k, top-p, min-p, repetition penalty, seeding,
and the errors for invalid settings and NaN/inf logits."""
import numpy as np
import pytest

from kernelgpt.sampling import Sampler, SamplingConfig, filtered_distribution, top_candidates

LOGITS = np.log(np.array([0.5, 0.2, 0.15, 0.1, 0.05]))  # probabilities at temperature 1


def test_plain_distribution_is_softmax():
    p = filtered_distribution(LOGITS)
    np.testing.assert_allclose(p, [0.5, 0.2, 0.15, 0.1, 0.05], rtol=1e-12)


def test_greedy():
    s = Sampler(temperature=0)
    assert all(s(LOGITS + np.random.default_rng(i).normal(0, 1e-3, 5)) == 0 for i in range(5))
    assert s(np.array([1.0, 3.0, 2.0], np.float32)) == 1


def test_temperature_sharpens_and_flattens():
    cold = filtered_distribution(LOGITS, temperature=0.5)
    hot = filtered_distribution(LOGITS, temperature=2.0)
    expected_cold = np.array([0.5, 0.2, 0.15, 0.1, 0.05]) ** 2
    np.testing.assert_allclose(cold, expected_cold / expected_cold.sum(), rtol=1e-12)
    assert cold[0] > 0.5 > hot[0]


def test_top_k():
    p = filtered_distribution(LOGITS, top_k=2)
    np.testing.assert_allclose(p, [0.5 / 0.7, 0.2 / 0.7, 0, 0, 0], rtol=1e-12)
    assert np.count_nonzero(filtered_distribution(LOGITS, top_k=10)) == 5


def test_top_p_keeps_the_token_that_crosses_the_threshold():
    p = filtered_distribution(LOGITS, top_p=0.6)  # 0.5 < 0.6 <= 0.7
    np.testing.assert_allclose(p, [0.5 / 0.7, 0.2 / 0.7, 0, 0, 0], rtol=1e-12)
    p = filtered_distribution(LOGITS, top_p=0.5)
    np.testing.assert_allclose(p, [1, 0, 0, 0, 0])


def test_min_p():
    p = filtered_distribution(LOGITS, min_p=0.3)  # keeps p >= 0.15
    np.testing.assert_allclose(p, np.array([0.5, 0.2, 0.15, 0, 0]) / 0.85, rtol=1e-12)


def test_repetition_penalty():
    logits = np.array([2.0, -1.0, 1.0])
    p = filtered_distribution(logits, repetition_penalty=2.0, previous_tokens=[0, 1])
    e = np.exp([1.0, -2.0, 1.0])
    np.testing.assert_allclose(p, e / e.sum(), rtol=1e-12)


def test_seeded_and_reproducible():
    cfg = SamplingConfig(temperature=1.0, top_k=4)
    a = [Sampler(cfg, seed=7)(LOGITS) for _ in range(1)]
    s1, s2 = Sampler(cfg, seed=7), Sampler(cfg, seed=7)
    seq1 = [s1(LOGITS) for _ in range(50)]
    seq2 = [s2(LOGITS) for _ in range(50)]
    assert seq1 == seq2 and a[0] == seq1[0]
    assert set(seq1) <= {0, 1, 2, 3}


def test_sampling_frequencies_match_distribution():
    s = Sampler(seed=0)
    counts = np.bincount([s(LOGITS) for _ in range(20000)], minlength=5) / 20000
    np.testing.assert_allclose(counts, [0.5, 0.2, 0.15, 0.1, 0.05], atol=0.015)


def test_masked_minus_inf_allowed():
    logits = np.array([-np.inf, 0.0, -np.inf])
    assert Sampler(seed=1)(logits) == 1
    np.testing.assert_allclose(filtered_distribution(logits), [0, 1, 0])


def test_top_candidates():
    cands = top_candidates(LOGITS, n=3)
    assert [c[0] for c in cands] == [0, 1, 2]
    assert abs(cands[0][2] - 0.5) < 1e-12


@pytest.mark.parametrize("settings,match", [
    (dict(temperature=-0.1), "temperature"), (dict(temperature=float("nan")), "temperature"),
    (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"), (dict(top_k=-1), "top_k"),
    (dict(top_k=2.5), "top_k"), (dict(min_p=-0.1), "min_p"), (dict(min_p=2), "min_p"),
    (dict(repetition_penalty=0), "repetition_penalty"),
])
def test_invalid_settings(settings, match):
    with pytest.raises(ValueError, match=match):
        SamplingConfig(**settings)


@pytest.mark.parametrize("bad,match", [
    (np.array([0.0, np.nan]), "NaN"), (np.array([0.0, np.inf]), r"\+inf"),
    (np.array([-np.inf, -np.inf]), "all -inf"), (np.zeros((2, 2)), "1-D"), (np.zeros(0), "1-D"),
])
def test_bad_logits(bad, match):
    with pytest.raises(ValueError, match=match):
        Sampler(seed=0)(bad)
    with pytest.raises(ValueError, match=match):
        Sampler(temperature=0)(bad)
