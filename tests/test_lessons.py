"""`kernelgpt explain`: every lesson runs, prints the explainer's numbers and draws its plot."""
import re

import numpy as np
import pytest

from kernelgpt import cli, lessons


def test_gradient_descent_derivative_and_divergence(tmp_path):
    text = lessons.lesson_gradient_descent(plot=tmp_path)
    assert "slope 6.0000" in text
    lr60 = next(line for line in text.splitlines() if line.strip().startswith("lr 0.60"))
    assert float(re.search(r"after 30 ([0-9.e+-]+)", lr60).group(1)) > 1e6   # overshoots, diverges
    assert (tmp_path / "gradient_descent.png").stat().st_size > 1000


def test_neuron_uses_the_explainer_inputs(tmp_path):
    text = lessons.lesson_neuron(plot=tmp_path)
    assert "inputs x = [0.8, 0.2, 0.5]" in text and "= 0.9600" in text
    assert "relu(z) = +0.9600" in text and "sigmoid(z) = +0.7231" in text
    assert (tmp_path / "activations.png").exists()


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


@pytest.mark.parametrize("name", ["embedding", "positions", "attention", "sampling"])
def test_model_lessons(name, tmp_path):
    text = lessons.run_lesson(name, plot=str(tmp_path))
    assert "plot:" in text and list(tmp_path.glob("*.png"))
    assert "nan" not in text.lower()


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
    text = lessons.lesson_alignment(steps=4)
    margins = [float(x) for x in text.split("rejected): ")[1].split("\n")[0].split(" -> ")]
    assert margins[-1] > margins[0]   # the preferred answer gained on the rejected one


def test_cli_lists_and_rejects(capsys):
    assert cli.main(["explain"]) == 0
    assert "attention" in capsys.readouterr().out
    assert cli.main(["explain", "no-such-lesson"]) == 1
    assert "unknown lesson" in capsys.readouterr().err


def test_gpu_lesson_runs_the_cuda_kernels_on_the_emulator(tmp_path):
    from kernelgpt import cuda_emu
    from kernelgpt.lessons import run_lesson
    text = run_lesson("gpu", plot=str(tmp_path))
    if not cuda_emu.available():
        assert "no CUDA emulator" in text
        return
    assert "with the barrier: 0/64" in text and "after 1 threads of the block returned" in text
    for version in ("naive", "tiled", "warptiled"):
        assert f"\n{version} " in text
    assert (tmp_path / "gpu.png").exists()
