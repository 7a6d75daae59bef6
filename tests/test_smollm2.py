"""SmolLM2-135M-Instruct from its GGUF on our kernels, against Hugging Face transformers (fp32,
same GGUF): first-position logits within 1e-3 x max|logit|, 32-token greedy continuations
identical, chat template and the "What is gravity?" answer. The reference comes from
tests/data/make_smollm2_reference.py; the GGUF from `kernelgpt fetch smollm2`."""
import numpy as np
import pytest

from smollm2_files import assert_runner_equals_python, case_ids, gguf_path, load_reference

GGUF = gguf_path()
REF = load_reference()
pytestmark = [
    pytest.mark.skipif(GGUF is None, reason="SmolLM2 GGUF not fetched: kernelgpt fetch smollm2"),
    pytest.mark.skipif(REF is None, reason="tests/data/smollm2_reference.* missing"),
]
CASES = REF["cases"] if REF else []


@pytest.fixture(scope="module")
def model():
    from kernelgpt.llama import load_model
    return load_model(GGUF)



def test_config_from_metadata(model):
    c, conv = model.config, REF["conventions"]
    assert (c.n_layer, c.n_embd, c.n_head, c.n_kv_head, c.mlp_hidden, c.vocab_size) == (
        conv["num_hidden_layers"], conv["hidden_size"], conv["num_attention_heads"],
        conv["num_key_value_heads"], conv["intermediate_size"], conv["vocab_size"])
    assert c.rope_base == conv["rope_theta"] and c.block_size == conv["max_position_embeddings"]
    assert abs(c.norm_eps - conv["rms_norm_eps"]) < 1e-12 and c.tied_head
    assert model.quantized and conv["eos_token_id"] in model.stop_tokens


@pytest.mark.parametrize("case", CASES, ids=[f"{c['kind']}{i}" for i, c in enumerate(CASES)])
def test_tokens_logits_and_greedy_text(model, case):
    ids = case_ids(model, case)
    assert ids == case["ids"]
    cache = model.new_cache(len(ids) + 40)
    logits = model.forward_cached(np.asarray([ids]), cache)[0]
    ref = case["logits"]
    scale = case["max_abs_logit"]
    err = np.abs(logits - ref).max()
    assert err <= 1e-3 * scale, f"max |logit - transformers| = {err:.4g} (max|logit| {scale:.3g})"
    out = []
    for _ in range(len(case["greedy_ids"])):
        token = int(np.argmax(logits))
        out.append(token)
        logits = model.forward_cached(np.asarray([[token]]), cache)[0]
    assert out == case["greedy_ids"]
    assert model.tokenizer.decode(out) == case["greedy_text"]


def test_gravity_chat_answer(model):
    answer = "".join(model.chat([{"role": "user", "content": "What is gravity?"}], 24,
                                temperature=0.0))
    assert answer.startswith("Gravity is a fundamental concept in physics that describes the "
                             "curvature of spacetime caused by the presence of mass.")


def test_chat_prompt_caching_prefills_only_the_new_turn(model):
    from kernelgpt.generate import GenerationStats
    session = model.chat_session()
    first = session.send("Name a colour.", stream=False, max_tokens=8, temperature=0.0).text
    stats = GenerationStats()
    second = "".join(session.send("Another one?", max_tokens=8, temperature=0.0, stats=stats))
    msgs = [{"role": "user", "content": "Name a colour."},
            {"role": "assistant", "content": first}, {"role": "user", "content": "Another one?"}]
    full = model.encode_chat(msgs)
    assert second and stats.prompt_tokens == len(full)
    assert session.cache.tokens[:len(full)] == full
    assert stats.cached_tokens > len(full) // 2  # only the new turn was prefilled
    # a fresh cache gives the same reply: the cached prefix changed nothing
    assert model.chat(msgs, max_tokens=8, temperature=0.0, stream=False).text == second


def test_fp32_weights_match_quantized(model):
    from kernelgpt.llama import load_model
    dense = load_model(GGUF, weights="fp32", max_context=64)
    case = CASES[0]
    ids = np.asarray([case["ids"]])
    a = model.forward_cached(ids, model.new_cache(64))[0]
    b = dense.forward_cached(ids, dense.new_cache(64))[0]
    assert np.abs(a - b).max() <= 1e-3 * case["max_abs_logit"]
    assert np.abs(b - case["logits"]).max() <= 1e-3 * case["max_abs_logit"]


def _greedy(m, ids, n):
    cache = m.new_cache(len(ids) + n + 1)
    logits = m.forward_cached(np.asarray([ids]), cache)[0]
    first, out = logits.copy(), []
    for _ in range(n):
        out.append(int(np.argmax(logits)))
        logits = m.decode_next(out[-1], cache)
    return first, out


