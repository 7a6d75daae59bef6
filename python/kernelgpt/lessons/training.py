"""Training a GPT, and aligning it to preferences (DPO)."""
from __future__ import annotations

import math
import time

import numpy as np

from .. import align, ops
from ..data import CharTokenizer, shakespeare_text
from ..generate import generate
from ..model import GPT, GPTConfig
from ..sampling import SamplingConfig
from ._common import _figure, _save, _shipped_model, lesson


# ---- 9. training --------------------------------------------------------------------------------

@lesson("training")
def lesson_training(plot=None, steps: int = 150) -> str:
    """Pre-training in miniature: a tiny GPT learns Shakespeare's letters, loss going down."""
    text = shakespeare_text()[:300_000]
    tok = CharTokenizer.from_text(text)
    data = np.asarray(tok.encode(text), np.int64)
    cfg = GPTConfig(vocab_size=tok.n_vocab, block_size=64, n_layer=2, n_head=4, n_embd=64)
    model = GPT(cfg, seed=0)
    rng = np.random.default_rng(0)
    P = model.params.data
    m, v = np.zeros_like(P), np.zeros_like(P)
    losses = []
    greedy = SamplingConfig(temperature=0.0)
    before = "".join(generate(model, tok, "ROMEO:", 40, greedy))
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        s = rng.integers(0, len(data) - 65, 16)
        x = np.stack([data[i:i + 64] for i in s])
        y = np.stack([data[i + 1:i + 65] for i in s])
        model.zero_grad()
        losses.append(model.forward_backward(x, y))
        ops.clip_grad_norm(model.grads.data, 1.0)
        ops.adamw_step(P, model.grads.data, m, v, step=step, lr=3e-3, weight_decay=0.0)
    dt = time.perf_counter() - t0
    after = "".join(generate(model, tok, "ROMEO:", 40, greedy))
    out = [f"{model.num_parameters():,} parameters, {steps} steps of AdamW on 16 x 64 characters "
           f"({dt:.1f} s)",
           "loss: " + " ".join(f"{losses[i]:.2f}" for i in range(0, steps, max(1, steps // 10))),
           f"   (start ~ ln({tok.n_vocab}) = {math.log(tok.n_vocab):.2f}: a uniform guess)",
           f"before training: ROMEO:{before!r}",
           f"after training:  ROMEO:{after!r}",
           "the shipped model is the same loop, longer: see `kernelgpt train --help`"]
    fig, path = _figure(plot, "training", figsize=(7.5, 4.4))
    if fig:
        ax = fig.subplots()
        ax.plot(range(1, steps + 1), losses, lw=1, label="loss on the step's batch")
        ax.axhline(math.log(tok.n_vocab), color="gray", ls="--", lw=1,
                   label=f"uniform guess: ln {tok.n_vocab} = {math.log(tok.n_vocab):.2f}")
        ax.set(xlabel="step (AdamW, batches of 16 x 64 characters)",
               ylabel="cross-entropy loss (nats / character)",
               ylim=(min(losses) * 0.95, math.log(tok.n_vocab) * 1.04),
               title="loss on each step's batch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.suptitle(f"Pre-training in miniature: a {model.num_parameters():,}-parameter GPT "
                     "learns Shakespeare")
        _save(fig, path, out)
    return "\n".join(out)


# ---- 10. alignment ------------------------------------------------------------------------------

@lesson("alignment")
def lesson_alignment(plot=None, steps: int = 30, n_test: int = 20, model=None) -> str:
    """Alignment on a real model: SmolLM2 fine-tuned with LoRA to answer in the form asked.

    Measured on held-out prompts before and after; about a minute on two cores. Without SmolLM2 in the cache (`kernelgpt fetch smollm2`), the shipped Shakespeare
    model learns a preference with DPO instead (lesson_alignment_dpo).

    LoRA trains a rank-8 change B A beside each frozen weight matrix (2M numbers of 135M);
    the loss is the cross-entropy of the assistant's tokens only."""
    import tempfile

    from .. import align_tasks
    from ..finetune import FinetuneConfig, evaluate, finetune
    from ..io import fetch
    from ..llama import load_model
    if model is None:
        if fetch.cached("smollm2") is None:
            return ("(SmolLM2 is not in the cache: `kernelgpt fetch smollm2` to run this lesson "
                    "on it; meanwhile, preference tuning on the shipped model)\n"
                    + lesson_alignment_dpo(plot))
        model = load_model("smollm2", weights="fp32")
    test = align_tasks.make_tasks("arithmetic", n_test, "test")
    before = evaluate(model, test, max_tokens=12)
    out = [f"task: {n_test} held-out prompts like {test[0].prompt!r} (the answer is checked by "
           "a program)", f"before: accuracy {before['accuracy']:.0%}"]
    with tempfile.TemporaryDirectory() as d:
        data = align_tasks.write_jsonl(
            align_tasks.sft_records(align_tasks.make_tasks("arithmetic", 400, "train")),
            f"{d}/sft.jsonl")
        fc = FinetuneConfig(method="sft", model=model.source, data=str(data), steps=steps,
                            batch_size=8, lora_rank=8, learning_rate=1e-3,
                            warmup_steps=min(5, steps - 1), checkpoint_every=10 ** 6)
        r = finetune(fc, f"{d}/run", model=model, progress=False, plot=False)
    after = evaluate(model, test, max_tokens=12)
    losses = [row["loss"] for row in r["log"]]
    out.append(f"SFT with LoRA: {r['trainable']:,} trainable numbers of "
               f"{model.gpt.num_parameters():,}, {steps} steps of 8 conversations, loss "
               f"{losses[0]:.2f} -> {losses[-1]:.2f}, {r['seconds_per_step']:.2f} s/step")
    out.append(f"after: accuracy {after['accuracy']:.0%}")
    for t, a, b in list(zip(test, before["replies"], after["replies"]))[:4]:
        out.append(f"  {t.prompt!r}: {a.strip()[:40]!r} -> {b.strip()[:40]!r} "
                   f"(expected {t.answer!r})")
    out.append("Instruction tuning changes the form of answers more than what the model "
               "knows: `kernelgpt finetune` adds a reward model, DPO, GRPO and PPO.")
    fig, path = _figure(plot, "alignment", figsize=(11, 4.2))
    if fig:
        ax, ax2 = fig.subplots(1, 2)
        ax.plot(range(1, len(losses) + 1), losses, "o-", ms=3)
        ax.set(xlabel="SFT step", ylabel="cross-entropy of the assistant tokens (nats)",
               title="loss")
        ax.grid(alpha=0.3)
        ax2.bar([0, 1], [before["accuracy"], after["accuracy"]], color=["gray", "tab:blue"])
        ax2.set_xticks([0, 1], ["before", f"after {steps} steps"])
        ax2.set(ylim=(0, 1), xlabel="model", ylabel="held-out accuracy",
                title="answers exactly right")
        fig.suptitle("Supervised fine-tuning of SmolLM2-135M-Instruct with LoRA")
        _save(fig, path, out)
    return "\n".join(out)


def lesson_alignment_dpo(plot=None, steps: int = 20, beta: float = 0.5) -> str:
    """Preference tuning (DPO): the shipped model learns to prefer one answer over another.

    DPO (Rafailov et al. 2023) needs no reward model: the same idea as RLHF's reward, in one loss
        L = -log sigmoid(beta * [(log p(chosen) - log p_ref(chosen)) - (same for rejected)])."""
    model, tok = _shipped_model()
    pair = align.PreferencePair(tok.encode("ROMEO:\n"), tok.encode("Good morrow, sweet friend."),
                                tok.encode("Away, thou villain!"))
    ref_c = align.sequence_logprob(model, pair.prompt, pair.chosen)
    ref_r = align.sequence_logprob(model, pair.prompt, pair.rejected)
    P = model.params.data
    m, v = np.zeros_like(P), np.zeros_like(P)
    out = [f"prompt 'ROMEO:\\n'; chosen {tok.decode(pair.chosen)!r}, rejected "
           f"{tok.decode(pair.rejected)!r}",
           f"before: log p(chosen) = {ref_c:.2f}, log p(rejected) = {ref_r:.2f}"]
    margins = []
    for step in range(1, steps + 1):
        _, margin = align.dpo_gradient(model, pair, ref_c, ref_r, beta)
        margins.append(margin)
        ops.adamw_step(P, model.grads.data, m, v, step=step, lr=1e-4, weight_decay=0.0)
    lc = align.sequence_logprob(model, pair.prompt, pair.chosen)
    lr_ = align.sequence_logprob(model, pair.prompt, pair.rejected)
    margins.append(lc - lr_)
    out.append(f"after {steps} DPO steps: log p(chosen) = {lc:.2f}, log p(rejected) = {lr_:.2f}")
    out.append("margin log p(chosen) - log p(rejected): "
               + " -> ".join(f"{x:.1f}" for x in margins[::max(1, steps // 5)]))
    out.append("Chat models are tuned this way (and with RLHF) on human preferences; their "
               "knowledge barely changes, which answers they prefer does.")
    fig, path = _figure(plot, "alignment", figsize=(11, 4.2))
    if fig:
        ax, ax2 = fig.subplots(1, 2)
        ax.plot(range(len(margins)), margins, "o-", ms=3)
        ax.set(xlabel="DPO step", ylabel="log p(chosen) − log p(rejected)  (nats)",
               title="margin of the preferred answer")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        pos = np.arange(2)
        ax2.bar(pos - 0.2, [ref_c, ref_r], 0.4, label="before (reference model)")
        ax2.bar(pos + 0.2, [lc, lr_], 0.4, label=f"after {steps} DPO steps")
        ax2.set_xticks(pos, [f"chosen\n{tok.decode(pair.chosen)!r}",
                             f"rejected\n{tok.decode(pair.rejected)!r}"])
        ax2.set(xlabel="answer", ylabel="log p(answer | 'ROMEO:')  (nats)",
                title="log-probability of each answer")
        ax2.axhline(0, color="gray", lw=0.5)
        ax2.grid(axis="y", alpha=0.3)
        ax2.legend(fontsize=8, loc="lower left")
        fig.suptitle(f"Preference tuning (DPO, beta = {beta}) of the shipped model")
        _save(fig, path, out)
    return "\n".join(out)
