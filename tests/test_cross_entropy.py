import numpy as np
import pytest

import kernelgpt
from kernelgpt import ops, reference
from conftest import assert_close, finite_difference, randn

BACKENDS = ["auto", "naive", "online"]
SHAPES = [  # (N, V)
    (1, 1), (1, 2), (3, 5), (7, 33), (16, 16), (5, 64), (64, 17), (13, 1000), (2, 4097),
    (3, 50257), (31, 257),
]
REDUCTIONS = ["mean", "sum", "none"]


def make(rng, n, v, scale=3.0, ignore_every=0, ignore_index=-100):
    logits = randn(rng, n, v, scale=scale)
    targets = rng.integers(0, v, n)
    if ignore_every:
        targets[::ignore_every] = ignore_index
    return logits, targets


def ref64(logits, targets, ignore_index=-100, reduction="mean", dloss=1.0):
    x = logits.astype(np.float64)
    loss = reference.cross_entropy(x, targets, ignore_index=ignore_index, reduction=reduction)
    grad = reference.cross_entropy_backward(x, targets, dloss=dloss, ignore_index=ignore_index,
                                            reduction=reduction)
    return loss, grad


def check_loss(loss, expected, logits, reduction):
    # the loss per row is logsumexp - x_t: its error scale is that of the logits
    tol = 1e-5 * (np.abs(logits).max() + np.log(logits.shape[1]) + 1)
    if reduction == "none":
        assert isinstance(loss, np.ndarray) and loss.dtype == np.float32
        assert loss.shape == (logits.shape[0],)
        assert_close(loss, expected, rtol=1e-5, atol=tol, what="losses")
    else:
        assert isinstance(loss, float)
        count = logits.shape[0] if reduction == "sum" else 1
        assert abs(loss - expected) <= 1e-5 * abs(expected) + tol * count, (loss, expected)


def check_grad(grad, expected, w=None):
    """Entries are w_i * (p - onehot), so the error scale is the row weight w_i (at the target
    of a confident row, w * (p - 1) with p ~ 1 is below float32 resolution of w)."""
    assert grad.dtype == np.float32 and grad.shape == expected.shape
    scale = np.abs(expected).max(axis=1, keepdims=True)
    if w is not None:
        scale = np.maximum(scale, np.abs(np.broadcast_to(w, (grad.shape[0],)))[:, None])
    assert_close(grad, expected, rtol=1e-5, atol=1e-6 * scale + 1e-30, what="dlogits")


