"""Fine-tuning and aligning a pretrained model (SmolLM2, or any Llama GGUF) on our own kernels:
the stages that make an assistant from a language model, each a command.

    kernelgpt finetune sft    --task arithmetic --out runs/sft     # supervised, on conversations
    kernelgpt finetune reward --task arithmetic --out runs/rm      # a reward model from pairs
    kernelgpt finetune dpo    --task arithmetic --init runs/sft    # preferences, no reward model
    kernelgpt finetune grpo   --task arithmetic --init runs/sft    # RL, group-relative advantages
    kernelgpt finetune ppo    --task arithmetic --init runs/sft    # RL, a value head, clipping
    kernelgpt finetune eval   --task arithmetic --run runs/dpo     # held-out accuracy
    kernelgpt finetune export --run runs/dpo --to tuned.gguf       # llama.cpp, kernelgpt chat

Every method trains LoRA adapters (lora.py, the default: rank 8 on every projection) or every
weight (lora_rank=0). data.py reads the JSONL formats; objectives.py has each objective's
gradient; run.py the loop, checkpoints and resume; align_tasks.py the verifiable tasks.
"""
from .data import (DataError, Example, Pair, Prompt, conversation_tokens, load_pairs,
                   load_prompts, load_sft)
from .objectives import ScalarHead, reward_scores, sample, sequence_logprobs
from .run import (METHODS, FinetuneConfig, evaluate, finetune, load_reward_model, load_tuned,
                  resolve_reward, reward_accuracy)

__all__ = ["DataError", "Example", "Pair", "Prompt", "conversation_tokens", "load_sft",
           "load_pairs", "load_prompts", "ScalarHead", "reward_scores", "sample",
           "sequence_logprobs", "METHODS", "FinetuneConfig", "finetune", "load_tuned",
           "load_reward_model", "evaluate", "resolve_reward", "reward_accuracy"]
