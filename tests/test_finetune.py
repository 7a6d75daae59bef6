"""Fine-tuning and alignment (kernelgpt.finetune, lora, export, align_tasks): gradients checked
against float64 finite differences, each method run on a tiny random Llama GGUF (tests/
tiny_llama.py) in seconds, resume bit-exact, bad data named by line, exports read back."""
from __future__ import annotations

import json

import numpy as np
import pytest

import kernelgpt
from kernelgpt import align_tasks as at
from kernelgpt.config import GPTConfig
from kernelgpt.export import export_gguf, export_hf
from kernelgpt.finetune import (DataError, FinetuneConfig, conversation_tokens, finetune,
                                load_pairs, load_prompts, load_reward_model, load_sft, load_tuned)
from kernelgpt.finetune.objectives import ScalarHead, reward_scores, reward_step
from kernelgpt.finetune.run import _checkpoint_of
from kernelgpt.lora import LoRA, resolve_targets
from kernelgpt.model import GPT
from tiny_llama import write_tiny_llama

LLAMA = GPTConfig(vocab_size=37, block_size=16, n_layer=2, n_head=4, n_kv_head=2, n_embd=24,
                  norm="rmsnorm", activation="swiglu", positions="rope", bias=False,
                  mlp_hidden=40)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(write_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny.gguf"))


@pytest.fixture
def model(tiny):
    return kernelgpt.load_model(tiny, weights="fp32")


def _batch(rng, B=2, T=7, V=37):
    x = rng.integers(0, V, (B, T))
    y = rng.integers(0, V, (B, T))
    y[0, :3] = -100
    return x, y


def _fd_check(f, params, grad, rng, n=40, eps=1e-6):
    for k in rng.choice(params.size, min(n, params.size), replace=False):
        old = params[k]
        params[k] = old + eps
        a = f()
        params[k] = old - eps
        b = f()
        params[k] = old
        num = (a - b) / (2 * eps)
        assert abs(num - grad[k]) <= 1e-7 + 1e-5 * abs(grad[k]), (k, num, grad[k])


# ---- gradients ------------------------------------------------------------------------------------

@pytest.mark.parametrize("targets", ["all", "attn", "qkv,down"])
def test_lora_gradients_match_finite_differences(targets):
    rng = np.random.default_rng(0)
    m = GPT(LLAMA, seed=1, backend="reference")
    lora = LoRA(m, rank=3, alpha=6.0, targets=targets, seed=2)
    lora.params.data[...] = rng.normal(0, 0.1, lora.params.size)  # B != 0: every path live
    lora.apply()
    x, y = _batch(rng)
    lora.zero_grad()
    m.forward_backward(x, y)
    assert not np.any(m.grads.data), "frozen weights must get no gradient"

    def f():
        lora.apply()
        return m.loss(x, y)
    _fd_check(f, lora.params.data, lora.grads.data.copy(), rng)


def test_lora_native_matches_float64_reference():
    rng = np.random.default_rng(3)
    grads = {}
    x, y = _batch(rng)
    values = rng.normal(0, 0.1, 10_000)
    for backend in ("reference", "native"):
        m = GPT(LLAMA, seed=1, backend=backend)
        lora = LoRA(m, rank=4, alpha=8.0, seed=2)
        lora.params.data[...] = values[:lora.params.size]
        lora.apply()
        m.forward_backward(x, y)
        grads[backend] = np.asarray(lora.grads.data, np.float64)
    ref = grads["reference"]
    assert np.abs(grads["native"] - ref).max() <= 1e-4 * np.abs(ref).max()


def test_lora_starts_as_the_base_model_and_merges():
    rng = np.random.default_rng(4)
    m = GPT(LLAMA, seed=1)
    x, y = _batch(rng)
    before = m.loss(x, y)
    lora = LoRA(m, rank=2, alpha=4.0, seed=5)
    assert m.loss(x, y) == before  # B = 0: W + s B A = W exactly
    lora.params.data[...] = rng.normal(0, 0.1, lora.params.size).astype(np.float32)
    lora.apply()
    tuned = m.loss(x, y)
    assert tuned != before
    lora.merge()
    assert m.adapters is None and not m.frozen and m.loss(x, y) == tuned
    with pytest.raises(ValueError, match="rank"):
        LoRA(GPT(LLAMA, seed=1), rank=0)
    with pytest.raises(ValueError, match="unknown LoRA target"):
        resolve_targets("attn,nope")


def test_token_weights_and_hidden_grad_match_finite_differences():
    rng = np.random.default_rng(6)
    m = GPT(LLAMA, seed=1, backend="reference")
    x, y = _batch(rng)
    w = rng.normal(size=x.shape)
    hv, coef = rng.normal(size=LLAMA.n_embd), np.array([1.0, -0.5])

    def hidden_grad(h):
        H = h.reshape(2, 7, -1)
        d = np.zeros_like(H)
        d[:, -1] = coef[:, None] * hv[None]
        return float((H[:, -1] @ hv) @ coef), d.reshape(h.shape)
    m.zero_grad()
    m.forward_backward(x, y, token_weights=w, hidden_grad=hidden_grad)

    def f():
        lp, H = m.token_logprobs(x, y, hidden=True)
        return float(-(lp * w).sum()) + float((H[:, -1] @ hv) @ coef)
    _fd_check(f, m.params.data, m.grads.data.copy(), rng)
    with pytest.raises(ValueError, match="token_weights"):
        m.forward_backward(x, y, token_weights=np.full(x.shape, np.nan))


def test_reward_step_gradient_matches_finite_differences(model):
    rng = np.random.default_rng(7)
    head = ScalarHead(model.config.n_embd, "reward_head", seed=1, dtype=np.float32)
    pairs = load_pairs_from(model, [{"prompt": "2+2?", "chosen": "4", "rejected": "five"},
                                    {"prompt": "hi", "chosen": "hello", "rejected": "go away"}])
    gpt = model.gpt
    gpt.zero_grad()
    head.grads.zero()
    stats = reward_step(gpt, head, pairs, 0)
    seqs = [s for p in pairs for s in ((np.r_[p.prompt, p.chosen], None),
                                       (np.r_[p.prompt, p.rejected], None))]

    def loss():
        r = reward_scores(gpt, head, seqs, 0)
        return float(np.mean(np.logaddexp(0, -(r[0::2] - r[1::2]))))
    assert abs(loss() - stats["loss"]) < 1e-5
    g = head.grads.data.astype(np.float64)
    for k in range(0, head.params.size, 7):  # float32 model: a coarser check, eps 1e-3
        old = head.params.data[k]
        head.params.data[k] = old + 1e-2
        a = loss()
        head.params.data[k] = old - 1e-2
        b = loss()
        head.params.data[k] = old
        assert abs((a - b) / 2e-2 - g[k]) <= 1e-3 + 1e-2 * abs(g[k])
    del rng


def load_pairs_from(model, records, tmp=None):
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        path = at.write_jsonl(records, f"{d}/pairs.jsonl")
        return load_pairs(model, path, 256)


# ---- data -------------------------------------------------------------------------------------------

def test_conversation_mask_covers_assistant_turns_only(model):
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "yo"}, {"role": "user", "content": "and?"},
            {"role": "assistant", "content": "done"}]
    ex = conversation_tokens(model, msgs)
    tok = model.tokenizer
    full = tok.decode(ex.ids.tolist())
    assert full == model.chat_format().render(msgs, add_generation_prompt=False)
    learned = tok.decode(ex.ids[ex.mask].tolist())
    assert learned == "yo<|im_end|>\ndone<|im_end|>\n"
    assert ex.mask.sum() < len(ex.ids)