@pytest.mark.parametrize("n,v", SHAPES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_matches_reference(rng, isa, n, v, backend, reduction):
    logits, targets = make(rng, n, v, ignore_every=3 if n > 3 else 0)
    e_loss, e_grad = ref64(logits, targets, reduction=reduction)
    check_loss(ops.cross_entropy(logits, targets, reduction=reduction, backend=backend), e_loss,
               logits, reduction)
    loss, grad = ops.cross_entropy(logits, targets, reduction=reduction, return_grad=True,
                                   backend=backend)
    check_loss(loss, e_loss, logits, reduction)
    check_grad(grad, e_grad)
    check_grad(ops.cross_entropy_backward(logits, targets, reduction=reduction, backend=backend),
               e_grad)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cross_entropy_backward_dloss(rng, isa, backend):
    logits, targets = make(rng, 9, 130, ignore_every=4)
    for reduction, dloss in [("mean", 0.37), ("sum", -2.5), ("none", 1.75)]:
        _, e_grad = ref64(logits, targets, reduction=reduction, dloss=dloss)
        check_grad(ops.cross_entropy_backward(logits, targets, dloss=dloss, reduction=reduction,
                                              backend=backend), e_grad)
    dloss = randn(rng, 9)
    _, e_grad = ref64(logits, targets, reduction="none", dloss=dloss.astype(np.float64))
    out = np.empty_like(logits)
    r = ops.cross_entropy_backward(logits, targets, dloss=dloss, reduction="none", out=out,
                                   backend=backend)
    assert r is out or np.shares_memory(r, out)
    check_grad(out, e_grad)
    # numpy scalars and 0-d arrays are numbers too
    for d in (np.float32(0.5), np.array(0.5), 0.5):
        check_grad(ops.cross_entropy_backward(logits, targets, dloss=d, backend=backend),
                   ref64(logits, targets, dloss=0.5)[1])


@pytest.mark.parametrize("ignore_index", [-100, -1, 0, 3])
@pytest.mark.parametrize("backend", BACKENDS)
def test_cross_entropy_ignore_index(rng, isa, ignore_index, backend):
    logits, targets = make(rng, 11, 40, ignore_every=2, ignore_index=ignore_index)
    for reduction in REDUCTIONS:
        e_loss, e_grad = ref64(logits, targets, ignore_index=ignore_index, reduction=reduction)
        loss, grad = ops.cross_entropy(logits, targets, ignore_index=ignore_index,
                                       reduction=reduction, return_grad=True, backend=backend)
        check_loss(loss, e_loss, logits, reduction)
        check_grad(grad, e_grad)
        ignored = targets == ignore_index
        assert (grad[ignored] == 0).all()
        if reduction == "none":
            assert (loss[ignored] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_cross_entropy_all_ignored(rng, backend):
    logits = randn(rng, 4, 9)
    targets = np.full(4, -100)
    loss, grad = ops.cross_entropy(logits, targets, return_grad=True, backend=backend)
    assert loss == 0.0 and (grad == 0).all()  # mean over no rows: 0.0, not NaN (PyTorch: nan)
    assert ops.cross_entropy(logits, targets, reduction="sum", backend=backend) == 0.0
    assert (ops.cross_entropy_backward(logits, targets, backend=backend) == 0).all()


@pytest.mark.parametrize("n,v", [(1, 1), (1, 3), (3, 5), (4, 17), (2, 33)])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_cross_entropy_finite_differences(rng, isa, n, v, reduction, backend):
    logits, targets = make(rng, n, v, scale=1.0, ignore_every=3 if n > 2 else 0)
    dl = randn(rng, n).astype(np.float64) if reduction == "none" else 1.0

    def loss(x64):
        l = reference.cross_entropy(x64, targets, reduction=reduction)
        return float((l * dl).sum()) if reduction == "none" else l

    fd = finite_difference(loss, logits.astype(np.float64), h=1e-4)
    _, grad = ops.cross_entropy(logits, targets, reduction=reduction, return_grad=True,
                                backend=backend)
    if reduction == "none":
        grad = grad * dl[:, None].astype(np.float32)
    assert np.abs(grad - fd).max() <= 1e-3 * np.abs(fd).max() + 1e-4
    g2 = ops.cross_entropy_backward(logits, targets, reduction=reduction,
                                    dloss=dl.astype(np.float32) if reduction == "none" else 1.0,
                                    backend=backend)
    assert np.abs(g2 - fd).max() <= 1e-3 * np.abs(fd).max() + 1e-4


@pytest.mark.parametrize("backend", BACKENDS)
def test_cross_entropy_max_anywhere(rng, isa, backend):
    for v in list(range(1, 90)) + [127, 128, 129, 1025, 2047, 4111]:
        base = randn(rng, v, scale=3.0)
        logits = np.stack([np.sort(base), np.sort(base)[::-1], base, base + 1]).astype(np.float32)
        logits[3, -1] = 20.0
        targets = np.array([v - 1, 0, v // 2, v - 1])
        e_loss, e_grad = ref64(logits, targets, reduction="none")
        loss, grad = ops.cross_entropy(logits, targets, reduction="none", return_grad=True,
                                       backend=backend)
        check_loss(loss, e_loss, logits, "none")
        check_grad(grad, e_grad, w=1.0)


def test_cross_entropy_128k_vocabulary_accuracy(rng):
    logits, targets = make(rng, 3, 131072, scale=4.0)
    e_loss, e_grad = ref64(logits, targets, reduction="none")
    for backend in ("naive", "online"):
        loss, grad = ops.cross_entropy(logits, targets, reduction="none", return_grad=True,
                                       backend=backend)
        assert (np.abs(loss - e_loss) <= 1e-4 * np.abs(e_loss)).all()
        check_grad(grad, e_grad)


@pytest.mark.parametrize("n,v", [(2, 262145), (9, 131072)])
def test_cross_entropy_second_pass_recomputes(rng, isa, n, v):
    # rows over 256K values or logits over 8 MiB: the gradient pass recomputes the exps
    logits, targets = make(rng, n, v)
    logits[0, -1] = 25.0
    targets[1] = v - 1
    e_loss, e_grad = ref64(logits, targets, reduction="sum")
    for backend in ("naive", "online"):
        loss, grad = ops.cross_entropy(logits, targets, reduction="sum", return_grad=True,
                                       backend=backend)
        check_loss(loss, e_loss, logits, "sum")
        check_grad(grad, e_grad, w=1.0)


def test_cross_entropy_large_and_confident_logits(rng):
    logits, targets = make(rng, 6, 500, scale=1e4)  # exp would overflow without the max
    logits[0, targets[0]] = 3e38
    for backend in BACKENDS:
        loss, grad = ops.cross_entropy(logits, targets, reduction="none", return_grad=True,
                                       backend=backend)
        assert not np.isnan(loss).any() and not np.isnan(grad).any()
        e_loss, e_grad = ref64(logits, targets, reduction="none")
        assert_close(loss, e_loss, rtol=1e-5, what="loss")
        check_grad(grad, e_grad)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cross_entropy_special_values(rng, isa, backend):
    logits, targets = make(rng, 5, 70)
    targets[3] = 5
    logits[1, 10] = np.nan
    logits[2, 11] = np.inf
    logits[3, 5] = -np.inf  # the target has probability 0: loss inf
    logits[4, 20:40] = -np.inf  # masked vocabulary entries: fine
    targets[4] = 0
    loss, grad = ops.cross_entropy(logits, targets, reduction="none", return_grad=True,
                                   backend=backend)
    assert np.isnan(loss[1]) and np.isnan(grad[1]).all()
    assert np.isnan(loss[2]) and np.isnan(grad[2]).all()
    assert loss[3] == np.inf
    assert (grad[4, 20:40] == 0).all()
    e_loss, e_grad = ref64(logits[[0, 4]], targets[[0, 4]], reduction="none")
    assert_close(loss[[0, 4]], e_loss, what="finite rows")
    check_grad(grad[[0, 4]], e_grad)
    assert np.isnan(ops.cross_entropy(logits, targets, backend=backend))


def test_cross_entropy_deterministic_and_outputs(rng):
    logits, targets = make(rng, 100, 3001, ignore_every=7)
    loss, grad = ops.cross_entropy(logits, targets, return_grad=True)
    out = np.empty_like(logits)
    loss2, grad2 = ops.cross_entropy(logits, targets, return_grad=True, out=out)
    assert grad2 is out or np.shares_memory(grad2, out)
    assert loss == loss2 and np.array_equal(grad, out)
    n = kernelgpt.get_num_threads()
    try:
        kernelgpt.set_num_threads(1)
        loss1, grad1 = ops.cross_entropy(logits, targets, return_grad=True)
    finally:
        kernelgpt.set_num_threads(n)
    assert loss1 == loss and np.array_equal(grad1, grad)
    # other integer dtypes for targets are fine
    for dt in (np.int32, np.uint16):
        assert ops.cross_entropy(logits, np.where(targets < 0, 0, targets).astype(dt)) == \
            ops.cross_entropy(logits, np.where(targets < 0, 0, targets))


def test_cross_entropy_numpy_backend(rng):
    logits, targets = make(rng, 8, 50, ignore_every=3)
    bad = targets.copy()
    bad[1] = -1
    with pytest.raises(ValueError, match=r"targets\[1\] = -1"):
        ops.cross_entropy(logits, bad, backend="numpy")
    for reduction in REDUCTIONS:
        l1, g1 = ops.cross_entropy(logits, targets, reduction=reduction, return_grad=True,
                                   backend="numpy")
        l2, g2 = ops.cross_entropy(logits, targets, reduction=reduction, return_grad=True)
        np.testing.assert_allclose(l1, l2, rtol=1e-5)
        np.testing.assert_allclose(g1, g2, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(
            ops.cross_entropy_backward(logits, targets, reduction=reduction, backend="numpy"), g2,
            rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("n,v", [(1031, 8191), (8300, 1024), (33000, 257)])
def test_cross_entropy_gradient_larger_than_the_caches(rng, isa, n, v):
    logits, targets = make(rng, n, v, ignore_every=5)  # >= 32 MiB: see plan_rows
    loss, grad = ops.cross_entropy(logits, targets, return_grad=True)
    check_loss(loss, reference.cross_entropy(logits.astype(np.float64), targets), logits, "mean")
    e_loss, e_grad = ref64(logits[::50], targets[::50], reduction="sum")
    count = (targets != -100).sum()
    check_grad(grad[::50], e_grad / count)


# ---- bad input ------------------------------------------------------------------------------

def test_cross_entropy_bad_input(rng):
    logits, targets = make(rng, 4, 6)
    for fn in (ops.cross_entropy, ops.cross_entropy_backward):
        with pytest.raises(TypeError, match="logits must be float32"):
            fn(logits.astype(np.float64), targets)
        with pytest.raises(ValueError, match="logits must be 2-D"):
            fn(logits.reshape(2, 2, 6), targets)
        with pytest.raises(ValueError, match="logits must be 2-D"):
            fn(logits[0], targets[:1])
        with pytest.raises(ValueError, match="zero-size"):
            fn(np.zeros((0, 6), np.float32), targets[:0])
        with pytest.raises(ValueError, match="C-contiguous"):
            fn(np.asfortranarray(logits), targets)
        with pytest.raises(TypeError, match="targets must be an integer array"):
            fn(logits, targets.astype(np.float32))
        with pytest.raises(TypeError, match="targets must be a numpy array"):
            fn(logits, [0, 1, 2, 3])
        with pytest.raises(ValueError, match="targets has shape"):
            fn(logits, targets[:3])
        with pytest.raises(ValueError, match="targets has shape"):
            fn(logits, targets.reshape(2, 2))
        bad = targets.copy()
        bad[2] = 6
        with pytest.raises(ValueError, match=r"targets\[2\] = 6 is out of range \[0, 6\)"):
            fn(logits, bad)
        bad[2] = -1
        with pytest.raises(ValueError, match=r"targets\[2\] = -1"):
            fn(logits, bad)
        fn(logits, bad, ignore_index=-1)  # fine when -1 is the ignore_index
        with pytest.raises(ValueError, match="reduction must be"):
            fn(logits, targets, reduction="avg")
        with pytest.raises(TypeError):
            fn(logits, targets, ignore_index=1.5)
        with pytest.raises(ValueError, match="unknown version"):
            fn(logits, targets, backend="fused")
    with pytest.raises(ValueError, match="needs return_grad"):
        ops.cross_entropy(logits, targets, out=np.empty_like(logits))
    with pytest.raises(ValueError, match="overlap"):
        ops.cross_entropy(logits, targets, return_grad=True, out=logits)
    with pytest.raises(ValueError, match="out has shape"):
        ops.cross_entropy(logits, targets, return_grad=True, out=np.empty((4, 5), np.float32))
    with pytest.raises(ValueError, match="overlap"):
        ops.cross_entropy_backward(logits, targets, out=logits)
    with pytest.raises(ValueError, match="dloss must be a scalar"):
        ops.cross_entropy_backward(logits, targets, dloss=np.ones(4, np.float32))
    with pytest.raises(ValueError, match="dloss has shape"):
        ops.cross_entropy_backward(logits, targets, dloss=np.ones(3, np.float32),
                                   reduction="none")
    with pytest.raises(TypeError, match="dloss must be float32"):
        ops.cross_entropy_backward(logits, targets, dloss=np.ones(4), reduction="none")
    with pytest.raises(TypeError, match="dloss must be a number"):
        ops.cross_entropy_backward(logits, targets, dloss="1.0")
    with pytest.raises(TypeError, match="dloss must be a number"):
        ops.cross_entropy_backward(logits, targets, dloss=None)