def test_int8_path_and_its_fp32_oracle(model):
    """The default model multiplies on int8 activations in two passes when the CPU has
    AVX512-VNNI or AVX2 (x_bits 16, ops.quant_matmul_packed); int8=False keeps fp32
    activations (the oracle). Both: logits within 2e-3 x max|logit| of transformers and every greedy reference
    (prefill, then the decode runner); x_bits=8 (one pass, llama.cpp's precision) runs too,
    within its documented few percent."""
    from kernelgpt import ops
    from kernelgpt.llama import load_model
    w = model.gpt.params["h.0.mlp.c_fc.weight"]
    assert (w.panels is not None) == ops.int8_native() and w.x_bits == 16
    oracle = load_model(GGUF, int8=False)
    assert oracle.gpt.params["h.0.mlp.c_fc.weight"].panels is None
    forced = load_model(GGUF, int8=True, x_bits=8, max_context=256)
    assert forced.gpt.params["wte"].panels is not None
    for case in CASES:
        scale, n = case["max_abs_logit"], len(case["greedy_ids"])
        for m in (model, oracle):
            first, out = _greedy(m, case["ids"], n)
            assert np.abs(first - case["logits"]).max() <= 2e-3 * scale
            assert out == case["greedy_ids"]
        cache = forced.new_cache(len(case["ids"]))
        first = forced.forward_cached(np.asarray([case["ids"]]), cache)[0]
        assert np.abs(first - case["logits"]).max() <= 0.15 * scale
    ids = np.asarray([CASES[0]["ids"]])  # the native prefill: forward_cached's bits
    for m in (model, oracle):
        np.testing.assert_array_equal(m.prefill(ids, m.new_cache(64)),
                                      m.forward_cached(ids, m.new_cache(64))[0])
    with pytest.raises(ValueError, match="int8=True needs"):
        load_model(GGUF, weights="fp32", int8=True)
    with pytest.raises(TypeError, match="int8"):
        load_model(GGUF, int8="yes")
    with pytest.raises(ValueError, match="x_bits"):
        load_model(GGUF, int8=True, x_bits=4)


def test_bad_input(model, tmp_path):
    from kernelgpt.llama import load_model
    with pytest.raises(ValueError, match="token ids"):
        model.forward_cached(np.asarray([[49152]]), model.new_cache(8))
    with pytest.raises(ValueError, match="weights"):
        load_model(GGUF, weights="int3")
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.gguf")
    with pytest.raises(FileNotFoundError, match="neither"):
        load_model("no-such-model")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 20)
    with pytest.raises(ValueError):
        load_model(bad)
    with pytest.raises(ValueError, match="cannot be trained"):
        model.forward_backward(np.zeros((1, 4), np.int64), np.zeros((1, 4), np.int64))


def test_native_runner_equals_python_path(model):
    """decode_next (one C++ call per token, quantized matvecs) gives forward_cached's logits."""
    assert_runner_equals_python(model, CASES[0]["ids"])
    fast = model.generate(CASES[0]["ids"], 12, temperature=0.7, seed=3)
    from kernelgpt.generate import generate
    slow = "".join(generate(model, model.tokenizer, CASES[0]["ids"], 12, temperature=0.7, seed=3,
                            stop_tokens=model.stop_tokens, fast_decode=False))
    assert fast == slow


def test_cli_generate_and_chat(capsys, monkeypatch):
    from kernelgpt import cli
    assert cli.main(["generate", "--model", str(GGUF), "--prompt", "The capital of France is",
                     "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.startswith("The capital of France is Paris")
    lines = iter(["What is gravity?", "/system You are a pirate.", "/reset", "/quit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    assert cli.main(["chat", "--model", str(GGUF), "--max-new-tokens", "6"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("Gravity is a fundamental")
    assert "system prompt set" in captured.err and "conversation cleared" in captured.err


@pytest.mark.parametrize("device", ["emu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_on_a_device_matches_the_cpu(model, device):
    """The real model through the CUDA kernels, on the emulator (~5 s per token) or a GPU: the
    prompt's logits and the greedy text are the CPU's."""
    from kernelgpt import cuda_emu
    from kernelgpt.device import cuda_available, to_numpy
    from kernelgpt.llama import load_model
    if device == "emu" and not cuda_emu.available():
        pytest.skip("built without the CUDA emulator")
    if device == "cuda" and not cuda_available():
        pytest.skip("needs a CUDA build of kernelgpt, CuPy and an NVIDIA GPU")
    dev = load_model(GGUF, device=device)
    # fp32 activations and KV cache, as the CUDA kernels multiply and store
    cpu = load_model(GGUF, int8=False, kv_dtype="float32")
    ids = model.tokenizer.encode("The capital of France is")
    a = cpu.forward_cached(np.array([ids]), cpu.new_cache())
    b = to_numpy(dev.forward_cached(np.array([ids]), dev.new_cache()))
    assert np.abs(a - b).max() <= 1e-4 * np.abs(a).max()
    n = 3 if device == "emu" else 32
    assert dev.generate(ids, n, temperature=0) == cpu.generate(ids, n, temperature=0)
