"""Verifiable tasks for alignment: prompts whose answers a program can check, generated
offline, with fixed train / held-out splits, and the data sets built from them (SFT
conversations, preference pairs) in the JSONL formats `kernelgpt finetune` reads.

    arithmetic   "What is 47 + 385? Reply with the number only."     -> "432"
    capitals     "What is the capital of Kenya? Answer in one word."  -> "Nairobi"

A prompt belongs to the held-out split when a hash of its text (for capitals: of the
answer, so a held-out country is never seen in training) says so, one in five: the same
prompt is always on the same side whatever the seed or the count asked for.

    tasks = make_tasks("arithmetic", 200, split="train", seed=0)
    tasks[0].prompt, tasks[0].answer, tasks[0].score("432")   # -> ..., "432", 1.0
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional

import numpy as np

from .io.atomic import atomic_write

__all__ = ["Task", "TASK_KINDS", "make_tasks", "split_of", "sft_records", "preference_records",
           "prompt_records", "replay_records", "GENERAL_PROMPTS", "GENERAL_HELD_OUT",
           "write_jsonl", "score_reply", "task_for_prompt", "task_reward"]

_CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid",
    "Portugal": "Lisbon", "Japan": "Tokyo", "China": "Beijing", "Russia": "Moscow",
    "Egypt": "Cairo", "Kenya": "Nairobi", "Peru": "Lima", "Chile": "Santiago",
    "Norway": "Oslo", "Sweden": "Stockholm", "Finland": "Helsinki", "Denmark": "Copenhagen",
    "Poland": "Warsaw", "Austria": "Vienna", "Greece": "Athens", "Ireland": "Dublin",
    "Hungary": "Budapest", "Canada": "Ottawa", "Cuba": "Havana",
    "Thailand": "Bangkok", "Vietnam": "Hanoi", "Iran": "Tehran",
    "Iraq": "Baghdad", "Turkey": "Ankara", "Ukraine": "Kyiv", "Belgium": "Brussels",
    "Netherlands": "Amsterdam", "Switzerland": "Bern", "Czechia": "Prague", "Romania": "Bucharest",
    "Bulgaria": "Sofia", "Serbia": "Belgrade", "Croatia": "Zagreb", "Morocco": "Rabat",
    "Nigeria": "Abuja", "Ghana": "Accra", "Pakistan": "Islamabad", "Indonesia": "Jakarta", "Philippines": "Manila",
    "Australia": "Canberra", "Colombia": "Bogota", "Venezuela": "Caracas",
    "Iceland": "Reykjavik", "Estonia": "Tallinn", "Latvia": "Riga", "Lithuania": "Vilnius",
    "Slovakia": "Bratislava", "Slovenia": "Ljubljana", "Albania": "Tirana",
    "Mongolia": "Ulaanbaatar", "Nepal": "Kathmandu", "Qatar": "Doha", "Lebanon": "Beirut",
    "Syria": "Damascus", "Jordan": "Amman", "Afghanistan": "Kabul", "Uganda": "Kampala",
    "Senegal": "Dakar", "Tunisia": "Tunis", "Zimbabwe": "Harare", "Jamaica": "Kingston",
}
# (one-word capitals only: Buenos Aires or New Delhi would not fit "one word")

# general requests, to keep a tuned model a chat model: their answers by the starting model
# itself are mixed into the SFT data (replay_records), and the held-out ones show after
# tuning whether ordinary answers survived
GENERAL_PROMPTS = (
    "What is gravity?", "Write a haiku about the sea.", "Give me three tips for sleeping well.",
    "Explain what a computer program is.", "Why is the sky blue?", "How do plants make food?",
    "What is the difference between weather and climate?", "Suggest a name for a pet cat.",
    "How do I boil an egg?", "What does a doctor do?", "Describe a rainbow.",
    "What is a healthy breakfast?", "How can I learn a new language?",
    "Write a short poem about autumn.", "What is the internet?", "Why do we need sleep?",
    "Tell me a fun fact about octopuses.", "How do airplanes fly?",
    "What should I pack for a beach trip?", "Explain photosynthesis simply.",
    "What is a good way to start the morning?", "How does a bicycle work?",
    "Give me a tip for saving money.", "What is the moon made of?",
    "How do I make a cup of tea?", "What are clouds?", "Why is exercise good for you?",
    "Write two sentences about friendship.", "How do bees make honey?",
    "What is a volcano?", "Explain what recycling is.", "How do magnets work?",
)
GENERAL_HELD_OUT = GENERAL_PROMPTS[:3]  # never in the replay data

TASK_KINDS = ("arithmetic", "capitals")
_NUMBER = re.compile(r"-?\d+")


@dataclass(frozen=True)
class Task:
    """One verifiable prompt: its text, the one correct answer, and what kind it is."""
    kind: str
    prompt: str
    answer: str

    def score(self, reply: str) -> float:
        return score_reply(self, reply)

    def messages(self, reply: Optional[str] = None) -> List[dict]:
        m = [{"role": "user", "content": self.prompt}]
        if reply is not None:
            m.append({"role": "assistant", "content": reply})
        return m


def score_reply(task: Task, reply: str) -> float:
    """1.0 when the reply is exactly right in the form asked (the number alone; one word),
    0.5 when the answer is in it but the form is not kept, 0.0 otherwise."""
    text = reply.strip()
    if task.kind == "arithmetic":
        if text == task.answer:
            return 1.0
        numbers = _NUMBER.findall(text)
        return 0.5 if task.answer in numbers else 0.0
    words = re.findall(r"[^\W\d_]+", text)
    exact = text.rstrip(".!").strip() == task.answer
    if exact:
        return 1.0
    return 0.5 if task.answer.lower() in (w.lower() for w in words) else 0.0


def task_for_prompt(prompt: str) -> Optional[Task]:
    """The task a prompt of make_tasks asks (its true answer recomputed), or None."""
    m = re.search(r"What is (-?\d+) ([+\-*]) (-?\d+)\?", prompt)
    if m is not None:
        a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
        return Task("arithmetic", prompt, str(a + b if op == "+" else a - b if op == "-" else a * b))
    for country, capital in _CAPITALS.items():
        if re.search(rf"\b{country}\b", prompt):
            return Task("capitals", prompt, capital)
    return None


def task_reward(prompt: str, reply: str) -> float:
    """A verifiable reward, of the form `--reward module:function` takes (prompt text, reply
    text) -> float: score_reply against the prompt's true answer (0 for an unknown prompt).
    `kernelgpt finetune grpo|ppo --reward kernelgpt.align_tasks:task_reward`."""
    task = task_for_prompt(prompt)
    return 0.0 if task is None else score_reply(task, reply)


def split_of(prompt: str) -> str:
    """'test' for one prompt in five (by a hash of its text), else 'train'."""
    h = hashlib.sha256(prompt.encode("utf-8")).digest()
    return "test" if h[0] % 5 == 0 else "train"


def _arithmetic(rng) -> Task:
    op = rng.choice(["+", "-", "*"], p=[0.45, 0.35, 0.2])
    if op == "*":
        a, b = int(rng.integers(2, 100)), int(rng.integers(2, 10))
    else:
        a, b = int(rng.integers(10, 1000)), int(rng.integers(10, 100))
    answer = a + b if op == "+" else a - b if op == "-" else a * b
    return Task("arithmetic", f"What is {a} {op} {b}? Reply with the number only.", str(answer))


def _capital(rng) -> Task:
    country = sorted(_CAPITALS)[int(rng.integers(len(_CAPITALS)))]
    style = _STYLES[int(rng.integers(len(_STYLES)))]
    return Task("capitals", style.format(country=country), _CAPITALS[country])


_STYLES = ("What is the capital of {country}? Answer in one word.",
           "Name the capital city of {country} in one word.",
           "In one word: which city is the capital of {country}?")


_MAKERS: Dict[str, Callable] = {"arithmetic": _arithmetic, "capitals": _capital}


def make_tasks(kind: str, n: int, split: str = "train", seed: int = 0) -> List[Task]:
    """n distinct tasks of `kind` ('arithmetic', 'capitals' or 'mixed': both, alternating
    while the capitals last) from `split` ('train' or 'test'), the same for the same
    arguments."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if kind not in _MAKERS and kind != "mixed":
        raise ValueError(f"unknown task {kind!r}: use {', '.join(TASK_KINDS)} or mixed")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if kind == "mixed":  # half capitals (as many as the split has), the rest arithmetic
        k = min(n // 2, sum(split_of(c) == split for c in _CAPITALS.values()) * len(_STYLES))
        caps, sums = make_tasks("capitals", k, split, seed), make_tasks("arithmetic", n - k,
                                                                        split, seed)
        mixed = [t for pair in zip(sums, caps) for t in pair]
        return mixed + sums[len(caps):]
    rng = np.random.default_rng([seed, TASK_KINDS.index(kind)])
    out, seen = [], set()
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 200 * n + 10_000:
            raise ValueError(f"only {len(out)} distinct {kind} tasks in the {split} split")
        task = _MAKERS[kind](rng)
        # capitals split by country (a held-out country is never trained on), sums by prompt
        key = task.answer if task.kind == "capitals" else task.prompt
        if task.prompt in seen or split_of(key) != split:
            continue
        seen.add(task.prompt)
        out.append(task)
    return out


def _wrong(task: Task, rng) -> str:
    """A plausible wrong answer, or the right one in the wrong form."""
    if rng.random() < 0.5:  # right answer, form ignored
        if task.kind == "arithmetic":
            return f"The answer is {task.answer}."
        return f"The capital is {task.answer}, a city with a long history."
    if task.kind == "arithmetic":
        delta = int(rng.choice([-10, -2, -1, 1, 2, 10]))
        return str(int(task.answer) + delta)
    others = sorted(set(_CAPITALS.values()) - {task.answer})
    return others[int(rng.integers(len(others)))]


def sft_records(tasks: Iterable[Task]) -> List[dict]:
    """{'messages': [user, assistant]} per task, the assistant giving the correct answer."""
    return [{"messages": t.messages(t.answer)} for t in tasks]


def preference_records(tasks: Iterable[Task], seed: int = 0) -> List[dict]:
    """{'prompt', 'chosen', 'rejected'} per task: the correct answer in the form asked over a
    wrong one or one that ignores the form."""
    rng = np.random.default_rng(seed)
    return [{"prompt": t.prompt, "chosen": t.answer, "rejected": _wrong(t, rng)} for t in tasks]


def replay_records(model, n: int, max_tokens: int = 160) -> List[dict]:
    """{'messages'} for up to n general prompts (GENERAL_PROMPTS less the held-out ones), each
    answered by `model` itself (greedy; replies that do not end within max_tokens are left
    out): mixed into SFT data, they keep the tuned model answering ordinary requests as it
    did (rehearsal), instead of replying to everything in the short form of the task."""
    out = []
    for prompt in GENERAL_PROMPTS[len(GENERAL_HELD_OUT):][:n]:
        r = model.chat([{"role": "user", "content": prompt}], max_tokens=max_tokens,
                       temperature=0, stream=False)
        if r.finish_reason == "stop" and str(r).strip():
            out.append({"messages": [{"role": "user", "content": prompt},
                                     {"role": "assistant", "content": str(r).strip()}]})
    return out


def prompt_records(tasks: Iterable[Task]) -> List[dict]:
    """{'prompt'} per task: what GRPO and PPO sample replies to."""
    return [{"prompt": t.prompt} for t in tasks]


def write_jsonl(records: Iterable[dict], path) -> Path:
    """Writes one JSON object per line, atomically."""
    path = Path(path)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))
    return path
