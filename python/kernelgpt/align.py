"""Alignment: tuning which answers a trained model prefers, from pairs of answers.

Direct Preference Optimization (DPO, Rafailov et al. 2023) needs no reward model. For a prompt
with a chosen and a rejected answer, and a frozen reference copy of the model (its
log-probabilities taken once, before tuning),

    z = beta * [(log p(chosen) - log p_ref(chosen)) - (log p(rejected) - log p_ref(rejected))]
    L = -log sigmoid(z)

so the loss falls as the model raises the chosen answer relative to the rejected one, more
than the reference did; beta sets how far it may move from the reference. The gradient needs
only the model's own backward pass: log p(answer | prompt) is minus the summed cross-entropy
of the answer's tokens, which ``GPT.forward_backward`` differentiates (with the prompt's
targets masked), so

    dL/dθ = -beta * sigmoid(-z) * (d log p(chosen)/dθ - d log p(rejected)/dθ).

`kernelgpt explain alignment` runs this on the shipped Shakespeare model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence, Tuple

import numpy as np

__all__ = ["PreferencePair", "response_batch", "sequence_logprob", "add_logprob_gradient",
           "dpo_loss", "dpo_gradient"]

IGNORE = -100  # the target that cross-entropy skips: the prompt's positions


@dataclass
class PreferencePair:
    """Token ids of a prompt and of two answers to it, the chosen one preferred."""
    prompt: Sequence[int]
    chosen: Sequence[int]
    rejected: Sequence[int]


def response_batch(prompt_ids: Sequence[int], response_ids: Sequence[int]
                   ) -> Tuple[np.ndarray, np.ndarray]:
    """(inputs [1, T], targets [1, T]) for scoring response_ids after prompt_ids: the targets
    of the prompt's positions are IGNORE, so the loss covers the response tokens only."""
    if not prompt_ids or not response_ids:
        raise ValueError("response_batch: the prompt and the response need a token each")
    seq = list(prompt_ids) + list(response_ids)
    x = np.asarray([seq[:-1]])
    y = np.asarray([[IGNORE] * (len(prompt_ids) - 1) + list(response_ids)])
    return x, y


def sequence_logprob(model, prompt_ids: Sequence[int], response_ids: Sequence[int]) -> float:
    """log p(response | prompt) under the model: minus the summed cross-entropy of its tokens."""
    x, y = response_batch(prompt_ids, response_ids)
    return -model.loss(x, y) * len(response_ids)


def add_logprob_gradient(model, prompt_ids: Sequence[int], response_ids: Sequence[int],
                         scale: float) -> None:
    """Adds scale * d log p(response | prompt) / dθ into model.grads. forward_backward
    differentiates the mean cross-entropy of the n response tokens, and log p = -n * that mean."""
    x, y = response_batch(prompt_ids, response_ids)
    model.forward_backward(x, y, grad_scale=-scale * len(response_ids))


def dpo_loss(logp_chosen: float, logp_rejected: float, ref_chosen: float, ref_rejected: float,
             beta: float) -> Tuple[float, float]:
    """(L, w) of one pair: L = -log sigmoid(z), and w = beta * sigmoid(-z), how hard the pair
    still pulls: dL/d log p(chosen) = -w and dL/d log p(rejected) = +w."""
    if not beta > 0:
        raise ValueError(f"dpo_loss: beta must be > 0, got {beta}")
    z = beta * ((logp_chosen - ref_chosen) - (logp_rejected - ref_rejected))
    loss = float(np.logaddexp(0.0, -z))  # -log sigmoid(z) without overflow
    weight = beta / (1.0 + math.exp(z)) if z > -700 else beta
    return loss, weight


def dpo_gradient(model, pair: PreferencePair, ref_chosen: float, ref_rejected: float,
                 beta: float) -> Tuple[float, float]:
    """Zeroes model.grads and fills it with dL/dθ of one pair. Returns (L, margin), margin =
    log p(chosen) - log p(rejected) before the update."""
    logp_c = sequence_logprob(model, pair.prompt, pair.chosen)
    logp_r = sequence_logprob(model, pair.prompt, pair.rejected)
    loss, weight = dpo_loss(logp_c, logp_r, ref_chosen, ref_rejected, beta)
    model.zero_grad()
    add_logprob_gradient(model, pair.prompt, pair.chosen, -weight)
    add_logprob_gradient(model, pair.prompt, pair.rejected, weight)
    return loss, logp_c - logp_r