@pytest.mark.parametrize("line, problem", [
    (b'{"messages": [{"role": "user", "content": "hi"}]}', "no assistant turn"),
    (b'{"text": "hi"}', "missing field 'messages'"),
    (b'{"messages": "hi"}', "'messages' must be a list"),
    (b'{"messages": [', "not valid JSON"),
    (b'\xff\xfe', "not valid UTF-8"),
    (b'[1, 2]', "expected a JSON object"),
    (b'{"messages": [{"role": "wizard", "content": "x"}, {"role": "assistant", "content": "y"}]}',
     "unknown role"),
])
def test_bad_sft_lines_are_named(model, tmp_path, line, problem):
    good = b'{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}'
    path = tmp_path / "d.jsonl"
    path.write_bytes(good + b"\n\n" + line + b"\n")
    with pytest.raises(DataError, match=f"line 3: .*{problem}"):
        load_sft(model, path, 256)


def test_over_long_examples_and_bad_pairs_are_named(model, tmp_path):
    path = tmp_path / "d.jsonl"
    at.write_jsonl([{"messages": [{"role": "user", "content": "x" * 300},
                                  {"role": "assistant", "content": "y"}]}], path)
    with pytest.raises(DataError, match="line 1: the example is .* over the limit"):
        load_sft(model, path, 512)
    at.write_jsonl([{"prompt": "p", "chosen": "a"}], path)
    with pytest.raises(DataError, match="line 1: missing field 'rejected'"):
        load_pairs(model, path, 256)
    at.write_jsonl([{"prompt": 3}], path)
    with pytest.raises(DataError, match="line 1: 'prompt' must be"):
        load_prompts(model, path, 256)
    path.write_bytes(b"\n")
    with pytest.raises(DataError, match="no examples"):
        load_sft(model, path, 256)


