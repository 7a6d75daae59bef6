"""Models on a device (the CUDA kernels through kernelgpt.ops) compute what the CPU computes:
training gives the CPU's losses, a Llama-architecture GGUF model gives the CPU's logits and
greedy text.

"emu" runs the CUDA kernels on the CPU emulator (everywhere); "cuda" on a GPU with CuPy
(marked gpu, skipped without one)."""
import dataclasses

import numpy as np
import pytest

import gguf_writer
from kernelgpt import load_model
from kernelgpt import cuda_emu
from kernelgpt.device import cuda_available
from kernelgpt.device import to_numpy
from kernelgpt.model import GPT, GPTConfig
from kernelgpt.train import TrainConfig, load_checkpoint, train

DEVICES = [
    pytest.param("emu", marks=pytest.mark.skipif(not cuda_emu.available(),
                                                 reason="built without the CUDA emulator")),
    pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
        not cuda_available(), reason="needs a CUDA build of kernelgpt, CuPy and a GPU")]),
]

ARCHS = [
    dict(),  # GPT-2: learned positions, layernorm, gelu
    dict(positions="rope", norm="rmsnorm", activation="swiglu", bias=False, n_head=4,
         n_kv_head=2),  # Llama-like, grouped-query attention
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch", ARCHS, ids=["gpt2", "llama"])
def test_forward_backward_matches_cpu(device, arch):
    cfg = GPTConfig(**{**dict(vocab_size=41, n_layer=2, n_head=2, n_embd=32, block_size=19),
                       **arch})
    rng = np.random.default_rng(5)
    x, y = rng.integers(0, 41, (3, 19)), rng.integers(0, 41, (3, 19))
    y[0, :4] = -100  # ignored targets
    cpu, dev = GPT(cfg, seed=2), GPT(cfg, seed=2).to(device)
    l_cpu, l_dev = cpu.forward_backward(x, y), dev.forward_backward(x, y)
    assert abs(l_cpu - l_dev) <= 1e-5 * abs(l_cpu)
    g_cpu, g_dev = cpu.grads.data, to_numpy(dev.grads.data)
    np.testing.assert_allclose(g_dev, g_cpu, rtol=0, atol=1e-4 * np.abs(g_cpu).max())
    assert abs(dev.loss(x, y) - cpu.loss(x, y)) <= 1e-5 * abs(l_cpu)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch", ARCHS, ids=["gpt2", "llama"])
def test_bf16_mixed_precision_is_close_to_fp32(device, arch):
    cfg = GPTConfig(**{**dict(vocab_size=41, n_layer=2, n_head=2, n_embd=64, block_size=19),
                       **arch})
    rng = np.random.default_rng(6)
    x, y = rng.integers(0, 41, (3, 19)), rng.integers(0, 41, (3, 19))
    cpu, dev = GPT(cfg, seed=2), GPT(cfg, seed=2).to(device, precision="bf16")
    assert dev.params.data.dtype == np.float32  # fp32 master weights
    l_cpu, l_dev = cpu.forward_backward(x, y), dev.forward_backward(x, y)
    assert abs(l_cpu - l_dev) <= 1e-2 * abs(l_cpu)  # bf16 inputs: ~3 significant digits
    g_cpu, g_dev = cpu.grads.data, to_numpy(dev.grads.data)
    np.testing.assert_allclose(g_dev, g_cpu, rtol=0, atol=3e-2 * np.abs(g_cpu).max())
    cos = g_cpu @ g_dev / np.linalg.norm(g_cpu) / np.linalg.norm(g_dev)
    assert cos > 0.999


@pytest.mark.parametrize("device", DEVICES)
def test_train_on_device_matches_cpu(tmp_path, device):
    text = tmp_path / "text.txt"
    text.write_text("To be, or not to be, that is the question:\n" * 40)
    cfg = GPTConfig(vocab_size=1, n_layer=2, n_head=2, n_embd=32, block_size=16)
    tc = TrainConfig(data=[str(text)], out=str(tmp_path / "cpu"), batch_size=2, max_iters=4,
                     warmup_iters=1, eval_interval=4, eval_iters=1, log_interval=1,
                     progress=False, plot=False)
    r_cpu = train(tc, cfg)
    r_dev = train(dataclasses.replace(tc, out=str(tmp_path / device), device=device), cfg)
    loss_cpu = [row["loss"] for row in r_cpu["log"] if "loss" in row]
    loss_dev = [row["loss"] for row in r_dev["log"] if "loss" in row]
    assert len(loss_cpu) == 4
    np.testing.assert_allclose(loss_dev, loss_cpu, rtol=1e-4)
    assert abs(r_dev["val_loss"] - r_cpu["val_loss"]) <= 1e-4 * r_cpu["val_loss"]
    # the checkpoint written from the device loads on the CPU and matches
    m_cpu = load_checkpoint(tmp_path / "cpu")[0]
    m_dev = load_checkpoint(tmp_path / device)[0]
    assert m_dev.device == "cpu"
    np.testing.assert_allclose(m_dev.params.data, m_cpu.params.data, rtol=0, atol=1e-4)
    # resuming on the device continues the run
    r_more = train(dataclasses.replace(tc, out=str(tmp_path / device), device=device),
                   resume=True, max_iters=5)
    assert r_more["step"] == 5


def test_device_errors():
    model = GPT(GPTConfig(vocab_size=11, n_layer=1, n_head=1, n_embd=8, block_size=4))
    with pytest.raises(ValueError, match="device must be"):
        model.to("tpu")
    if cuda_emu.available():
        model.to("emu")
        on_emu = to_numpy(model.logits(np.array([[1, 2]])))
        model.to("cpu")
        np.testing.assert_allclose(on_emu, model.logits(np.array([[1, 2]])), rtol=1e-5,
                                   atol=1e-6)
        assert model.logits(np.array([[1, 2]])).shape == (1, 2, 11)
    with pytest.raises(ValueError, match="device must be"):
        TrainConfig(device="gpu").validate()
    TrainConfig(precision="bf16").validate()  # bf16 runs on the CPU too (ops.matmul_bf16)
    with pytest.raises(ValueError, match="precision must be"):
        TrainConfig(precision="fp8").validate()
    with pytest.raises(ValueError, match="precision must be"):
        model.to("cpu", precision="fp8")


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf"
    path.write_bytes(gguf_writer.llama_file(untied=True, numeric=True))
    return path


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("weights", ["quantized", "fp32", "bf16"])
def test_llama_gguf_on_device_matches_cpu(tiny_gguf, device, weights):
    cpu = load_model(tiny_gguf, weights=weights, kv_dtype="float32")  # as a device's cache
    dev = load_model(tiny_gguf, weights=weights, device=device)
    assert dev.device == device
    ids = np.array([[2, 3, 7, 5, 11, 6, 4]])
    a = cpu.forward_cached(ids, cpu.new_cache(), all_logits=True)
    b = to_numpy(dev.forward_cached(ids, dev.new_cache(), all_logits=True))
    # bf16 on a device rounds the activations to bf16 too (tensor-core inputs)
    tol = 2e-2 if weights == "bf16" else 1e-4
    np.testing.assert_allclose(b, a, rtol=0, atol=tol * np.abs(a).max())
    if weights != "bf16":
        assert dev.generate("abcd ab", 12, temperature=0) == cpu.generate("abcd ab", 12,
                                                                          temperature=0)
        # a KV cache kept on the device across calls (prompt caching, as chat does)
        texts = []
        for model in (cpu, dev):
            cache = model.new_cache()
            first = model.generate([2, 3, 7], 3, temperature=0, cache=cache)
            ids = [2, 3, 7] + model.tokenizer.encode(first) + [5, 6]
            texts.append(model.generate(ids, 5, temperature=0, cache=cache))
        assert texts[0] == texts[1]


def test_cache_on_another_device_is_an_error(tiny_gguf):
    if not cuda_emu.available():
        pytest.skip("built without the CUDA emulator")
    cpu, dev = load_model(tiny_gguf), load_model(tiny_gguf, device="emu")
    with pytest.raises(ValueError, match="the cache is on 'cpu'"):
        dev.forward_cached(np.array([[2, 3]]), cpu.new_cache())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("weights", ["quantized", "fp32"])
def test_graph_decode_replays_at_every_position(tiny_gguf, device, weights):
    """decode_next on a device captures one step as a CUDA graph and replays it: the token,
    its position and the key count are read on the device, so every replay must match the
    CPU's logits (a position baked into the graph would be wrong from the second token)."""
    cpu = load_model(tiny_gguf, weights=weights, kv_dtype="float32")  # as a device's cache
    dev = load_model(tiny_gguf, weights=weights, device=device)
    c_cache, d_cache = cpu.new_cache(), dev.new_cache()
    prompt = np.array([[2, 3, 7]])
    cpu.forward_cached(prompt, c_cache)
    dev.forward_cached(prompt, d_cache)
    assert dev.supports_fast_decode(d_cache)
    for token in [5, 11, 4, 4, 9, 1, 6]:
        want = cpu.forward_cached(np.array([[token]]), c_cache)[0]
        got = dev.decode_next(token, d_cache)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())
    assert d_cache.length == c_cache.length == 10
    graph = dev._graph_decoder.graph
    assert graph is not None
    if device == "emu":  # one recorded launch per kernel of the step
        assert len(graph) == 1 + 12 * dev.config.n_layer + 2
    with pytest.raises(ValueError, match="out of range"):
        dev.decode_next(dev.config.vocab_size, d_cache)
