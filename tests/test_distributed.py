"""Data-parallel training (kernelgpt.distributed, train.py with several ranks).

In-process: the parameter shards, the batch slices, the backward stages at which each
gradient is final (the bucket all-reduce relies on them), the buckets, and the whole loop on
the CUDA emulator with a one-rank communicator that records every collective.

With MPI (mpi4py + mpiexec from the `mpi` extra; skipped with the reason where missing):
N ranks with batch B give the loss sequence of one process with batch N*B over 50 steps
(2 and 3 ranks, with and without ZeRO-1), a split run resumes exactly, a different N resumes
with a note, ranks started differently are named, and a rank that raises or is killed ends
the job with a clear error within seconds.
"""
import csv
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from kernelgpt.config import GPTConfig
from kernelgpt.data import TokenData
from kernelgpt.distributed import Communicator, GradReducer, shard_bounds
from kernelgpt.model import GPT
from kernelgpt.train import TrainConfig, train


# ---- in process --------------------------------------------------------------------------------

@pytest.mark.parametrize("n,parts", [(1, 1), (7, 3), (10, 4), (5, 8), (1_000_003, 3)])
def test_shard_bounds_cover_the_range_once(n, parts):
    b = shard_bounds(n, parts)
    assert b[0] == 0 and b[-1] == n and len(b) == parts + 1
    sizes = np.diff(b)
    assert sizes.min() >= 0 and sizes.max() - sizes.min() <= 1


def test_batch_parts_are_slices_of_the_global_batch(tmp_path):
    rng = np.random.default_rng(5)
    ids = rng.integers(0, 97, size=5003)
    TokenData.write(tmp_path / "t.bin", ids, 97)
    data = TokenData(tmp_path / "t.bin", 97, 0.1)
    for n in (1, 2, 3):
        whole = data.batch("train", 3 * n, 17, np.random.default_rng(11))
        parts = [data.batch("train", 3, 17, np.random.default_rng(11), part=(r, n)) for r in range(n)]
        np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), whole[0])
        np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), whole[1])
    # in memory (how ranks other than 0 hold the tokens) the batches are the same
    mem = TokenData(tmp_path / "t.bin", 97, 0.1, tokens=np.asarray(data.tokens).copy())
    np.testing.assert_array_equal(mem.batch("val", 4, 9, np.random.default_rng(2))[0],
                                  data.batch("val", 4, 9, np.random.default_rng(2))[0])
    with pytest.raises(ValueError, match="1-D uint16"):
        TokenData(tmp_path / "t.bin", 97, 0.1, tokens=np.zeros(10, np.int64))


CONFIGS = {
    "gpt2": GPTConfig(vocab_size=37, block_size=16, n_layer=3, n_head=2, n_embd=16),
    "llama": GPTConfig(vocab_size=37, block_size=16, n_layer=2, n_head=4, n_kv_head=2, n_embd=16,
                       norm="rmsnorm", activation="swiglu", positions="rope", bias=False,
                       tied_head=False),
}


@pytest.mark.parametrize("flavour", sorted(CONFIGS))
def test_grad_stages_say_when_each_gradient_is_final(flavour):
    """After grad_hook(s), no later part of the backward pass may touch a gradient whose
    stage is <= s (else a bucket would be all-reduced before it is complete)."""
    model = GPT(CONFIGS[flavour], seed=3)
    stages = model.grad_stages()
    assert set(stages) == set(model.params.names())
    snapshots = {}
    model.zero_grad()
    model.grad_hook = lambda s: snapshots.setdefault(s, model.grads.data.copy())
    rng = np.random.default_rng(4)
    x = rng.integers(0, 37, size=(3, 11))
    model.forward_backward(x, np.roll(x, -1, axis=1))
    model.grad_hook = None
    L = model.config.n_layer
    assert sorted(snapshots) == list(range(L + 2))
    final = model.grads
    for s, snap in snapshots.items():
        for name, st in stages.items():
            if st <= s:
                o, shape = final.offsets[name]
                part = snap[o: o + int(np.prod(shape))]
                np.testing.assert_array_equal(part, final[name].ravel(), err_msg=f"{name} at {s}")
                assert np.abs(part).max() > 0, name  # (a real gradient, not zeros)


class RecordingComm(Communicator):
    """One rank that records the collectives the loop asks for, in order."""

    def __init__(self):
        self.calls = []

    def start_allreduce(self, buf):
        self.calls.append(("allreduce", buf.size))
        return None

    def allgather_shards(self, buf, bounds):
        self.calls.append(("allgather", tuple(bounds)))


