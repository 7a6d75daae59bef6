"""`kernelgpt finetune sft|dpo|eval|export`: tune a pretrained model (kernelgpt.finetune does
the work), measure it on a verifiable task, save it for llama.cpp or transformers."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from ._common import add_threads_argument, positive_int

_TRAINING = ("sft", "reward", "dpo", "grpo", "ppo")


def add_arguments(p) -> None:
    p.description = (p.description or "") + (
        "\n\nsft: supervised fine-tuning on conversations (JSONL {\"messages\": [...]}, the loss "
        "on the assistant turns); reward: a reward model (a scalar head, Bradley-Terry) on "
        "pairs (JSONL {\"prompt\", \"chosen\", \"rejected\"}); dpo: direct preference "
        "optimization on pairs against the starting model; grpo / ppo: reinforcement learning "
        "on prompts (JSONL {\"prompt\"}) with a reward function (--reward module:function), "
        "a KL penalty to the starting model; eval: greedy accuracy on a task's held-out "
        "prompts (with --run of a reward model: its accuracy on held-out pairs); export: the "
        "tuned model as GGUF or as a transformers checkpoint; critic: preference pairs "
        "labelled by the model itself against written principles (RLAIF), written to "
        "OUT/pairs.jsonl for dpo, with their agreement with the task's verifiable reward. "
        "--task builds the data from a "
        "verifiable task (kernelgpt.align_tasks) instead of --data, and GRPO/PPO's reward "
        "from it.")
    p.add_argument("action", choices=list(_TRAINING) + ["critic", "eval", "export"],
                   help="what to do: train with a method (sft, reward, dpo, grpo, ppo), label "
                        "pairs (critic), measure (eval) or save (export)")
    p.add_argument("--model", default="smollm2",
                   help="the base model: a Llama GGUF file or a known name (loaded as fp32)")
    p.add_argument("--data", default=None, metavar="JSONL", help="the training data")
    p.add_argument("--task", default=None, choices=["arithmetic", "capitals", "mixed"],
                   help="build the data (training split) from this task instead of --data")
    p.add_argument("--n-train", type=positive_int, default=400, metavar="N",
                   help="examples built with --task")
    p.add_argument("--replay", type=int, default=0, metavar="N",
                   help="sft with --task: add N general conversations answered by the model "
                        "itself (about a fifth of the data), so it keeps answering ordinary "
                        "requests as before")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="the run directory (default: runs/finetune-<action>)")
    p.add_argument("--run", default=None, metavar="DIR",
                   help="eval / export: the finetune run to load (default: the base model)")
    p.add_argument("--init", default=None, metavar="DIR",
                   help="start from this finetune run's result (e.g. DPO after SFT)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--stop-after", type=positive_int, default=None, metavar="N",
                   help="stop after N steps of this invocation, with a checkpoint")
    p.add_argument("--lora-rank", type=int, default=8, metavar="R",
                   help="LoRA rank; 0 = full fine-tuning of every weight")
    p.add_argument("--lora-alpha", type=float, default=16.0, help="LoRA scale alpha (W + alpha/r BA)")
    p.add_argument("--lora-targets", default="all",
                   help="layers with adapters: all, attn, mlp, qkv, o, fc, down (comma-separated)")
    p.add_argument("--steps", type=positive_int, default=100, help="optimizer steps")
    p.add_argument("--batch-size", type=positive_int, default=8,
                   help="examples (SFT) or pairs (DPO) per step")
    p.add_argument("--lr", type=float, default=None,
                   help="peak learning rate (default: 1e-3 with LoRA, 2e-5 full; DPO: a fifth)")
    p.add_argument("--warmup", type=int, default=10, help="warmup steps")
    p.add_argument("--beta", type=float, default=None,
                   help="DPO's beta (default 0.1); GRPO/PPO's KL coefficient (default 0.04)")
    p.add_argument("--reward", default=None, metavar="MODULE:FUNCTION",
                   help="grpo / ppo: reward(prompt, reply) -> float (a module or a file.py; "
                        "default with --task: kernelgpt.align_tasks:task_reward)")
    p.add_argument("--group", type=positive_int, default=4, help="grpo: samples per prompt")
    p.add_argument("--max-new-tokens", type=positive_int, default=24,
                   help="grpo / ppo: longest sampled reply")
    p.add_argument("--temperature", type=float, default=1.0, help="grpo / ppo: sampling")
    p.add_argument("--ppo-epochs", type=positive_int, default=2,
                   help="ppo: updates per batch of samples")
    p.add_argument("--max-len", type=positive_int, default=512,
                   help="longest example in tokens (longer ones are an error)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "auto"],
                   help="bf16: every matrix product in bf16 (fp32 master weights, gradients "
                        "and AdamW), about 1.6x faster where the CPU has AVX512-BF16; auto: "
                        "bf16 there, else fp32")
    p.add_argument("--seed", type=int, default=0, help="adapter init and example order")
    p.add_argument("--checkpoint-every", type=positive_int, default=50, metavar="N",
                   help="write a checkpoint every N steps (and at the end)")
    p.add_argument("--eval", type=int, default=0, metavar="N",
                   help="with --task: greedy accuracy on N held-out prompts before and after")
    p.add_argument("--n", type=positive_int, default=100, help="eval: held-out prompts")
    p.add_argument("--to", default=None, metavar="PATH",
                   help="export: a .gguf file, or a directory for the transformers checkpoint")
    p.add_argument("--dtype", default="q8_0", choices=["f32", "bf16", "q8_0"],
                   help="export: the GGUF's weight type")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_threads_argument(p)


def _data(args, out: Path, model=None) -> str:
    from .. import align_tasks
    if args.data and args.task:
        raise ValueError("give --data or --task, not both")
    if args.data:
        return args.data
    if not args.task:
        raise ValueError(f"finetune {args.action}: no data: give --data FILE.jsonl or --task")
    tasks = align_tasks.make_tasks(args.task, args.n_train, "train", seed=args.seed)
    if args.action == "sft":
        records = align_tasks.sft_records(tasks)
        if args.replay and model is not None:  # the model's own general answers, repeated
            replay = align_tasks.replay_records(model, args.replay)
            records += replay * max(1, len(records) // (4 * max(1, len(replay))))
    elif args.action in ("reward", "dpo"):
        records = align_tasks.preference_records(tasks, seed=args.seed)
    else:  # grpo, ppo, critic: prompts
        records = align_tasks.prompt_records(tasks)
    path = out / f"{args.action}-{args.task}.jsonl"
    if not path.exists():
        align_tasks.write_jsonl(records, path)
    return str(path)


def _report(label, result) -> None:
    print(f"{label}: accuracy {result['accuracy']:.1%}, mean score "
          f"{result['mean_score']:.3f} on {result['n']} held-out prompts")


def main(args) -> int:
    from .. import align_tasks
    from ..finetune import FinetuneConfig, evaluate, finetune, load_tuned
    from ..llama import load_model
    if args.action in ("eval", "export"):
        if args.action == "eval" and not args.task:
            raise ValueError("finetune eval: --task is required")
        if args.action == "eval" and args.run and _is_reward_run(args.run):
            return _eval_reward_model(args)
        model = load_tuned(args.run) if args.run else load_model(args.model, weights="fp32")
        if args.action == "eval":
            tasks = align_tasks.make_tasks(args.task, args.n, "test", seed=args.seed)
            result = evaluate(model, tasks)
            _report(args.run or args.model, result)
            for t, r in list(zip(tasks, result["replies"]))[:5]:
                print(f"  {t.prompt!r} -> {r!r} (expected {t.answer!r})")
            return 0
        if not args.to:
            raise ValueError("finetune export: --to PATH is required (.gguf, or a directory)")
        from ..export import export_gguf, export_hf
        if args.to.endswith(".gguf"):
            path = export_gguf(model, args.to, args.dtype)
        else:
            path = export_hf(model, args.to)
        print(f"wrote {path}")
        return 0
    out = Path(args.out or f"runs/finetune-{args.action}")
    out.mkdir(parents=True, exist_ok=True)
    if args.action == "critic":
        return _critic(args, out)
    lr = args.lr
    if lr is None:
        lr = (1e-3 if args.lora_rank else 2e-5) / (1 if args.action in ("sft", "reward") else 5)
    beta = args.beta if args.beta is not None else (0.1 if args.action == "dpo" else 0.04)
    reward = args.reward or ("kernelgpt.align_tasks:task_reward"
                             if args.task and args.action in ("grpo", "ppo") else "")
    fc = FinetuneConfig(method=args.action, model=args.model, data="", init=args.init or "",
                        lora_rank=args.lora_rank, lora_alpha=args.lora_alpha,
                        lora_targets=args.lora_targets, steps=args.steps,
                        batch_size=args.batch_size, learning_rate=lr, warmup_steps=args.warmup,
                        beta=beta, max_len=args.max_len, seed=args.seed, reward=reward,
                        group=args.group, max_new_tokens=args.max_new_tokens,
                        temperature=args.temperature, ppo_epochs=args.ppo_epochs,
                        precision=args.precision,
                        checkpoint_every=args.checkpoint_every)
    model = load_model(args.model, weights="fp32") if not args.resume else None
    if not args.resume:
        fc = dataclasses.replace(fc, data=_data(args, out, model))
    tasks = None
    if args.eval and args.task and args.action != "reward":
        tasks = align_tasks.make_tasks(args.task, args.eval, "test", seed=args.seed)
        if model is not None and not args.init:
            _report("before", evaluate(model, tasks))
    result = finetune(fc, out, resume=args.resume, model=model, stop_after=args.stop_after,
                      progress=not args.no_progress)
    last = result["last"]
    print(f"{result['step']} steps, {result['trainable']:,} trainable parameters, "
          f"{result['seconds_per_step'] or 0:.2f} s/step; last loss {last.get('loss', 0):.4f}"
          + (f", pairs ranked right {last['pair_accuracy']:.0%}" if "pair_accuracy" in last
             else "")
          + (f", reward {last['reward']:.3f}, KL {last['kl']:.4f}" if "reward" in last else ""))
    if tasks is not None:
        _report("after", evaluate(result["model"], tasks))
    print(f"run: {out} (log.csv, loss.png, checkpoints); kernelgpt finetune export --run {out} "
          "--to tuned.gguf")
    return 0


def _is_reward_run(run) -> bool:
    import json
    from ..finetune.run import _checkpoint_of
    state = json.loads((_checkpoint_of(run, "eval") / "state.json").read_text())
    return state["config"]["method"] == "reward"


def _eval_reward_model(args) -> int:
    """A reward model's accuracy: how often it scores the chosen answer of a held-out pair
    above the rejected one."""
    from .. import align_tasks
    from ..finetune import load_reward_model, reward_accuracy
    model, head = load_reward_model(args.run)
    tasks = align_tasks.make_tasks(args.task, args.n, "test", seed=args.seed)
    pairs = align_tasks.preference_records(tasks, seed=args.seed + 1)
    acc = reward_accuracy(model, head, pairs)
    print(f"{args.run}: reward model ranks {acc:.1%} of {len(pairs)} held-out pairs right")
    return 0


def _critic(args, out: Path) -> int:
    """Pairs labelled by the model itself (finetune.critic), written to OUT/pairs.jsonl."""
    from .. import align_tasks
    from ..finetune import load_prompts, load_tuned, resolve_reward
    from ..finetune.critic import critic_pairs
    from ..llama import load_model
    model = load_tuned(args.init) if args.init else load_model(args.model, weights="fp32")
    prompts = load_prompts(model, _data(args, out), args.max_len)
    reward = args.reward or ("kernelgpt.align_tasks:task_reward" if args.task else None)
    result = critic_pairs(model, prompts, seed=args.seed, max_new_tokens=args.max_new_tokens,
                          temperature=args.temperature,
                          reward_fn=resolve_reward(reward) if reward else None)
    path = align_tasks.write_jsonl(result["records"], out / "pairs.jsonl")
    print(f"wrote {len(result['records'])} pairs labelled by the model to {path}")
    if result["agreement"] is not None:
        print(f"the judge agrees with the verifiable reward on {result['agreement']:.1%} of "
              f"the {result['decided']} pairs it tells apart")
    print(f"next: kernelgpt finetune dpo --data {path} --model {args.model}")
    return 0
