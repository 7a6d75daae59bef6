"""Alignment on SmolLM2-135M-Instruct, measured: task accuracy on held-out prompts of the
base model, after SFT, and after DPO, GRPO and PPO (each started from the SFT result), the
reward model's accuracy on held-out pairs, the KL to the reference at the end of each RL run,
and the greedy replies to a few general prompts before and after (did chat survive?).

    python benchmarks/align_smollm2.py [--task mixed] [--out runs/align] [--quick]

Every stage is `kernelgpt finetune ...` through the library; LoRA rank 8 on every projection.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import kernelgpt
from kernelgpt import align_tasks as at
from kernelgpt.finetune import (FinetuneConfig, evaluate, finetune, load_prompts,
                                load_reward_model, load_tuned, reward_accuracy)
from kernelgpt.finetune.critic import critic_pairs

GENERAL = at.GENERAL_HELD_OUT  # never trained on (the replay data uses the others)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="mixed")
    ap.add_argument("--out", default="runs/align")
    ap.add_argument("--n-test", type=int, default=60)
    ap.add_argument("--quick", action="store_true", help="a few steps of each (a smoke test)")
    args = ap.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    q = args.quick
    steps = {"sft": 3 if q else 150, "reward": 3 if q else 60, "dpo": 3 if q else 40,
             "grpo": 2 if q else 30, "ppo": 2 if q else 30}
    n_test = 8 if q else args.n_test
    test = at.make_tasks(args.task, n_test, "test")
    train = at.make_tasks(args.task, 400, "train")
    base = kernelgpt.load_model("smollm2", weights="fp32")
    replay = at.replay_records(base, 4 if q else 29)  # the base model's own general answers
    print(f"replay: {len(replay)} general conversations answered by the base model", flush=True)
    sft_records = at.sft_records(train) + replay * 4  # ~20% of the SFT data
    files = {"sft": at.write_jsonl(sft_records, out / "sft.jsonl"),
             "pairs": at.write_jsonl(at.preference_records(train), out / "pairs.jsonl"),
             "prompts": at.write_jsonl(at.prompt_records(train), out / "prompts.jsonl")}
    results, t_all = {}, time.perf_counter()

    def measure(label, model):
        r = evaluate(model, test)
        general = [str(model.chat([{"role": "user", "content": p}], max_tokens=40, temperature=0,
                                  stream=False)) for p in GENERAL]
        results[label] = {"accuracy": r["accuracy"], "mean_score": r["mean_score"],
                          "examples": list(zip([t.prompt for t in test[:4]], r["replies"][:4])),
                          "general": general}
        print(f"{label:>6}: accuracy {r['accuracy']:.1%}, mean score {r['mean_score']:.3f}",
              flush=True)

    measure("base", base)
    runs = {}

    def run(method, data, init="", **kw):
        fc = FinetuneConfig(method=method.split("-")[-1], model="smollm2", data=str(data), init=init,
                            steps=steps[method], checkpoint_every=1000, **kw)
        t = time.perf_counter()
        r = finetune(fc, out / method, progress=False)
        runs[method] = {"seconds": time.perf_counter() - t, "steps": r["step"],
                        "seconds_per_step": r["seconds_per_step"], "last": r["last"],
                        "trainable": r["trainable"]}
        print(f"{method:>6}: {r['step']} steps, {r['seconds_per_step']:.2f} s/step, last "
              f"{ {k: v for k, v in r['last'].items() if k in ('loss', 'pair_accuracy', 'reward', 'kl')} }",
              flush=True)
        return r

    r = run("sft", files["sft"], learning_rate=1e-3, batch_size=8)
    measure("sft", r["model"])
    sft_dir = str(out / "sft")
    r = run("reward", files["pairs"], learning_rate=1e-3, batch_size=8)
    rm, head = load_reward_model(out / "reward")
    results["reward_model_accuracy"] = reward_accuracy(rm, head,
                                                       at.preference_records(test, seed=1))
    print(f"reward model: {results['reward_model_accuracy']:.1%} of held-out pairs ranked right",
          flush=True)
    del rm
    r = run("dpo", files["pairs"], init=sft_dir, learning_rate=2e-4, batch_size=8, beta=0.1)
    measure("dpo", r["model"])
    reward = "kernelgpt.align_tasks:task_reward"
    r = run("grpo", files["prompts"], init=sft_dir, learning_rate=2e-4, batch_size=4, group=4,
            beta=0.04, reward=reward, max_new_tokens=12)
    measure("grpo", r["model"])
    r = run("ppo", files["prompts"], init=sft_dir, learning_rate=2e-4, batch_size=8, beta=0.04,
            reward=reward, max_new_tokens=12)
    measure("ppo", r["model"])
    # the internal critic: the SFT model samples two replies per prompt and judges them
    # against written principles; its labels are checked against the verifiable reward,
    # then used for DPO
    judge = load_tuned(sft_dir)
    prompts = load_prompts(judge, files["prompts"], 512)[:8 if q else 200]
    t = time.perf_counter()
    crit = critic_pairs(judge, prompts, seed=1, max_new_tokens=12,
                        reward_fn=at.task_reward)
    results["critic"] = {"pairs": len(crit["records"]), "decided": crit["decided"],
                         "agreement": crit["agreement"], "seconds": time.perf_counter() - t}
    print(f"critic: {len(crit['records'])} pairs, agreement with the verifiable reward "
          f"{crit['agreement']} on {crit['decided']}", flush=True)
    del judge
    if crit["records"]:
        at.write_jsonl(crit["records"], out / "critic_pairs.jsonl")
        steps["critic-dpo"] = steps["dpo"]
        r = run("critic-dpo", out / "critic_pairs.jsonl", init=sft_dir, learning_rate=2e-4,
                batch_size=8, beta=0.1)
        measure("critic-dpo", r["model"])
    results["runs"] = runs
    results["seconds"] = time.perf_counter() - t_all
    (out / "results.json").write_text(json.dumps(results, indent=1, ensure_ascii=False))
    print(json.dumps({k: v for k, v in results.items() if k != "runs"}, indent=1,
                     ensure_ascii=False))


if __name__ == "__main__":
    main()