# ---- tasks ------------------------------------------------------------------------------------------

def test_tasks_are_deterministic_and_splits_disjoint():
    a = at.make_tasks("mixed", 300, "train", seed=0)
    assert a == at.make_tasks("mixed", 300, "train", seed=0)
    test = at.make_tasks("mixed", 60, "test", seed=3)
    assert not {t.prompt for t in a} & {t.prompt for t in test}
    assert not ({t.answer for t in a if t.kind == "capitals"}
                & {t.answer for t in test if t.kind == "capitals"})  # held-out countries
    for t in a[:50] + test:
        assert t.score(t.answer) == 1.0
        assert at.task_reward(t.prompt, t.answer) == 1.0
        assert at.task_reward(t.prompt, "I do not know") == 0.0
    t = at.Task("arithmetic", "What is 3 + 4? Reply with the number only.", "7")
    assert t.score("The answer is 7.") == 0.5 and t.score("8") == 0.0
    with pytest.raises(ValueError, match="unknown task"):
        at.make_tasks("poetry", 3)
    for rec in at.preference_records(at.make_tasks("arithmetic", 20)):
        assert rec["chosen"] != rec["rejected"]


# ---- every method on the tiny model, resume bit-exact -----------------------------------------------

def _data(tmp_path, method):
    tasks = at.make_tasks("arithmetic", 12, "train")
    records = (at.sft_records(tasks) if method == "sft" else
               at.preference_records(tasks) if method in ("dpo", "reward") else
               at.prompt_records(tasks))
    return str(at.write_jsonl(records, tmp_path / f"{method}.jsonl"))


_KW = dict(batch_size=2, max_new_tokens=5, group=2, reward="kernelgpt.align_tasks:task_reward",
           checkpoint_every=2, learning_rate=3e-3, warmup_steps=1)


@pytest.mark.parametrize("method", ["sft", "reward", "dpo", "grpo", "ppo"])
@pytest.mark.parametrize("rank", [4, 0])
def test_each_method_runs_and_resumes_bit_exact(tiny, tmp_path, method, rank):
    data = _data(tmp_path, method)
    fc = FinetuneConfig(method=method, model=tiny, data=data, steps=4, lora_rank=rank, **_KW)
    whole = finetune(fc, tmp_path / "whole", progress=False)
    assert whole["step"] == 4 and all(np.isfinite(r["loss"]) for r in whole["log"])
    finetune(fc, tmp_path / "split", progress=False, stop_after=2)
    with pytest.raises(FileExistsError):
        finetune(fc, tmp_path / "split", progress=False)
    resumed = finetune(fc, tmp_path / "split", progress=False, resume=True)
    assert resumed["step"] == 4
    a = (_checkpoint_of(tmp_path / "whole", "t") / "trainable.safetensors").read_bytes()
    b = (_checkpoint_of(tmp_path / "split", "t") / "trainable.safetensors").read_bytes()
    assert a == b, "a resumed run must end with the same bytes as an unbroken one"
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in whole["log"]]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in resumed["log"]]
    log = (tmp_path / "whole" / "log.csv").read_text().splitlines()
    assert len(log) == 5 and log[0].startswith("step,")


def test_sft_learns_and_dpo_moves_toward_chosen(tiny, tmp_path):
    data = _data(tmp_path, "sft")
    r = finetune(FinetuneConfig(method="sft", model=tiny, data=data, steps=12, lora_rank=8,
                                batch_size=4, learning_rate=1e-2, warmup_steps=0),
                 tmp_path / "sft", progress=False)
    losses = [row["loss"] for row in r["log"]]
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    pairs = _data(tmp_path, "dpo")
    r = finetune(FinetuneConfig(method="dpo", model=tiny, data=pairs, steps=8, batch_size=4,
                                learning_rate=1e-2, warmup_steps=0, init=str(tmp_path / "sft")),
                 tmp_path / "dpo", progress=False)
    assert r["log"][0]["loss"] == pytest.approx(np.log(2), abs=1e-6)  # starts at the reference
    assert r["log"][-1]["margin"] > 0
    assert json.loads((tmp_path / "dpo" / "reference_logps.json").read_text())["logps"]


