"""Nothing a user saved is lost or silently wrong (issue 15): split runs resume exactly, loaders
validate what they read, the output folder is checked and locked, Ctrl-C saves, kill -9
never leaves an unusable run."""
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from kernelgpt.checkpoint import CheckpointError, load_checkpoint
from kernelgpt.io import safetensors
from kernelgpt.io.run_dir import RunDirError, open_run_dir
from kernelgpt.model import GPTConfig
from kernelgpt.train import TrainConfig, learning_rate, train

from test_train import TEXT, TINY, config


def _losses(result):
    return [(r["step"], r["loss"]) for r in result["log"] if "loss" in r]


def _cli(*args, timeout=300, **kw):
    return subprocess.run([sys.executable, "-m", "kernelgpt", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, **kw)


# ---- resuming ---------------------------------------------------------------------------------

def test_a_run_split_anywhere_resumes_to_the_straight_run(tmp_path):
    straight = train(config(tmp_path / "a", max_iters=17, eval_interval=5), TINY)
    tc = config(tmp_path / "b", max_iters=17, eval_interval=5)
    train(tc, TINY, stop_after=3)
    train(tc, resume=True, stop_after=6)
    last = train(tc, resume=True)
    assert last["step"] == 17
    assert _losses(last) == _losses(straight)  # the same floats, bit for bit


def test_the_schedule_length_is_saved_with_the_run(tmp_path):
    tc = config(tmp_path, max_iters=8, eval_interval=4)
    train(tc, TINY)
    cfg = json.loads((Path(tc.out) / "ckpt-000008" / "config.json").read_text())
    assert cfg["train"]["lr_decay_iters"] == 8
    longer = train(tc, resume=True, max_iters=12)
    lrs = [r["lr"] for r in longer["log"] if "lr" in r and r["step"] > 8]
    assert lrs and all(lr == tc.min_lr for lr in lrs)  # not a new cosine over 12 steps
    saved = TrainConfig(**json.loads((Path(tc.out) / "ckpt-000012" / "config.json").read_text())["train"])
    assert saved.max_iters == 12 and saved.lr_decay_iters == 8
    assert learning_rate(9, saved) == tc.min_lr


def test_resume_refuses_a_different_model_or_data(tmp_path):
    tc = config(tmp_path, max_iters=4, eval_interval=2)
    train(tc, TINY)
    other = GPTConfig(vocab_size=1, n_layer=3, n_head=2, n_embd=32, block_size=16)
    with pytest.raises(ValueError, match="n_layer 2 .asked 3."):
        train(tc, other, resume=True)
    with pytest.raises(ValueError, match="seed"):
        train(tc, resume=True, overrides={"seed": 99})
    r = _cli("train", "--resume", "--out", tc.out, "--n-layer", "3", "--n-embd", "32",
             "--no-progress", "--no-plot")
    assert r.returncode == 1
    assert "--n-layer 3 (the run has 2)" in r.stderr and "Traceback" not in r.stderr
    r = _cli("train", "--resume", "--out", tc.out, "--tokenizer", "bpe", "--no-progress")
    assert r.returncode == 1 and "--tokenizer bpe (the run has char)" in r.stderr
    # repeating the run's own flags is fine; training settings override the saved ones
    r = _cli("train", "--resume", "--out", tc.out, "--n-layer", "2", "--data", *tc.data,
             "--max-iters", "6", "--batch-size", "3", "--no-progress", "--no-plot")
    assert r.returncode == 0, r.stderr
    assert "batch_size 4 -> 3" in r.stderr and "ckpt-000006" in r.stdout


def test_max_iters_zero_says_it_wrote_nothing(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(TEXT)
    r = _cli("train", "--data", corpus, "--out", tmp_path / "run", "--max-iters", "0",
             "--no-progress", "--no-plot")
    assert r.returncode == 0, r.stderr
    assert "no checkpoint written" in r.stdout and "checkpoint in" not in r.stdout
    assert not (tmp_path / "run" / "latest").exists()


# ---- loaders ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    tc = config(tmp_path_factory.mktemp("saved"), max_iters=2, eval_interval=2)
    train(tc, TINY)
    return Path(tc.out) / "ckpt-000002"


def _copy(src: Path, dst: Path) -> Path:
    import shutil
    shutil.copytree(src, dst)
    return dst


def test_a_float_tensor_saved_as_int32_is_refused(saved_run, tmp_path):
    ckpt = _copy(saved_run, tmp_path / "ck")
    tensors, meta = safetensors.load(ckpt / "model.safetensors")
    tensors["wte"] = tensors["wte"].view(np.int32)  # the same bytes, declared I32
    safetensors.save(tensors, ckpt / "model.safetensors", metadata=meta)
    with pytest.raises(CheckpointError, match=r"model.safetensors: wte: expected float32.*int32"):
        load_checkpoint(ckpt)


def test_an_overflowing_shape_names_the_file(tmp_path):
    header = json.dumps({"x": {"dtype": "F32", "shape": [2 ** 40, 2 ** 40, 2 ** 40],
                               "data_offsets": [0, 16]}}).encode()
    path = tmp_path / "bad.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + bytes(16))
    with pytest.raises(ValueError, match="bad.safetensors.*'x'"):
        safetensors.load(path)


@pytest.mark.parametrize("text, field", [
    ("{}", "model"),
    ("[]", "expected a JSON object"),
    ('{"model": {"n_layer": 2}}', "tokenizer"),
    ('{"model": {"n_layer": "two"}, "tokenizer": {"kind": "char", "chars": "ab"}}',
     "model.n_layer: expected int, got str"),
    ('{"model": {"n_layer": 2, "colour": 1}, "tokenizer": {"kind": "char", "chars": "ab"}}',
     "model.colour: unknown field"),
    ('{"model": {"n_layer": 0}, "tokenizer": {"kind": "char", "chars": "ab"}}', "n_layer must be"),
    ('{"model": {}, "tokenizer": {"kind": "bpe", "tiktoken_file": "../../etc/passwd", "pattern": "x"}}',
     "tokenizer.tiktoken_file"),
    ('{"model": {}, "tokenizer": {"kind": "zip"}}', "tokenizer.kind"),
    ('{"model": {}, "tokenizer": {"kind": "char", "chars": "ab"}, "train": {"max_iters": "x"}}',
     "train.max_iters: expected int"),
    ("not json", "not valid JSON"),
])
def test_malformed_config_json(saved_run, tmp_path, text, field):
    ckpt = _copy(saved_run, tmp_path / "ck")
    (ckpt / "config.json").write_text(text)
    with pytest.raises(CheckpointError, match="config.json") as err:
        load_checkpoint(ckpt)
    assert field in str(err.value)
    r = _cli("sample", "--ckpt", ckpt, "--max-new-tokens", "2")
    assert r.returncode == 1 and "Traceback" not in r.stderr and "config.json" in r.stderr


@pytest.mark.parametrize("state", [None, "{broken", '{"step": 2}', '{"step": -1, "rng": {}}'])
def test_missing_state_samples_but_does_not_resume(saved_run, tmp_path, state):
    run = tmp_path / "run"
    _copy(saved_run, run / "ckpt-000002")
    (run / "latest").write_text("ckpt-000002\n")
    if state is None:
        (run / "ckpt-000002" / "state.json").unlink()
    else:
        (run / "ckpt-000002" / "state.json").write_text(state)
    model, tok, _, _, _ = load_checkpoint(run)  # sampling needs no state
    assert model.config.n_layer == TINY.n_layer
    with pytest.raises(CheckpointError, match="state.json"):
        train(TrainConfig(out=str(run), progress=False, plot=False), resume=True)


def test_optimizer_state_of_the_wrong_size_is_refused(saved_run, tmp_path):
    run = tmp_path / "run"
    _copy(saved_run, run / "ckpt-000002")
    (run / "latest").write_text("ckpt-000002\n")
    safetensors.save({"m": np.zeros(3, np.float32), "v": np.zeros(3, np.float32)},
                     run / "ckpt-000002" / "optimizer.safetensors")
    with pytest.raises(CheckpointError, match="optimizer.safetensors: m: expected float32"):
        train(TrainConfig(out=str(run), progress=False, plot=False), resume=True)


# ---- the output folder ------------------------------------------------------------------------

@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes anywhere")
def test_a_read_only_folder_fails_before_the_first_step(tmp_path):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    try:
        with pytest.raises(RunDirError, match="cannot write"):
            train(config(tmp_path, out=str(out)), TINY)
    finally:
        out.chmod(0o755)


def test_an_output_folder_that_cannot_be_created_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunDirError, match="cannot create the output folder"):
        train(config(tmp_path, out=str(tmp_path / "file" / "run")), TINY)
    r = _cli("train", "--out", tmp_path / "file" / "run", "--max-iters", "1", "--no-progress")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "cannot create the output folder" in r.stderr


def test_disk_full_during_a_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import kernelgpt.checkpoint as ck
    tc = config(tmp_path, max_iters=6, eval_interval=2)
    train(tc, TINY, stop_after=2)
    real_save = ck.safetensors.save

    def full(tensors, path, metadata=None):
        if "optimizer" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(tensors, path, metadata)
    monkeypatch.setattr(ck.safetensors, "save", full)
    with pytest.raises(OSError, match="could not save checkpoint ckpt-000004.*No space left.*"
                                      "still names the previous one"):
        train(tc, resume=True)
    run = Path(tc.out)
    assert (run / "latest").read_text().strip() == "ckpt-000002"
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    assert not (run / "train.lock").exists()
    monkeypatch.setattr(ck.safetensors, "save", real_save)
    assert train(tc, resume=True)["step"] == 6


def test_a_crashed_runs_leftovers_are_removed(tmp_path):
    tc = config(tmp_path, max_iters=4, eval_interval=2)
    train(tc, TINY, stop_after=2)
    run = Path(tc.out)
    (run / ".ckpt-000004.tmp").mkdir()
    (run / ".ckpt-000004.tmp" / "model.safetensors").write_bytes(b"x" * 100)
    (run / ".latest.abc123.tmp").write_text("ckpt-000004\n")
    (run / "loss.tmp.png").write_bytes(b"")
    train(tc, resume=True)
    assert sorted(p.name for p in run.iterdir() if "tmp" in p.name) == []


def test_a_second_trainer_on_the_same_folder_is_refused(tmp_path):
    tc = config(tmp_path, max_iters=2, eval_interval=2)
    with open_run_dir(tc.out):
        with pytest.raises(RunDirError, match=f"in use by another trainer .pid {os.getpid()}"):
            train(tc, TINY)
    assert train(tc, TINY)["step"] == 2  # released


def test_a_stale_lock_is_taken_over(tmp_path, capfd):
    tc = config(tmp_path, max_iters=2, eval_interval=2)
    Path(tc.out).mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    (Path(tc.out) / "train.lock").write_text(json.dumps({"pid": int(dead), "host": "h"}))
    assert train(tc, TINY)["step"] == 2
    assert "taking over" in capfd.readouterr().err


# ---- Ctrl-C and kill -9 -----------------------------------------------------------------------

def _train_cmd(corpus, out, *extra):
    return [sys.executable, "-m", "kernelgpt", "train", "--data", str(corpus), "--out", str(out),
            "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16",
            "--batch-size", "2", "--eval-iters", "1", "--log-interval", "1", "--no-progress",
            "--no-plot", "--threads", "1", *map(str, extra)]


@pytest.mark.skipif(os.name != "posix", reason="signals")
def test_ctrl_c_saves_at_the_end_of_the_step(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(TEXT)
    out = tmp_path / "run"
    proc = subprocess.Popen(_train_cmd(corpus, out, "--max-iters", "100000", "--eval-interval",
                                       "100000"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    for line in proc.stdout:
        if line.startswith("step 3/"):
            break
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Ctrl-C: stopping after this step" in stderr and "--resume continues" in stderr
    _, _, _, state, _ = load_checkpoint(out)
    assert state["step"] >= 3
    assert "Traceback" not in stderr


@pytest.mark.skipif(os.name != "posix", reason="signals")
def test_kill_9_at_random_points_never_loses_the_run(tmp_path):
    """Saves every step; kill -9 at random moments; every time `latest` loads and --resume
    goes on; the finished run equals a run never killed, bit for bit."""
    corpus = tmp_path / "c.txt"
    corpus.write_text(TEXT)
    steps = 40
    straight = tmp_path / "straight"
    r = subprocess.run(_train_cmd(corpus, straight, "--max-iters", steps, "--eval-interval", 1),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "killed"
    rng = np.random.default_rng(0)
    first, loaded = True, 0
    for kill in range(8):
        cmd = _train_cmd(corpus, out, "--max-iters", steps, "--eval-interval", 1)
        proc = subprocess.Popen(cmd if first else cmd + ["--resume"], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
        first = False
        proc.stdout.readline()  # a step done
        time.sleep(float(rng.uniform(0.0, 0.5)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if (out / "latest").exists():
            load_checkpoint(out, with_optimizer=True)  # whatever moment it died at
            loaded += 1
        else:
            first = True  # killed before the first checkpoint: start again
    assert loaded >= 4
    r = subprocess.run(_train_cmd(corpus, out, "--max-iters", steps, "--eval-interval", 1)
                       + (["--resume"] if (out / "latest").exists() else []),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    a, _, _, sa, _ = load_checkpoint(straight)
    b, _, _, sb, _ = load_checkpoint(out)
    assert sa["step"] == sb["step"] == steps
    assert np.array_equal(a.params.data, b.params.data)
    la = [(x["step"], x["loss"]) for x in sa["log"] if "loss" in x]
    lb = [(x["step"], x["loss"]) for x in sb["log"] if "loss" in x]
    assert la == lb