def test_buckets_cover_the_gradients_in_backward_order():
    model = GPT(CONFIGS["gpt2"], seed=1)
    model.zero_grad()
    comm = RecordingComm()
    reducer = GradReducer(comm, model.grads, model.grad_stages(), bucket_elems=300)
    covered = np.zeros(model.params.size, int)
    for stage, lo, hi in reducer.buckets:
        assert 0 < hi - lo <= 300
        covered[lo:hi] += 1
    assert (covered == 1).all()
    assert [b[0] for b in reducer.buckets] == sorted(b[0] for b in reducer.buckets)
    reducer.begin()
    reducer.on_stage(0)
    first = len(comm.calls)
    assert first == sum(1 for b in reducer.buckets if b[0] == 0) and first > 0
    reducer.finish()
    assert sum(size for _, size in comm.calls) == model.params.size
    with pytest.raises(ValueError, match="bucket_elems"):
        GradReducer(comm, model.grads, model.grad_stages(), bucket_elems=0)


def _tiny_run(tmp_path, name, **kw):
    text = tmp_path / "text.txt"
    if not text.exists():
        rng = np.random.default_rng(0)
        text.write_text("".join(rng.choice(list("abcdefgh \n"), size=4000)))
    tc = TrainConfig(data=[str(text)], out=str(tmp_path / name), batch_size=2, max_iters=3,
                     eval_interval=3, eval_iters=1, warmup_iters=1, progress=False, plot=False,
                     **kw)
    return tc, GPTConfig(vocab_size=1, block_size=8, n_layer=2, n_head=2, n_embd=8)


def test_one_rank_loop_on_the_emulator_with_zero1(tmp_path):
    """The data-parallel path (buckets, ZeRO-1 shards, gathers) on the CUDA emulator's arrays
    with a one-rank communicator: the same losses as a plain CPU run, every collective asked."""
    tc, mc = _tiny_run(tmp_path, "emu", device="emu")
    comm = RecordingComm()
    emu = train(tc, mc, comm=comm, zero1=True, bucket_mb=1e-3)
    tc_cpu, _ = _tiny_run(tmp_path, "cpu")
    cpu = train(tc_cpu, mc)
    np.testing.assert_allclose([r["loss"] for r in emu["log"] if "loss" in r],
                               [r["loss"] for r in cpu["log"] if "loss" in r], rtol=1e-5)
    n_params = GPT(GPTConfig(**{**mc.to_dict(), "vocab_size": 10}), seed=0).params.size
    reduced = sum(size for kind, size in comm.calls if kind == "allreduce")
    assert reduced == 3 * n_params  # every gradient, once per step
    assert sum(1 for kind, _ in comm.calls if kind == "allgather") == 3


def test_bad_bucket_size_is_refused(tmp_path):
    tc, mc = _tiny_run(tmp_path, "x")
    with pytest.raises(ValueError, match="bucket_mb"):
        train(tc, mc, bucket_mb=0)


# ---- several processes (MPI) -------------------------------------------------------------------

def _mpiexec():
    pytest.importorskip("mpi4py", reason="mpi4py is not installed (pip install 'kernelgpt[mpi]')")
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    exe = here if os.path.exists(here) else shutil.which("mpiexec")
    if exe is None:
        pytest.skip("no mpiexec (pip install 'kernelgpt[mpi]' brings MPICH's)")
    return exe


ARGS = ["--max-iters", "50", "--eval-interval", "25", "--eval-iters", "2", "--log-interval", "1",
        "--no-progress", "--no-plot", "--threads", "1", "--n-layer", "2", "--n-embd", "64",
        "--block-size", "32"]


def _env():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "PMIX_"))}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _kernelgpt(*args):
    return [sys.executable, "-m", "kernelgpt", *args]


def _run(cmd, cwd, timeout=240):
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=_env())
    return p


def _losses(run_dir):
    with open(run_dir / "log.csv") as f:
        return np.array([float(r["loss"]) for r in csv.DictReader(f) if r["loss"]])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(1)
    words = ["the", "king", "and", "queen", "of", "far", "lands", "spoke", "softly", "\n"]
    (d / "c.txt").write_text(" ".join(rng.choice(words, size=20000)))
    return d / "c.txt"


