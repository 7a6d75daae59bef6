"""`kernelgpt explain`: every lesson runs, prints the explainer's numbers and draws its plot."""
import re
import sys

import numpy as np
import pytest

from kernelgpt import cli, lessons


def test_gradient_descent_derivative_and_divergence():
    text = lessons.lesson_gradient_descent()
    assert "slope 6.0000" in text
    lr60 = next(line for line in text.splitlines() if line.strip().startswith("lr 0.60"))
    assert float(re.search(r"after 30 ([0-9.e+-]+)", lr60).group(1)) > 1e6   # overshoots, diverges
    assert "plot:" not in text


def test_neuron_uses_the_explainer_inputs():
    text = lessons.lesson_neuron()
    assert "inputs x = [0.8, 0.2, 0.5]" in text and "= 0.9600" in text
    assert "relu(z) = +0.9600" in text and "sigmoid(z) = +0.7231" in text


def test_backprop_matches_finite_differences():
    text = lessons.lesson_backprop()
    worst = float(re.search(r"largest difference ([0-9.e+-]+)", text).group(1))
    assert worst < 1e-3
    losses = [float(x) for x in re.search(r"loss ([0-9. >-]+);", text).group(1).split("->")]
    assert losses == sorted(losses, reverse=True)


def test_bpe_walkthrough():
    text = lessons.lesson_bpe()
    assert "merge 3: 'low' + 'e' -> 'lowe'" in text
    assert "merge 3: ' ' + 'low' -> ' low'" in text


@pytest.mark.parametrize("name", ["embedding", "positions", "attention", "sampling", "trace"])
def test_model_lessons(name):
    text = lessons.run_lesson(name)
    assert "nan" not in text.lower() and "plot:" not in text


def test_rope_dot_products_depend_on_distance_only():
    text = lessons.lesson_positions()
    dots = re.findall(r"\(distance 2\): q\.k = ([+-][0-9.]+)", text)
    assert len(dots) == 3 and len(set(dots)) == 1


def test_attention_rows_are_distributions():
    from kernelgpt.generate import default_model_dir
    from kernelgpt.train import load_checkpoint
    model, tok, _, _, _ = load_checkpoint(default_model_dir())
    rec = lessons._AttentionRecorder(model.ops)
    model.ops = rec
    model.forward_cached(np.asarray([tok.encode(lessons.CAT)]), model.new_cache())
    for m in rec.maps:
        np.testing.assert_allclose(m.sum(-1), 1.0, rtol=1e-12)
        assert np.all(np.triu(m[0, 0], 1) == 0)   # causal: nothing from the future


def test_kv_cache_training_alignment_short():
    assert "the same logits either way" in lessons.lesson_kv_cache(n_tokens=8)
    text = lessons.lesson_training(steps=12)
    assert "before training" in text and "after training" in text
    from kernelgpt.lessons.training import lesson_alignment_dpo
    text = lesson_alignment_dpo(steps=4)
    margins = [float(x) for x in text.split("rejected): ")[1].split("\n")[0].split(" -> ")]
    assert margins[-1] > margins[0]   # the preferred answer gained on the rejected one


def test_cli_lists_and_rejects(capsys):
    assert cli.main(["explain"]) == 0
    assert "attention" in capsys.readouterr().out
    assert cli.main(["explain", "no-such-lesson"]) == 1
    assert "unknown lesson" in capsys.readouterr().err


def test_gpu_lesson_runs_the_cuda_kernels_on_the_emulator():
    from kernelgpt import cuda_emu
    from kernelgpt.lessons import run_lesson
    text = run_lesson("gpu")
    if not cuda_emu.available():
        assert "no CUDA emulator" in text
        return
    assert "with the barrier: 0/64" in text and "after 1 threads of the block returned" in text
    for version in ("naive", "tiled", "warptiled"):
        assert f"\n{version} " in text


def test_descriptions_are_whole_sentences(capsys):
    """The one-line descriptions (`kernelgpt explain`, its --help) are complete: each is the
    docstring's whole summary line, and ends a sentence."""
    assert cli.main(["explain"]) == 0
    listing = capsys.readouterr().out
    for name, fn in lessons.LESSONS.items():
        lines = fn.__doc__.strip().splitlines()
        summary = lessons.describe(name)
        assert summary == lines[0].strip() and summary.endswith("."), name
        assert len(lines) == 1 or not lines[1].strip(), f"{name}: summary runs onto line 2"
        assert f"{name}  {summary}" in listing
        assert fn.lesson_name == name
    epilog = cli.build_parser()._subparsers._group_actions[0].choices["explain"].format_help()
    for name in lessons.LESSONS:
        assert lessons.describe(name) in epilog


