"""Every picture `kernelgpt explain <lesson> --plot DIR` draws, and train's loss.png: written
where documented (DIR/<lesson>.png, the name as typed), a real non-blank PNG, and every panel
titled and labelled, heat maps with colour bars. Skipped without matplotlib (the [plot] extra)."""
import numpy as np
import pytest

pytest.importorskip("matplotlib")
import matplotlib.image as mpimg  # noqa: E402
from matplotlib.contour import ContourSet  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from kernelgpt import cli, lessons  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _check_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    pixels = mpimg.imread(path)
    assert pixels.ndim == 3 and min(pixels.shape[:2]) >= 300, pixels.shape
    assert float(pixels[..., :3].var()) > 1e-3, f"{path} is blank"


def _is_colorbar(ax):
    return getattr(ax, "_colorbar", None) is not None


def _check_figure(fig, name):
    assert fig.get_suptitle(), f"{name}: no figure title"
    assert fig.get_layout_engine() is not None, f"{name}: no constrained/tight layout"
    panels = [ax for ax in fig.axes if not _is_colorbar(ax) and ax.axison]
    assert panels, f"{name}: no panels"
    colorbars = [ax._colorbar for ax in fig.axes if _is_colorbar(ax)]
    for ax in panels:
        assert ax.get_title(), f"{name}: a panel without a title"
        for axis, get in (("x", lambda a: a.get_xlabel()), ("y", lambda a: a.get_ylabel())):
            shared = (ax.get_shared_x_axes() if axis == "x" else ax.get_shared_y_axes())
            siblings = shared.get_siblings(ax)
            assert any(get(a) for a in siblings), f"{name}: {ax.get_title()!r} has no {axis} label"
        assert ax.has_data() or ax.texts, f"{name}: {ax.get_title()!r} is empty"
        for im in ax.images + [c for c in ax.collections if isinstance(c, ContourSet)]:
            # a heat map: its scale has a colour bar, its own or one for the same norm
            assert any(cb.mappable.norm is im.norm or
                       (cb.mappable.norm.vmin, cb.mappable.norm.vmax)
                       == (im.norm.vmin, im.norm.vmax) for cb in colorbars), \
                f"{name}: heat map {ax.get_title()!r} without a colour bar"
            assert all(cb.ax.get_ylabel() or cb.ax.get_xlabel() for cb in colorbars)


@pytest.mark.parametrize("name", list(lessons.LESSONS))
def test_explain_plot_writes_lesson_png(name, tmp_path, capsys, monkeypatch):
    # the slow lessons, shortened: four models trained 20 s each; a minute of SmolLM2 SFT
    short = {"architectures": dict(seconds=1.0), "alignment": dict(steps=2, n_test=2)}
    if name in short:
        fn = lessons.LESSONS[name]

        def quick(plot=None):
            return fn(plot=plot, **short[name])
        quick.__doc__ = fn.__doc__
        monkeypatch.setitem(lessons.LESSONS, name, quick)
    with lessons.collect_figures() as figs:
        assert cli.main(["explain", name, "--plot", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    expected = tmp_path / f"{name}.png"
    extra = ["trace.html"] if name == "trace" else []  # the trace lesson also writes its page
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"{name}.png"] + extra)
    assert f"plot: {expected}" in out
    _check_png(expected)
    assert len(figs) == 1
    _check_figure(figs[0], name)


def test_the_figure_check_catches_a_bare_heat_map():
    fig = Figure(layout="constrained")
    fig.suptitle("t")
    ax = fig.subplots()
    ax.imshow(np.eye(3))
    ax.set(title="t", xlabel="x", ylabel="y")
    with pytest.raises(AssertionError, match="colour bar"):
        _check_figure(fig, "bare")
    fig.colorbar(ax.images[0], ax=ax, label="value")
    _check_figure(fig, "with a colour bar")


def test_lesson_api_writes_the_same_name(tmp_path):
    text = lessons.lesson_gradient_descent(plot=tmp_path)
    assert (tmp_path / "gradient-descent.png").exists() and "gradient-descent.png" in text


def test_train_loss_png(tmp_path):
    from kernelgpt import train
    rows = [{"step": s, "loss": 4.0 - s / 100} for s in range(1, 101)]
    for s in (25, 50, 75, 100):
        rows.append({"step": s, "train_loss": 4.0 - s / 90, "val_loss": 4.05 - s / 95})
    rows.sort(key=lambda r: r["step"])
    captured = []
    import matplotlib.figure
    real_savefig = matplotlib.figure.Figure.savefig

    def keep(fig, *a, **kw):
        captured.append(fig)
        return real_savefig(fig, *a, **kw)

    matplotlib.figure.Figure.savefig = keep
    try:
        train._plot(rows, tmp_path / "loss.png")
    finally:
        matplotlib.figure.Figure.savefig = real_savefig
    _check_png(tmp_path / "loss.png")
    assert not list(tmp_path.glob("*.tmp.png"))
    (ax,) = captured[0].axes
    assert ax.get_xlabel() == "step" and "loss" in ax.get_ylabel() and ax.get_title()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("train" in t for t in labels) and "validation" in labels
    assert np.isclose(ax.get_lines()[-1].get_ydata()[-1], 4.05 - 100 / 95)


def test_gpu_plot_without_the_emulator(tmp_path, monkeypatch):
    from kernelgpt import cuda_emu
    monkeypatch.setattr(cuda_emu, "available", lambda: False)
    with lessons.collect_figures() as figs:
        text = lessons.run_lesson("gpu", plot=str(tmp_path))
    assert "no CUDA emulator" in text and "plot:" in text
    _check_png(tmp_path / "gpu.png")
    _check_figure(figs[0], "gpu")