@pytest.mark.parametrize("n", [2, 3])
def test_n_ranks_equal_one_process_with_n_times_the_batch(tmp_path, corpus, n):
    mpiexec = _mpiexec()
    data = ["--data", str(corpus)]
    p = _run(_kernelgpt("train", *ARGS, *data, "--batch-size", str(2 * n), "--out", "one"),
             tmp_path)
    assert p.returncode == 0, p.stderr
    reference = _losses(tmp_path / "one")
    assert len(reference) == 50
    for zero1 in (False, True):
        out = f"dp{n}{'z' if zero1 else ''}"
        p = _run([mpiexec, "-n", str(n), *_kernelgpt("train", *ARGS, *data, "--batch-size", "2",
                                                     "--out", out, *(["--zero1"] if zero1 else []))],
                 tmp_path)
        assert p.returncode == 0, p.stderr
        assert f"{n} MPI ranks" in p.stderr and f"{2 * n} per step" in p.stderr
        if zero1:
            assert "ZeRO-1" in p.stderr
        losses = _losses(tmp_path / out)
        np.testing.assert_allclose(losses, reference, rtol=1e-6, atol=0)
        # only rank 0 wrote the run; its checkpoint holds the whole optimizer state
        assert sorted(x.name for x in (tmp_path / out).glob("ckpt-*")) == ["ckpt-000025", "ckpt-000050"]
        from kernelgpt.checkpoint import load_checkpoint
        model, *_, (m, v) = load_checkpoint(tmp_path / out, with_optimizer=True)
        ref_model, *_, (m1, v1) = load_checkpoint(tmp_path / "one", with_optimizer=True)
        np.testing.assert_allclose(model.params.data, ref_model.params.data, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(v, v1, rtol=1e-3, atol=1e-12)


def test_split_run_resumes_exactly_and_other_n_resumes_with_a_note(tmp_path, corpus):
    mpiexec = _mpiexec()
    base = [*ARGS, "--data", str(corpus), "--batch-size", "2"]
    straight = _run([mpiexec, "-n", "2", *_kernelgpt("train", *base, "--out", "a", "--zero1")],
                    tmp_path)
    assert straight.returncode == 0, straight.stderr
    first = _run([mpiexec, "-n", "2", *_kernelgpt("train", *base, "--out", "b", "--zero1",
                                                  "--stop-after", "20")], tmp_path)
    assert first.returncode == 0, first.stderr
    second = _run([mpiexec, "-n", "2", *_kernelgpt("train", "--resume", "--out", "b", "--zero1",
                                                   "--no-progress", "--threads", "1")], tmp_path)
    assert second.returncode == 0, second.stderr
    np.testing.assert_array_equal(_losses(tmp_path / "b"), _losses(tmp_path / "a"))
    # a different number of ranks continues, saying what changed
    more = _run([mpiexec, "-n", "3", *_kernelgpt("train", "--resume", "--out", "b",
                                                 "--max-iters", "55", "--no-progress",
                                                 "--threads", "1")], tmp_path)
    assert more.returncode == 0, more.stderr
    assert "saved with 2 rank(s) and continues with 3" in more.stderr
    assert "step 55" in more.stdout


def test_ranks_started_differently_are_named(tmp_path, corpus):
    mpiexec = _mpiexec()
    base = [*ARGS, "--data", str(corpus), "--batch-size", "2", "--out", "r"]
    p = _run([mpiexec, "-n", "1", *_kernelgpt("train", *base), ":",
              "-n", "1", *_kernelgpt("train", *base[:-2], "--out", "r", "--n-embd", "32")],
             tmp_path)
    assert p.returncode != 0
    assert "rank 1 has model.n_embd 32 (rank 0: 64)" in p.stderr
    assert p.stderr.count("different runs") == 1  # said once, by rank 0
    other = tmp_path / "other.txt"
    other.write_text(corpus.read_text()[:-10] + "different!")
    p = _run([mpiexec, "-n", "1", *_kernelgpt("train", *base), ":",
              "-n", "1", *_kernelgpt("train", *ARGS, "--data", str(other), "--batch-size", "2",
                                     "--out", "r")], tmp_path)
    assert p.returncode != 0 and "rank 1 has data" in p.stderr


def test_a_rank_that_raises_stops_every_rank(tmp_path, corpus):
    mpiexec = _mpiexec()
    base = [*ARGS, "--batch-size", "2", "--out", "r"]
    t0 = time.monotonic()
    p = _run([mpiexec, "-n", "1", *_kernelgpt("train", *base, "--data", str(corpus)), ":",
              "-n", "1", *_kernelgpt("train", *base, "--data", str(tmp_path / "missing.txt"))],
             tmp_path, timeout=60)
    assert time.monotonic() - t0 < 30
    assert p.returncode != 0
    assert "rank 1 of 2 failed: FileNotFoundError" in p.stderr and "missing.txt" in p.stderr


def _descendants(pid):
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for c in children.get(p, []):
            out.append(c)
            todo.append(c)
    return out


def _rank_of(pid):
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
    except OSError:
        return None
    rank = env.get(b"PMI_RANK")
    return int(rank) if rank is not None and b"kernelgpt" in open(f"/proc/{pid}/cmdline", "rb").read() else None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the rank through /proc")
def test_a_killed_rank_ends_the_job_quickly(tmp_path, corpus):
    mpiexec = _mpiexec()
    args = [a if a != "50" else "100000" for a in ARGS]
    proc = subprocess.Popen([mpiexec, "-n", "2", *_kernelgpt("train", *args, "--data", str(corpus),
                                                             "--batch-size", "2", "--out", "k")],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=_env())
    try:
        deadline = time.monotonic() + 60
        victim = None
        while victim is None and time.monotonic() < deadline:
            time.sleep(0.5)
            if (tmp_path / "k" / "tokens.bin").exists():
                victim = next((p for p in _descendants(proc.pid) if _rank_of(p) == 1), None)
        assert victim is not None, "rank 1 never started"
        time.sleep(1.0)  # let it train a little
        os.kill(victim, signal.SIGKILL)
        t0 = time.monotonic()
        _, err = proc.communicate(timeout=30)
        assert time.monotonic() - t0 < 30
        assert proc.returncode != 0
        assert str(victim) in err and "rank host:pid" in err  # the launcher names the pid,
        assert f"1 {os.uname().nodename}:{victim}" in err         # our first line its rank
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_nproc_starts_mpiexec(tmp_path, corpus):
    _mpiexec()
    p = _run(_kernelgpt("train", *ARGS, "--data", str(corpus), "--batch-size", "2", "--out", "n",
                        "--nproc", "2", "--max-iters", "5"), tmp_path)
    assert p.returncode == 0, p.stderr
    assert "2 MPI ranks" in p.stderr and "step 5:" in p.stdout
    assert len(_losses(tmp_path / "n")) == 5


# ---- NCCL on a GPU (one rank: the lent machine has one GPU) ----------------------------------

def _nccl_or_skip():
    from kernelgpt.device import cuda_available
    if not cuda_available():
        pytest.skip("needs a CUDA build of kernelgpt, CuPy and an NVIDIA GPU")
    try:
        from cupy.cuda import nccl
        nccl.get_version()
    except Exception as err:  # CuPy without its NCCL binding
        pytest.skip(f"CuPy has no NCCL here ({err})")


@pytest.mark.gpu
def test_nccl_one_rank_trains_like_the_cpu(tmp_path):
    """NcclComm with one rank on one GPU: the bucketed all-reduce and the ZeRO-1 broadcasts run
    through NCCL on CuPy's stream; the losses follow the CPU's (tolerance of the GPU kernels)."""
    _nccl_or_skip()
    from kernelgpt.distributed import NcclComm
    comm = NcclComm()
    assert comm.size == 1 and "NCCL" in comm.description
    tc, mc = _tiny_run(tmp_path, "gpu", device="cuda")
    gpu = train(tc, mc, comm=comm, zero1=True, bucket_mb=1e-3)
    tc_cpu, _ = _tiny_run(tmp_path, "cpu")
    cpu = train(tc_cpu, mc)
    np.testing.assert_allclose([r["loss"] for r in gpu["log"] if "loss" in r],
                               [r["loss"] for r in cpu["log"] if "loss" in r], rtol=1e-4)


def test_nproc_reruns_the_command_line_it_was_given(monkeypatch, tmp_path):
    """--nproc re-runs the arguments given to cli.main (not the process's sys.argv) under
    mpiexec, without --nproc and with each rank's share of the cores."""
    from kernelgpt import cli, distributed
    calls = []
    monkeypatch.setattr(subprocess, "call", lambda cmd, env=None: calls.append(cmd) or 0)
    monkeypatch.setattr(distributed, "find_mpiexec", lambda: "mpiexec")
    args = ["train", "--max-iters", "5", "--nproc=3", "--out", str(tmp_path / "r")]
    assert cli.main(args) == 0
    (cmd,) = calls
    assert cmd[:4] == ["mpiexec", "-n", "3", sys.executable]
    assert cmd[4:-2] == ["-m", "kernelgpt", "train", "--max-iters", "5", "--out", str(tmp_path / "r")]
    assert cmd[-2] == "--threads" and int(cmd[-1]) >= 1
