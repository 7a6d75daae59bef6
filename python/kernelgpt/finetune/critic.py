"""The internal critic (constitutional AI / RLAIF): preference pairs labelled by the model
itself against written principles, instead of by people.

For each prompt the model samples two replies; then, as a judge, it reads the principles, the
question and both replies and is asked which follows the principles better. Its label is the
log-probability of answering "A" minus that of "B", taken with the replies in both orders
(so a preference for the first position cancels). Where the task also has a verifiable
reward, the agreement of the judge's labels with it is measured; the pairs go to DPO.

    kernelgpt finetune critic --task arithmetic --out runs/critic     # writes pairs.jsonl
    kernelgpt finetune dpo --data runs/critic/pairs.jsonl --init runs/sft
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import numpy as np

from .objectives import sample

__all__ = ["PRINCIPLES", "judge", "critic_pairs"]

PRINCIPLES = ("1. Answer exactly what was asked, correctly.\n"
              "2. Keep to the form the question asks for (for example only the number, or one "
              "word), with nothing added.\n"
              "3. Prefer a short, plain answer to a long one.")


def _choice_ids(model) -> Sequence[int]:
    tok = model.tokenizer
    ids = []
    for letter in ("A", "B"):
        enc = tok.encode(letter)
        if len(enc) != 1:
            raise ValueError(f"the judge needs {letter!r} to be one token of the vocabulary")
        ids.append(enc[0])
    return ids


def _preference(model, question: str, first: str, second: str, principles: str) -> float:
    msg = (f"Principles:\n{principles}\n\nQuestion: {question}\n\nReply A: {first}\n"
           f"Reply B: {second}\n\nWhich reply follows the principles better? Answer with the "
           "letter A or B only.")
    ids = model.encode_chat([{"role": "user", "content": msg}], add_generation_prompt=True)
    logits = np.asarray(model.gpt.logits(np.asarray([ids])), np.float64)[0, -1]
    a, b = _choice_ids(model)
    logp = logits - (np.log(np.exp(logits - logits.max()).sum()) + logits.max())
    return float(logp[a] - logp[b])


def judge(model, question: str, reply_1: str, reply_2: str,
          principles: str = PRINCIPLES) -> float:
    """> 0 when the model judges reply_1 better, < 0 for reply_2: the mean of its log-odds of
    "A" over "B" with reply_1 shown as A, and minus that with reply_1 shown as B."""
    return 0.5 * (_preference(model, question, reply_1, reply_2, principles)
                  - _preference(model, question, reply_2, reply_1, principles))


def critic_pairs(model, prompts, *, seed: int = 0, max_new_tokens: int = 24,
                 temperature: float = 1.0, principles: str = PRINCIPLES,
                 reward_fn: Optional[Callable[[str, str], float]] = None) -> dict:
    """Two sampled replies per prompt (data.Prompt), labelled by the model as judge. Returns
    {"records": [{"prompt", "chosen", "rejected", "judge"}...] (pairs with two different
    replies), "agreement": the fraction of pairs, among those the verifiable reward_fn tells
    apart, where the judge picked the one it rewards more (None without reward_fn),
    "decided": how many such pairs there were}."""
    samples = sample(model, prompts, 2, seed, max_new_tokens, temperature)
    records: List[dict] = []
    agree = decided = 0
    for i, p in enumerate(prompts):
        r1, r2 = samples[2 * i]["text"].strip(), samples[2 * i + 1]["text"].strip()
        if not r1 or not r2 or r1 == r2:
            continue
        score = judge(model, p.text, r1, r2, principles)
        chosen, rejected = (r1, r2) if score >= 0 else (r2, r1)
        records.append({"prompt": p.text, "chosen": chosen, "rejected": rejected,
                        "judge": round(abs(score), 4)})
        if reward_fn is not None:
            g1, g2 = float(reward_fn(p.text, r1)), float(reward_fn(p.text, r2))
            if g1 != g2:
                decided += 1
                agree += (g1 > g2) == (score >= 0)
    return {"records": records, "decided": decided,
            "agreement": agree / decided if decided else None}