def _without_matplotlib(monkeypatch):
    """Makes `import matplotlib` (and any of its submodules) fail, as if not installed."""
    for key in [k for k in sys.modules if k == "matplotlib" or k.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, key, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)


def test_plots_without_matplotlib_say_how_to_get_it(monkeypatch, tmp_path, capsys):
    _without_matplotlib(monkeypatch)
    # explain without --plot works
    assert cli.main(["explain", "neuron"]) == 0
    assert "relu(z)" in capsys.readouterr().out
    # with --plot: a clear error, before any lesson runs, and nothing written
    assert cli.main(["explain", "neuron", "--plot", str(tmp_path / "out")]) == 1
    captured = capsys.readouterr()
    assert "plots need matplotlib: pip install 'kernelgpt[plot]'" in captured.err
    assert "relu(z)" not in captured.out and not (tmp_path / "out").exists()
    # the library raises an ImportError subclass with the same message
    for name in lessons.LESSONS:
        with pytest.raises(ImportError, match=r"kernelgpt\[plot\]"):
            lessons.run_lesson(name, plot=str(tmp_path / "out"))
    with pytest.raises(lessons.PlotDependencyError):
        lessons.lesson_neuron(plot=tmp_path)
    # training draws loss.png only when it can, and says so once
    from kernelgpt import train
    monkeypatch.setattr(train, "_PLOT_HINT_SHOWN", False)
    rows = [{"step": 1, "loss": 4.0}, {"step": 2, "loss": 3.5, "val_loss": 3.6}]
    train._plot(rows, tmp_path / "loss.png")
    train._plot(rows, tmp_path / "loss.png")
    err = capsys.readouterr().err
    assert err.count("pip install 'kernelgpt[plot]'") == 1
    assert not (tmp_path / "loss.png").exists()


def test_threads_option(capsys):
    import kernelgpt
    before = kernelgpt.get_num_threads()
    try:
        assert cli.main(["explain", "bpe", "--threads", "1"]) == 0
        assert kernelgpt.get_num_threads() == 1
    finally:
        kernelgpt.set_num_threads(before)
    capsys.readouterr()
    for bad in ("0", "-2", "two"):
        with pytest.raises(SystemExit) as exit_:
            cli.main(["explain", "bpe", "--threads", bad])
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert "--threads" in err and (">= 1" in err or "expected" in err)
    assert kernelgpt.get_num_threads() == before


def test_architectures_lesson_measures_the_table():
    """Dense, MoE, SSM and hybrid of equal active parameters (within 3%), trained for the same
    time; the SSM's generation cache is the same at every context, attention's grows linearly,
    the hybrid's at half attention's rate."""
    from kernelgpt.lessons.architectures import (active_parameters, architecture_configs,
                                                 measure_architectures)
    from kernelgpt.model import GPT
    for width in (32, 128):
        active = [active_parameters(GPT(c, seed=0)) for c in architecture_configs(65, width).values()]
        assert max(active) <= 1.03 * min(active), (width, active)
    rows = {r["name"]: r for r in measure_architectures(0.3, n_embd=32, contexts=(256, 512, 1024))}
    assert list(rows) == ["dense", "moe 8x2", "ssm", "hybrid"]
    for r in rows.values():
        assert r["steps"] >= 1 and np.isfinite(r["val"]) and r["val"] < 4.5
    assert len(set(rows["ssm"]["memory"])) == 1
    kv = rows["dense"]["memory"]
    assert kv == [kv[0], 2 * kv[0], 4 * kv[0]] and rows["moe 8x2"]["memory"] == kv
    hybrid_kv = [b - rows["ssm"]["memory"][0] // 2 for b in rows["hybrid"]["memory"]]
    assert hybrid_kv == [b // 2 for b in kv]
    assert rows["moe 8x2"]["params"] > 2 * rows["moe 8x2"]["active"]
    text = lessons.lesson_architectures(seconds=0.2, n_embd=16, contexts=(64, 128))
    assert "ssm,ssm,ssm,ssm" in text and "nan" not in text.lower()


def test_alignment_lesson_on_smollm2():
    from kernelgpt.io import fetch
    if fetch.cached("smollm2") is None:
        pytest.skip("SmolLM2 is not in the cache (kernelgpt fetch smollm2)")
    text = lessons.lesson_alignment(steps=3, n_test=3)
    assert "before: accuracy" in text and "after: accuracy" in text and "LoRA" in text
