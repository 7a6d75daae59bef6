"""The objectives of fine-tuning, each one step of gradient on a batch, on GPT.forward_backward:

  sft     mean cross-entropy of the assistant tokens;
  dpo     -log sigmoid(beta * [(log p(chosen) - ref) - (log p(rejected) - ref)]) (align.py);
  reward  a scalar head on the last token's hidden state, Bradley-Terry loss
          -log sigmoid(r(chosen) - r(rejected));
  grpo    G samples per prompt, rewards normalized within the group (the advantage A),
          loss -(1/|o|) sum_t [A log p(o_t) - beta KL_t] with KL_t = e^(ref-logp) - (ref-logp) - 1
          (DeepSeekMath's k3 estimator of KL to the reference);
  ppo     a value head on the same backbone, per-token reward -beta (log p - log p_ref) plus the
          task's reward at the last token, GAE advantages, the clipped surrogate
          min(ratio A, clip(ratio, 1 - eps, 1 + eps) A) over several updates of one batch, and
          the value loss (V - return)^2.

A policy gradient is a cross-entropy weighted per token (forward_backward's token_weights:
d(sum_t w_t CE_t) = -sum_t w_t d log p_t), and a head's loss is a loss of the hidden states
(hidden_grad), so every objective runs on the same native forward and backward pass.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List, Sequence

import numpy as np

from ..align import IGNORE
from ..flat_buffer import FlatBuffer
from .data import answer_sequence, pad_batch

__all__ = ["ScalarHead", "sft_step", "dpo_step", "reward_step", "reward_scores", "sample",
           "grpo_step", "ppo_step", "sequence_logprobs"]


class ScalarHead:
    """s(h) = h . w + b on a hidden state h [C]: the reward model's and PPO's value head."""

    def __init__(self, n_embd: int, name: str, seed: int = 0, dtype=np.float32):
        self.name = name
        layout = [(f"{name}.weight", (n_embd,)), (f"{name}.bias", (1,))]
        self.params = FlatBuffer(layout, dtype=dtype)
        self.grads = FlatBuffer(layout, dtype=dtype)
        rng = np.random.default_rng([seed, 17])
        self.w[...] = rng.normal(0, 1 / math.sqrt(n_embd + 1), n_embd)

    @property
    def w(self):
        return self.params[f"{self.name}.weight"]

    @property
    def b(self):
        return self.params[f"{self.name}.bias"]

    def __call__(self, h: np.ndarray) -> np.ndarray:
        return np.asarray(h, np.float64) @ self.w.astype(np.float64) + float(self.b[0])

    def backward(self, h: np.ndarray, d_s: np.ndarray) -> np.ndarray:
        """Adds the head's gradients for d loss / d s = d_s [...] at hidden states h [..., C];
        returns d loss / d h."""
        C = h.shape[-1]
        h2 = np.asarray(h, np.float64).reshape(-1, C)
        d2 = np.asarray(d_s, np.float64).reshape(-1)
        self.grads[f"{self.name}.weight"] += (d2 @ h2).astype(self.grads.data.dtype)
        self.grads[f"{self.name}.bias"] += d2.sum()
        return (d2[:, None] * self.w.astype(np.float64)[None]).reshape(h.shape)


def sequence_logprobs(gpt, seqs, pad_id: int) -> np.ndarray:
    """log p(answer | prompt) of each (prompt, answer), forward passes only."""
    out = []
    for prompt, answer in seqs:
        x, y = pad_batch([answer_sequence(prompt, answer)], pad_id)
        out.append(float(gpt.token_logprobs(x, y).sum()))
    return np.asarray(out, np.float64)


def sft_step(gpt, examples, pad_id) -> Dict[str, float]:
    x, y = pad_batch([(e.ids, e.mask) for e in examples], pad_id)
    loss = gpt.forward_backward(x, y)
    return {"loss": loss, "tokens": int(np.count_nonzero(y != IGNORE))}


def dpo_step(gpt, pairs, refs, beta, pad_id, grads) -> Dict[str, float]:
    """Adds the DPO gradient of the batch of pairs into `grads` (zeroed by the caller): each
    answer's backward runs with grad_scale 1, and the two are combined with the pair's weight
    beta * sigmoid(-z), known only once both log-probabilities are."""
    total = np.zeros_like(grads.data)
    losses, correct, margins = [], 0, []
    for p, (ref_c, ref_r) in zip(pairs, refs):
        grads.zero()
        x, y = pad_batch([answer_sequence(p.prompt, p.chosen)], pad_id)
        logp_c = -gpt.forward_backward(x, y) * len(p.chosen)
        g_c = grads.data.copy()
        grads.zero()
        x, y = pad_batch([answer_sequence(p.prompt, p.rejected)], pad_id)
        logp_r = -gpt.forward_backward(x, y) * len(p.rejected)
        z = beta * ((logp_c - ref_c) - (logp_r - ref_r))
        losses.append(np.logaddexp(0.0, -z))            # -log sigmoid(z)
        coef = beta / (1.0 + math.exp(min(z, 700.0))) / len(pairs)  # beta sigmoid(-z) / batch
        # d loss / d theta = -coef (d logp_c - d logp_r), d logp = -len * d(mean CE)
        total += np.float32(coef * len(p.chosen)) * g_c
        total -= np.float32(coef * len(p.rejected)) * grads.data
        correct += z > 0
        margins.append(z / beta)
    grads.data[...] = total
    return {"loss": float(np.mean(losses)), "pair_accuracy": correct / len(pairs),
            "margin": float(np.mean(margins))}


def _last_positions(seqs) -> np.ndarray:
    return np.asarray([len(ids) - 1 for ids, _ in seqs])


def _full_batch(seqs, pad_id):
    """Inputs [B, T] holding every token of each sequence (no next-token shift), targets all
    IGNORE: a head reads the hidden state of the last token."""
    T = max(len(ids) for ids, _ in seqs)
    T = -(-T // 16) * 16
    x = np.full((len(seqs), T), pad_id, np.int64)
    for r, (ids, _) in enumerate(seqs):
        x[r, :len(ids)] = ids
    return x, np.full_like(x, IGNORE)


def reward_scores(gpt, head: ScalarHead, seqs, pad_id: int, batch: int = 16) -> np.ndarray:
    """The reward model's score of each (ids, mask) sequence."""
    out = []
    for i in range(0, len(seqs), batch):
        part = seqs[i:i + batch]
        x, y = _full_batch(part, pad_id)
        _, H = gpt.token_logprobs(x, y, hidden=True)
        last = _last_positions(part)
        out.append(head(H[np.arange(len(part)), last]))
    return np.concatenate(out) if out else np.zeros(0)


