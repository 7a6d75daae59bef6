"""tools/gpu_check.sh, the one-command GPU check, dry-run on the CPU emulator so that it cannot
rot while no GPU is at hand; and tools/gguf_layers.py, which makes the SmolLM2 files it needs
on a machine the 98 MB GGUF cannot reach."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import gguf_writer  # noqa: E402

from kernelgpt import cuda_emu  # noqa: E402
from kernelgpt.io.gguf import GGUFFile  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _layers(*args):
    return subprocess.run([sys.executable, str(ROOT / "tools" / "gguf_layers.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def _plain(v):
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


def test_gguf_layers_keeps_metadata_and_repeats_blocks(tmp_path):
    src = tmp_path / "tiny.gguf"
    src.write_bytes(gguf_writer.llama_file(numeric=True))
    one = tmp_path / "one.gguf"
    r = _layers(src, one, "--keep", 1)
    assert r.returncode == 0, r.stderr
    five = tmp_path / "five.gguf"
    r = _layers(src, five, "--keep", 2, "--blocks", 5)
    assert r.returncode == 0, r.stderr
    with GGUFFile(src) as a, GGUFFile(one) as b, GGUFFile(five) as c:
        assert b.metadata["llama.block_count"] == 1 and c.metadata["llama.block_count"] == 5
        for key in a.metadata:  # every other key, value and type kept (arrays included)
            if key == "llama.block_count":
                continue
            for f in (b, c):
                assert f.metadata.value_type(key) == a.metadata.value_type(key), key
                assert _plain(a.metadata[key]) == _plain(f.metadata[key]), key
        assert not any(n.startswith("blk.1.") for n in b.tensors)
        for i in range(5):
            for name in (n for n in a.tensors if n.startswith("blk.0.")):
                suffix = name[len("blk.0."):]
                src_name = f"blk.{i % 2}.{suffix}"
                got = c.tensor(f"blk.{i}.{suffix}")
                np.testing.assert_array_equal(got, a.tensor(src_name))
                assert c.tensors[f"blk.{i}.{suffix}"].type == a.tensors[src_name].type
        np.testing.assert_array_equal(c.tensor("token_embd.weight"), a.tensor("token_embd.weight"))
    # the kept blocks run: the model loads and generates
    from kernelgpt.llama import load_model
    assert isinstance(load_model(str(five)).generate("ab", max_tokens=3, temperature=0), str)


def test_gguf_layers_refuses_bad_counts(tmp_path):
    src = tmp_path / "tiny.gguf"
    src.write_bytes(gguf_writer.llama_file(numeric=True))
    for args, message in (([3], "--keep must be in [1, 2]"), ([0], "--keep must be"),
                          ([2, "--blocks", 1], "--blocks (1) must be >= --keep (2)")):
        r = _layers(src, tmp_path / "x.gguf", "--keep", *args)
        assert r.returncode != 0 and message in r.stderr, r.stderr
        assert not (tmp_path / "x.gguf").exists()


@pytest.mark.skipif(shutil.which("timeout") is None or shutil.which("bash") is None,
                    reason="needs bash and coreutils' timeout")
def test_gpu_check_dry_run_on_the_emulator(tmp_path):
    if not cuda_emu.available():
        pytest.skip("kernelgpt was built without the CUDA emulator")
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "KG_SMOLLM2_GGUF"}
    env["PYTHON"] = sys.executable
    r = subprocess.run(["bash", str(ROOT / "tools" / "gpu_check.sh"), str(out), "--device", "emu",
                        "--small"], capture_output=True, text=True, timeout=600, env=env,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    stages = [line.split("\t") for line in (out / "stages.tsv").read_text().splitlines()[1:]]
    assert [s[0] for s in stages] == ["tests", "models", "model_check", "bench"]
    assert all(s[1] == "ok" for s in stages), stages
    check = json.loads((out / "model_check.json").read_text())
    assert check["passed"] and check["device"] == "emu" and len(check["prompts"]) >= 3
    bench = json.loads((out / "bench.json").read_text())
    kernels = {r["kernel"].split()[0] for r in bench if "kernel" in r}
    assert {"matmul", "softmax", "layernorm", "attention", "cross_entropy"} <= kernels
    assert any("train step" in r.get("job", "") for r in bench)
    table = (out / "table.md").read_text()
    assert table.count("\n") >= len(bench) + 2 and "| softmax" in table
    assert "tests.xml" in os.listdir(out)