def test_config_errors(tiny, tmp_path):
    with pytest.raises(ValueError, match="reward function"):
        FinetuneConfig(method="grpo", model=tiny, data="x").validate()
    with pytest.raises(ValueError, match="method"):
        FinetuneConfig(method="rlhf").validate()
    with pytest.raises(ValueError, match="max_new_tokens"):
        FinetuneConfig(method="ppo", reward="m:f", max_len=32, max_new_tokens=31).validate()
    with pytest.raises(FileNotFoundError):
        finetune(FinetuneConfig(model=tiny, data=_data(tmp_path, "sft")), tmp_path / "none",
                 resume=True)
    with pytest.raises(ValueError, match="module:function"):
        finetune(FinetuneConfig(method="grpo", model=tiny, data=_data(tmp_path, "grpo"),
                                reward="nocolon"), tmp_path / "g", progress=False)


# ---- export -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tuned_run(tiny, tmp_path_factory):
    d = tmp_path_factory.mktemp("tuned")
    data = _data(d, "sft")
    finetune(FinetuneConfig(method="sft", model=tiny, data=data, steps=3, lora_rank=4,
                            learning_rate=1e-2, warmup_steps=0), d / "run", progress=False)
    return d / "run"


def test_export_gguf_round_trips(tuned_run, tmp_path):
    tuned = load_tuned(tuned_run)
    ids = np.asarray([[257, 117, 115, 101, 114, 10, 104, 105, 258, 10, 257, 97]])
    ref = tuned.gpt.logits(ids)
    scale = np.abs(ref).max()
    for dtype, tol in (("f32", 0.0), ("bf16", 2e-2), ("q8_0", 3e-2)):
        path = export_gguf(tuned, tmp_path / f"t_{dtype}.gguf", dtype)
        back = kernelgpt.load_model(path, weights="fp32")
        got = back.gpt.logits(ids)
        assert np.abs(got - ref).max() <= tol * scale, dtype
        assert back.chat_format().source == tuned.chat_format().source
    greedy = [str(tuned.chat([{"role": "user", "content": p}], max_tokens=6, temperature=0,
                             stream=False)) for p in ("hi", "2+2?")]
    back = kernelgpt.load_model(tmp_path / "t_f32.gguf")  # quantized path: as stored (F32)
    assert greedy == [str(back.chat([{"role": "user", "content": p}], max_tokens=6,
                                    temperature=0, stream=False)) for p in ("hi", "2+2?")]