def reward_step(gpt, head: ScalarHead, pairs, pad_id) -> Dict[str, float]:
    seqs = []
    for p in pairs:
        seqs += [answer_sequence(p.prompt, p.chosen), answer_sequence(p.prompt, p.rejected)]
    x, y = _full_batch(seqs, pad_id)
    B, T = x.shape
    last = _last_positions(seqs)
    P = len(pairs)
    stats = {}

    def hidden_grad(h):
        H = h.reshape(B, T, -1)
        h_last = np.asarray(H[np.arange(B), last])
        r = head(h_last)
        diff = r[0::2] - r[1::2]
        loss = float(np.mean(np.logaddexp(0.0, -diff)))
        d_diff = -1.0 / (1.0 + np.exp(np.minimum(diff, 700.0))) / P
        d_r = np.zeros(B)
        d_r[0::2], d_r[1::2] = d_diff, -d_diff
        d_h = np.zeros(H.shape, H.dtype)
        d_h[np.arange(B), last] = head.backward(h_last, d_r)
        stats.update(loss=loss, pair_accuracy=float(np.mean(diff > 0)),
                     margin=float(np.mean(diff)))
        return loss, d_h.reshape(h.shape)

    gpt.forward_backward(x, y, hidden_grad=hidden_grad)
    return stats


# ---- sampling and reinforcement learning --------------------------------------------------------

def sample(model, prompts, n_per_prompt: int, seed: int, max_new_tokens: int,
           temperature: float) -> List[dict]:
    """n_per_prompt replies to each prompt sampled from the model (pure softmax at
    `temperature`, the KV cache, every sequence decoded together): for each, the prompt's
    index, the reply's token ids (with the end-of-turn token when it stopped) and its text."""
    from ..generate import GenerationStats, generate_batch
    from ..sampling import SamplingConfig
    ids = [list(map(int, p.ids)) for p in prompts for _ in range(n_per_prompt)]
    stats = [GenerationStats() for _ in ids]
    seeds = [int(seed) * 100_003 + j for j in range(len(ids))]
    texts = generate_batch(model.gpt, model.tokenizer, ids, max_new_tokens,
                           sampling=SamplingConfig(temperature=temperature), seeds=seeds,
                           stop_tokens=model.stop_tokens, stats=stats)
    out = []
    for j, (text, s) in enumerate(zip(texts, stats)):
        # the reply as sampled: its tokens and the stop token that ended it
        tokens = list(s.new_tokens) + ([s.stop_token] if s.stop_token is not None else [])
        if not tokens:  # (max_new_tokens >= 1: a reply has at least one token)
            raise RuntimeError("sampling returned an empty reply")
        out.append({"prompt": j // n_per_prompt, "ids": np.asarray(tokens, np.int64),
                    "text": text})
    return out


def _rollout(gpt, model, prompts, samples, reward_fn, pad_id, reference):
    """The batch of sampled sequences: inputs, targets, mask, rewards, log p, reference log p,
    hidden states."""
    rewards = np.asarray([float(reward_fn(prompts[s["prompt"]].text, s["text"]))
                          for s in samples])
    if not np.all(np.isfinite(rewards)):
        raise ValueError("the reward function returned NaN or inf")
    seqs = [answer_sequence(prompts[s["prompt"]].ids, s["ids"]) for s in samples]
    x, y = pad_batch(seqs, pad_id)
    mask = y != IGNORE
    logp, H = gpt.token_logprobs(x, y, hidden=True)
    with reference():
        ref = gpt.token_logprobs(x, y)
    return x, y, mask, rewards, logp, ref, H


