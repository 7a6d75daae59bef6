"""Training loop, checkpoints (atomic, bit-exact resume), generation from a checkpoint."""
import csv
import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from kernelgpt.generate import GenerationStats, generate
from kernelgpt.model import GPTConfig
from kernelgpt.train import TrainConfig, load_checkpoint, train

TEXT = "\n".join(
    f"{name}:\nI pray you, {verb} the {thing} unto the {place}.\n"
    for name, verb, thing, place in zip(
        ["ROMEO", "JULIET", "HAMLET", "OPHELIA", "LEAR", "CORDELIA"] * 40,
        ["bring", "take", "send", "carry", "give", "show", "lend"] * 35,
        ["letter", "sword", "crown", "ring", "flower", "cup", "book", "lamp"] * 30,
        ["king", "queen", "castle", "garden", "tower"] * 48))

TINY = GPTConfig(vocab_size=1, n_layer=2, n_head=2, n_embd=32, block_size=16)


def config(tmp_path, **kw):
    tmp_path.mkdir(parents=True, exist_ok=True)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    base = dict(data=[str(corpus)], out=str(tmp_path / "run"), batch_size=4, max_iters=30,
                learning_rate=3e-3, min_lr=3e-4, warmup_iters=5, eval_interval=10, eval_iters=2,
                log_interval=1, progress=False, plot=False, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def test_train_loss_decreases_and_writes_everything(tmp_path):
    tc = config(tmp_path, max_iters=60, plot=True, eval_interval=20)
    result = train(tc, TINY)
    run = Path(tc.out)
    losses = [r["loss"] for r in result["log"] if "loss" in r]
    assert losses[-1] < losses[0] - 1.0
    assert (run / "latest").read_text().strip() == "ckpt-000060"
    ckpt = run / "ckpt-000060"
    for f in ("model.safetensors", "optimizer.safetensors", "config.json", "state.json"):
        assert (ckpt / f).exists()
    assert (run / "loss.png").stat().st_size > 1000
    rows = list(csv.DictReader((run / "log.csv").open()))
    assert rows and "val_loss" in rows[0]
    assert len([p for p in run.glob("ckpt-*")]) <= tc.keep_checkpoints


def test_checkpoint_loads_with_safetensors_and_torch(tmp_path):
    tc = config(tmp_path, max_iters=10)
    train(tc, TINY)
    path = Path(tc.out) / "ckpt-000010" / "model.safetensors"
    model, *_ = load_checkpoint(tc.out)
    st = pytest.importorskip("safetensors.numpy")
    tensors = st.load_file(str(path))
    np.testing.assert_array_equal(tensors["wte"], model.params["wte"])
    torch_st = pytest.importorskip("safetensors.torch")
    assert torch_st.load_file(str(path))["wte"].shape == tuple(model.params["wte"].shape)


def test_resume_is_bit_identical(tmp_path):
    straight = train(config(tmp_path / "a", max_iters=30), TINY)
    tc = config(tmp_path / "b", max_iters=30)
    first = train(tc, TINY, stop_after=13)
    assert first["step"] == 13
    resumed = train(tc, resume=True)
    assert resumed["step"] == 30
    a = [(r["step"], r["loss"]) for r in straight["log"] if "loss" in r]
    b = [(r["step"], r["loss"]) for r in resumed["log"] if "loss" in r]
    assert a == b  # exactly equal floats
    va = [r["val_loss"] for r in straight["log"] if "val_loss" in r]
    vb = [r["val_loss"] for r in resumed["log"] if "val_loss" in r]
    assert va == vb
    ma, *_ = load_checkpoint(tmp_path / "a" / "run")
    mb, *_ = load_checkpoint(tmp_path / "b" / "run")
    assert np.array_equal(ma.params.data, mb.params.data)


SAVER = textwrap.dedent("""
    import sys, numpy as np
    from kernelgpt.model import GPT, GPTConfig
    from kernelgpt.data import CharTokenizer
    from kernelgpt.train import TrainConfig, save_checkpoint
    out = sys.argv[1]
    model = GPT(GPTConfig(vocab_size=5, n_layer=2, n_head=2, n_embd=64, block_size=32), seed=0)
    tok = CharTokenizer("abcde")
    m = np.zeros(model.params.size, np.float32)
    step = 0
    while True:
        step += 1
        model.params.data[...] = step  # every checkpoint holds its own step number everywhere
        save_checkpoint(out, model, TrainConfig(out=out), tok, {"step": step, "rng": {}}, m, m)
        print(step, flush=True)
""")


def test_kill_during_save_leaves_a_complete_checkpoint(tmp_path):
    out = tmp_path / "ckpts"
    rng = np.random.default_rng(0)
    for trial in range(6):
        proc = subprocess.Popen([sys.executable, "-c", SAVER, str(out)], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
        proc.stdout.readline()  # at least one checkpoint exists
        time.sleep(float(rng.uniform(0.0, 0.3)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        model, _, _, state, _ = load_checkpoint(out)
        value = float(state["step"])
        assert np.all(model.params.data == value), f"torn checkpoint in trial {trial}"


def test_generate_from_checkpoint_streams_and_stops(tmp_path):
    tc = config(tmp_path, max_iters=40)
    train(tc, TINY)
    model, tok, *_ = load_checkpoint(tc.out)
    stats = GenerationStats()
    pieces = list(generate(model, tok, "ROMEO:\n", max_new_tokens=50, seed=1, stats=stats))
    assert len(stats.new_tokens) == 50 and stats.stop_reason == "length"
    assert "".join(pieces) == tok.decode(stats.new_tokens)
    again = "".join(generate(model, tok, "ROMEO:\n", max_new_tokens=50, seed=1))
    assert again == "".join(pieces)  # seeded
    greedy = "".join(generate(model, tok, "ROMEO:\n", max_new_tokens=30, temperature=0))
    stop = greedy[5:7]
    cut = "".join(generate(model, tok, "ROMEO:\n", max_new_tokens=30, temperature=0,
                           stop_strings=[stop]))
    assert cut == greedy[: greedy.find(stop)]
    # generation longer than the context slides the window instead of failing
    long = "".join(generate(model, tok, "ROMEO:\n", max_new_tokens=3 * TINY.block_size, seed=2))
    assert len(long) == 3 * TINY.block_size
    with pytest.raises(ValueError, match="longer than the model's context"):
        list(generate(model, tok, "a" * 100, max_new_tokens=1))
    with pytest.raises(ValueError, match="empty"):
        list(generate(model, tok, "", max_new_tokens=1))


def test_cli_train_and_sample(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(TEXT)
    env = dict(os.environ)
    run = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "kernelgpt", "train", "--data", str(corpus), "--out",
                        str(run), "--n-layer", "1", "--n-embd", "16", "--n-head", "2",
                        "--block-size", "16", "--batch-size", "2", "--max-iters", "4",
                        "--eval-interval", "2", "--eval-iters", "1", "--no-progress", "--no-plot"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "val loss" in r.stdout
    r = subprocess.run([sys.executable, "-m", "kernelgpt", "sample", "--ckpt", str(run), "--prompt",
                        "ROMEO:", "--max-new-tokens", "20", "--seed", "1"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ROMEO:") and len(r.stdout) > 20
    r = subprocess.run([sys.executable, "-m", "kernelgpt", "sample", "--ckpt", str(tmp_path / "nope")],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 1 and "no checkpoint" in r.stderr


@pytest.mark.parametrize("kind", ["bpe", "cl100k_base"])
def test_train_with_bpe_tokenizers(tmp_path, kind):
    if kind == "cl100k_base":
        from kernelgpt.io import fetch
        if fetch.cached("cl100k_base") is None:
            pytest.skip("cl100k_base not fetched (kernelgpt fetch cl100k_base)")
    tc = config(tmp_path, max_iters=6, eval_interval=3, tokenizer=kind, bpe_vocab_size=300)
    cfg = GPTConfig(vocab_size=1, n_layer=1, n_head=2, n_embd=16, block_size=16)
    train(tc, cfg)
    model, tok, *_ = load_checkpoint(tc.out)
    assert model.config.vocab_size == tok.n_vocab
    text = "".join(generate(model, tok, "ROMEO:", max_new_tokens=8, seed=0))
    assert isinstance(text, str)
    resumed = train(dataclasses.replace(tc), resume=True, max_iters=8)
    assert resumed["step"] == 8