def test_export_gguf_reads_with_the_gguf_package(tuned_run, tmp_path):
    gguf = pytest.importorskip("gguf")
    tuned = load_tuned(tuned_run)
    path = export_gguf(tuned, tmp_path / "t.gguf", "q8_0")
    reader = gguf.GGUFReader(str(path))
    names = {t.name: t for t in reader.tensors}
    assert names["blk.0.attn_q.weight"].tensor_type == gguf.GGMLQuantizationType.Q8_0
    assert names["output_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    ours = tuned.gpt.params["ln_f.weight"]
    np.testing.assert_array_equal(np.asarray(names["output_norm.weight"].data), ours)


def test_export_hf_loads_in_transformers(tuned_run, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    tuned = load_tuned(tuned_run)
    export_hf(tuned, tmp_path / "hf")
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf")
    ids = np.asarray([[257, 117, 115, 101, 114, 10, 104, 105, 258, 10, 257, 97]])
    with torch.no_grad():
        got = hf(torch.tensor(ids)).logits.numpy()
    ref = tuned.gpt.logits(ids)
    assert np.abs(got.reshape(ref.shape) - ref).max() <= 1e-3 * np.abs(ref).max()


def test_reward_model_loads_with_its_head(tiny, tmp_path):
    data = _data(tmp_path, "reward")
    finetune(FinetuneConfig(method="reward", model=tiny, data=data, steps=2, batch_size=2),
             tmp_path / "rm", progress=False)
    m, head = load_reward_model(tmp_path / "rm")
    assert head.params.size == m.config.n_embd + 1
    with pytest.raises(ValueError, match="not a reward model"):
        sft = tmp_path / "s"
        finetune(FinetuneConfig(model=tiny, data=_data(tmp_path, "sft"), steps=1), sft,
                 progress=False)
        load_reward_model(sft)


def test_cli_finetune(tiny, tmp_path, capsys):
    from kernelgpt.cli import main
    out = tmp_path / "run"
    assert main(["finetune", "sft", "--model", tiny, "--task", "arithmetic", "--n-train", "8",
                 "--out", str(out), "--steps", "2", "--batch-size", "2", "--no-progress"]) == 0
    assert main(["finetune", "export", "--run", str(out), "--to", str(tmp_path / "t.gguf"),
                 "--dtype", "f32"]) == 0
    assert main(["finetune", "eval", "--run", str(out), "--task", "arithmetic", "--n", "2"]) == 0
    text = capsys.readouterr().out
    assert "2 steps" in text and "held-out" in text
    assert main(["finetune", "sft", "--model", tiny, "--out", str(tmp_path / "x")]) == 1
    assert "no data" in capsys.readouterr().err


def test_exported_smollm2_runs_in_llama_cpp(tmp_path):
    """The export of the real model (Q8_0): llama.cpp (llama-cpp-python, where installed)
    gives the same greedy tokens as kernelgpt on 5 prompts."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from kernelgpt.io import fetch
    if fetch.cached("smollm2") is None:
        pytest.skip("SmolLM2 is not in the cache (kernelgpt fetch smollm2)")
    path = export_gguf(kernelgpt.load_model("smollm2", weights="fp32"), tmp_path / "s.gguf",
                       "q8_0")
    ours = kernelgpt.load_model(path)
    peer = llama_cpp.Llama(model_path=str(path), n_ctx=256, n_threads=2, verbose=False)
    tok = ours.tokenizer
    same = 0
    for prompt in ("The capital of France is", "def fibonacci(n):", "Once upon a time",
                   "Water boils at", "The three primary colors are"):
        prompt_ids = tok.encode(prompt)
        mine = tok.encode(ours.generate(prompt, max_tokens=16, temperature=0))
        theirs = peer.create_completion(prompt, max_tokens=16, temperature=0.0, top_k=1)
        theirs = tok.encode(theirs["choices"][0]["text"])
        if mine == theirs:
            same += 1
            continue
        # a divergence must be a near-tie: the two tokens' logits within 1% of max|logit|
        k = next((i for i, (a, b) in enumerate(zip(mine, theirs)) if a != b), None)
        if k is None:  # one is a prefix of the other (a reply ended): the same tokens
            same += 1
            continue
        logits = ours.gpt.logits(np.asarray([prompt_ids + mine[:k]]))[0, -1]
        gap = abs(float(logits[mine[k]]) - float(logits[theirs[k]]))
        assert gap <= 1e-2 * float(np.abs(logits).max()), (prompt, k, gap)
    assert same >= 3


def test_samples_keep_the_stop_token_that_ended_them(model):
    from kernelgpt.finetune import sample
    from kernelgpt.finetune.data import Prompt
    ids = np.asarray(model.encode_chat([{"role": "user", "content": "hi"}]))
    model.stop_tokens = [258, 97]  # <|im_end|> and "a": a random model samples "a" often
    out = sample(model, [Prompt(ids, "hi")], 6, seed=3, max_new_tokens=8, temperature=1.5)
    assert len(out) == 6
    for s in out:
        body, last = s["ids"][:-1], int(s["ids"][-1])
        assert not set(body.tolist()) & {258, 97}
        assert last in (258, 97) or len(s["ids"]) == 8


def test_llama_gradients_match_pytorch(model, tmp_path):
    """The Llama flavour's backward (RMSNorm, RoPE on llama.cpp's row order, SwiGLU, grouped-
    query attention, tied embeddings) against transformers' LlamaForCausalLM in PyTorch, the
    same weights (export_hf), loss and every gradient."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from kernelgpt.export import hf_tensors
    export_hf(model, tmp_path / "hf")
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf")
    rng = np.random.default_rng(8)
    x = rng.integers(0, model.config.vocab_size, (3, 11))
    y = rng.integers(0, model.config.vocab_size, (3, 11))
    y[1, :4] = -100
    gpt = model.gpt
    gpt.zero_grad()
    loss = gpt.forward_backward(x, y)
    logits = hf(torch.tensor(x)).logits
    t_loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                               torch.tensor(y).reshape(-1), ignore_index=-100)
    t_loss.backward()
    assert abs(float(t_loss) - loss) <= 1e-5 * abs(loss)
    ours = hf_tensors(gpt, gpt.grads)
    for name, p in hf.named_parameters():
        g = p.grad.numpy()
        mine = ours[name]
        assert np.abs(mine - g).max() <= 1e-4 * max(np.abs(g).max(), 1e-6), name