def grpo_step(gpt, model, prompts, reward_fn, *, group: int, beta: float, pad_id: int,
              seed: int, max_new_tokens: int, temperature: float, reference) -> Dict[str, float]:
    samples = sample(model, prompts, group, seed, max_new_tokens, temperature)
    x, y, mask, rewards, logp, ref, _ = _rollout(gpt, model, prompts, samples, reward_fn,
                                                 pad_id, reference)
    r = rewards.reshape(len(prompts), group)
    adv = ((r - r.mean(axis=1, keepdims=True)) / (r.std(axis=1, keepdims=True) + 1e-4)).reshape(-1)
    n = mask.sum(axis=1)
    diff = np.where(mask, ref - logp, 0.0)
    kl_t = np.exp(diff) - diff - 1.0
    B = len(samples)
    # d loss / d logp_t = -(A - beta (1 - e^(ref - logp))) / (|o| B); loss = sum_t w_t CE_t
    w = (adv[:, None] - beta * (1.0 - np.exp(diff))) * mask / n[:, None] / B
    gpt.forward_backward(x, y, token_weights=w)
    kl = float(np.mean((kl_t * mask).sum(axis=1) / n))
    loss = float(-np.mean(((adv[:, None] * logp - beta * kl_t) * mask).sum(axis=1) / n))
    return {"loss": loss, "reward": float(rewards.mean()), "kl": kl,
            "reply_tokens": float(n.mean())}


def _gae(rewards_t, values, mask, gamma, lam):
    """Generalized advantage estimation over each row's masked (reply) positions."""
    B, T = values.shape
    adv = np.zeros((B, T))
    for b in range(B):
        pos = np.flatnonzero(mask[b])
        running, next_value = 0.0, 0.0
        for t in pos[::-1]:
            delta = rewards_t[b, t] + gamma * next_value - values[b, t]
            running = delta + gamma * lam * running
            adv[b, t] = running
            next_value = values[b, t]
    return adv


def ppo_step(gpt, model, head: ScalarHead, prompts, reward_fn, *, beta: float, pad_id: int,
             seed: int, max_new_tokens: int, temperature: float, reference, update: Callable,
             zero_grads: Callable, epochs: int = 2, clip: float = 0.2, vf_coef: float = 0.1,
             gamma: float = 1.0, lam: float = 0.95) -> Dict[str, float]:
    """One rollout (a reply per prompt), then `epochs` updates on it (each: zero_grads(),
    forward_backward, update())."""
    samples = sample(model, prompts, 1, seed, max_new_tokens, temperature)
    x, y, mask, rewards, old, ref, H = _rollout(gpt, model, prompts, samples, reward_fn,
                                                pad_id, reference)
    values = head(H)
    B, T = x.shape
    kl_t = np.where(mask, old - ref, 0.0)
    r_t = -beta * kl_t
    last = np.asarray([np.flatnonzero(m)[-1] for m in mask])
    r_t[np.arange(B), last] += rewards
    adv = _gae(r_t, values, mask, gamma, lam)
    returns = adv + values
    sel = adv[mask]
    adv = np.where(mask, (adv - sel.mean()) / (sel.std() + 1e-8), 0.0)
    N = max(int(mask.sum()), 1)
    stats = {}
    for epoch in range(epochs):
        ratio = np.ones_like(old) if epoch == 0 else np.exp(
            np.where(mask, gpt.token_logprobs(x, y) - old, 0.0))
        active = np.where(adv >= 0, ratio <= 1 + clip, ratio >= 1 - clip) & mask
        w = ratio * adv * active / N

        def hidden_grad(h):
            Hc = h.reshape(B, T, -1)
            v = head(Hc)
            err = np.where(mask, v - returns, 0.0)
            d_v = 2.0 * vf_coef * err / N
            return vf_coef * float((err ** 2).sum()) / N, head.backward(Hc, d_v).reshape(h.shape)

        zero_grads()
        gpt.forward_backward(x, y, token_weights=w, hidden_grad=hidden_grad)
        stats["clipped"] = float(1.0 - active.sum() / N)
        update()
    return {"loss": float(-(np.minimum(ratio * adv, np.clip(ratio, 1 - clip, 1 + clip) * adv)
                            * mask).sum() / N),
            "reward": float(rewards.mean()), "kl": float(kl_t.sum(axis=1).mean()),
            "value_error": float(np.sqrt((np.where(mask, values - returns, 0.0) ** 2).sum() / N)),
            "clipped": stats["clipped"], "reply_tokens": float(mask.sum(axis=1).mean())}


def pair_sequences(pairs: Sequence) -> List:
    return [s for p in pairs for s in (answer_sequence(p.prompt, p.chosen),
                                       answer_sequence(p.prompt, p.rejected))]
