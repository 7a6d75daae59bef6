"""CUDA kernels on device arrays against the numpy reference.

Every test runs twice: on the CUDA emulator (kernelgpt.cuda_emu: the same kernel sources
compiled for the CPU, every CUDA thread a fiber; runs everywhere) and on a real GPU with CuPy
(marked `gpu`, skipped without one). The emulator runs each test three times, with the threads
of a block scheduled forward, in reverse and shuffled between barriers, so that a race on
shared memory shows up as a wrong answer in at least one of them.
"""
import numpy as np
import pytest

from kernelgpt import cuda_emu, ops
from kernelgpt.device import cuda_available
from kernelgpt.kernels import matmul as matmul_family
from conftest import randn

cp = None  # the array module of the current device: cuda_emu or cupy (set by `device`)


@pytest.fixture(autouse=True, params=[
    pytest.param("emu", id="emu"),
    pytest.param("emu-reverse", id="emu-reverse"),
    pytest.param("emu-shuffle", id="emu-shuffle"),
    pytest.param("gpu", id="gpu", marks=[
        pytest.mark.gpu,
        pytest.mark.skipif(not cuda_available(),
                           reason="needs a CUDA build of kernelgpt, CuPy and an NVIDIA GPU")]),
])
def device(request):
    global cp
    if request.param.startswith("emu"):
        if not cuda_emu.available():
            pytest.skip("kernelgpt was built without the CUDA emulator")
        cp = cuda_emu
        # the order of a block's threads between barriers: a missing __syncthreads() or a read
        # of another thread's unsynchronized write changes the result in one of them
        cuda_emu.set_order({"emu": "forward", "emu-reverse": "reverse",
                            "emu-shuffle": "shuffle"}[request.param], seed=7)
    else:
        import cupy
        cp = cupy
    yield request.param
    if request.param.startswith("emu"):
        cuda_emu.set_order("forward")
    cp = None


@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (7, 13, 5), (64, 64, 64), (129, 257, 65),
                                   (67, 36, 132), (5, 100, 8), (130, 33, 260)])
@pytest.mark.parametrize("ta,tb", [(False, False), (True, True), (False, True), (True, False)])
@pytest.mark.parametrize("backend", matmul_family.VERSIONS.names("cuda") + ["auto"])
def test_cuda_matmul(rng, m, k, n, ta, tb, backend):
    a = randn(rng, *((k, m) if ta else (m, k)))
    b = randn(rng, *((n, k) if tb else (k, n)))
    bias = randn(rng, n)
    c = ops.matmul(cp.asarray(a), cp.asarray(b), cp.asarray(bias), trans_a=ta, trans_b=tb,
                   backend=backend)
    assert isinstance(c, cp.ndarray)
    ref = ops.matmul(a, b, bias, trans_a=ta, trans_b=tb, backend="numpy")
    np.testing.assert_allclose(cp.asnumpy(c), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_cuda_mixed_devices_rejected(rng):
    with pytest.raises(TypeError, match="mixing numpy and device arrays"):
        ops.matmul(cp.asarray(randn(rng, 3, 4)), randn(rng, 4, 5))


@pytest.mark.parametrize("rows,cols", [(1, 1), (5, 33), (64, 1000), (3, 50257)])
@pytest.mark.parametrize("backend", ["naive", "auto"])
def test_cuda_softmax(rng, rows, cols, backend):
    x = randn(rng, rows, cols, scale=3.0)
    y = ops.softmax(cp.asarray(x), backend=backend)
    x64 = x.astype(np.float64)
    e = np.exp(x64 - x64.max(-1, keepdims=True))
    # a long reduction (up to 50257 terms summed in float32): 1e-4 (tests/conftest.py)
    np.testing.assert_allclose(cp.asnumpy(y), e / e.sum(-1, keepdims=True), rtol=1e-4, atol=1e-8)


# ---- every family, every version, against the float64 numpy reference -----------------------

from conftest import assert_close  # noqa: E402
from kernelgpt import reference  # noqa: E402


def gpu(a):
    return cp.asarray(a)


def host(a):
    return cp.asnumpy(a)


def f64(a):
    return np.asarray(a, np.float64)


NORM_SHAPES = [(1, 1), (3, 7), (5, 33), (2, 3, 127), (64, 768), (7, 4099)]


@pytest.mark.parametrize("shape", NORM_SHAPES)
@pytest.mark.parametrize("backend", ["naive", "fast"])
@pytest.mark.parametrize("with_bias", [True, False])
def test_cuda_layernorm(rng, shape, backend, with_bias):
    C = shape[-1]
    x, w, b = randn(rng, *shape, scale=2.0) + 0.5, randn(rng, C), randn(rng, C)
    bias = b if with_bias else None
    y, mean, rstd = ops.layernorm(gpu(x), gpu(w), None if bias is None else gpu(bias),
                                  return_stats=True, backend=backend)
    ry, rmean, rrstd = reference.layernorm(f64(x), f64(w), None if bias is None else f64(bias))
    assert_close(host(y), ry, rtol=1e-4, atol=1e-5 * np.abs(ry).max(), what="y")
    assert_close(host(mean), rmean, rtol=1e-4, atol=1e-5 * np.abs(x).max(), what="mean")
    assert_close(host(rstd), rrstd, rtol=1e-4, what="rstd")
    dy = randn(rng, *shape)
    dx, dw, db = ops.layernorm_backward(gpu(dy), gpu(x), gpu(w), gpu(rmean.astype(np.float32)),
                                        gpu(rrstd.astype(np.float32)), backend=backend)
    rdx, rdw, rdb = reference.layernorm_backward(f64(dy), f64(x), f64(w), f64(rmean), f64(rrstd))
    assert_close(host(dx), rdx, rtol=1e-4, atol=1e-4 * np.abs(rdx).max(), what="dx")
    assert_close(host(dw), rdw, rtol=1e-4, atol=1e-4 * np.abs(rdw).max(), what="dweight")
    assert_close(host(db), rdb, rtol=1e-4, atol=1e-4 * np.abs(rdb).max(), what="dbias")


@pytest.mark.parametrize("shape", NORM_SHAPES)
@pytest.mark.parametrize("backend", ["naive", "fast"])
def test_cuda_rmsnorm(rng, shape, backend):
    C = shape[-1]
    x, w = randn(rng, *shape, scale=2.0), randn(rng, C)
    y, rstd = ops.rmsnorm(gpu(x), gpu(w), return_stats=True, backend=backend)
    ry, rrstd = reference.rmsnorm(f64(x), f64(w))
    assert_close(host(y), ry, rtol=1e-4, atol=1e-5 * np.abs(ry).max(), what="y")
    assert_close(host(rstd), rrstd, rtol=1e-4, what="rstd")
    dy = randn(rng, *shape)
    dx, dw = ops.rmsnorm_backward(gpu(dy), gpu(x), gpu(w), gpu(rrstd.astype(np.float32)),
                                  backend=backend)
    rdx, rdw = reference.rmsnorm_backward(f64(dy), f64(x), f64(w), f64(rrstd))
    # dx cancels (for C = 1 it is ~eps): the tolerance follows the size of the summed terms
    terms = np.abs(f64(dy) * f64(w) * f64(rrstd)[..., None]).max()
    assert_close(host(dx), rdx, rtol=1e-4, atol=1e-4 * max(np.abs(rdx).max(), terms), what="dx")
    assert_close(host(dw), rdw, rtol=1e-4, atol=1e-4 * np.abs(rdw).max(), what="dweight")


ACT_SHAPES = [(1,), (7,), (3, 5), (1031,), (4, 257, 3)]


@pytest.mark.parametrize("name", ["gelu", "gelu_exact", "silu", "relu", "sigmoid", "tanh"])
@pytest.mark.parametrize("shape", ACT_SHAPES)
@pytest.mark.parametrize("backend", ["naive", "vec4"])
def test_cuda_activation(rng, name, shape, backend):
    x, dy = randn(rng, *shape, scale=4.0), randn(rng, *shape)
    kw, ref_args = {}, ()
    if name.startswith("gelu"):
        kw = {"approximate": "none" if name == "gelu_exact" else "tanh"}
        ref_args = (kw["approximate"],)
        name = "gelu"
    y = getattr(ops, name)(gpu(x), backend=backend, **kw)
    ry = getattr(reference, name)(f64(x), *ref_args)
    assert_close(host(y), ry, rtol=1e-5, what=name)
    dx = getattr(ops, name + "_backward")(gpu(dy), gpu(x), backend=backend, **kw)
    rdx = getattr(reference, name + "_backward")(f64(dy), f64(x), *ref_args)
    assert_close(host(dx), rdx, rtol=1e-5, atol=1e-6 * np.abs(rdx).max(), what=name + "'")


def test_cuda_activation_unaligned_view(rng):
    # a view starting one float in: the float4 version must take the scalar path
    x = gpu(randn(rng, 1001, scale=3.0))
    assert_close(host(ops.silu(x[1:], backend="vec4")), reference.silu(f64(host(x)[1:])))


@pytest.mark.parametrize("shape", ACT_SHAPES)
@pytest.mark.parametrize("backend", ["naive", "vec4"])
def test_cuda_swiglu(rng, shape, backend):
    g, u, dy = randn(rng, *shape, scale=3.0), randn(rng, *shape), randn(rng, *shape)
    y = ops.swiglu(gpu(g), gpu(u), backend=backend)
    assert_close(host(y), reference.swiglu(f64(g), f64(u)), what="swiglu")
    dg, du = ops.swiglu_backward(gpu(dy), gpu(g), gpu(u), backend=backend)
    rdg, rdu = reference.swiglu_backward(f64(dy), f64(g), f64(u))
    assert_close(host(dg), rdg, atol=1e-6 * np.abs(rdg).max(), what="dgate")
    assert_close(host(du), rdu, atol=1e-6 * np.abs(rdu).max(), what="dup")


@pytest.mark.parametrize("n,v", [(1, 1), (3, 7), (17, 1000), (5, 50257), (2, 131071)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("backend", ["naive", "online"])
def test_cuda_cross_entropy(rng, n, v, reduction, backend):
    logits = randn(rng, n, v, scale=3.0)
    targets = rng.integers(0, v, n)
    if n > 2:
        targets[1] = -100  # an ignored row
    loss, grad = ops.cross_entropy(gpu(logits), gpu(targets), reduction=reduction,
                                   return_grad=True, backend=backend)
    rloss, rgrad = reference.cross_entropy(f64(logits), targets, reduction=reduction,
                                           return_grad=True)
    assert_close(host(loss), rloss, rtol=1e-4, atol=1e-5, what="loss")
    assert_close(host(grad), rgrad, rtol=1e-4, atol=1e-5 * np.abs(rgrad).max(), what="grad")
    dloss = randn(rng, n) if reduction == "none" else 0.7
    g2 = ops.cross_entropy_backward(gpu(logits), gpu(targets), reduction=reduction,
                                    dloss=gpu(dloss) if reduction == "none" else dloss,
                                    backend=backend)
    rg2 = reference.cross_entropy_backward(f64(logits), targets, dloss=dloss, reduction=reduction)
    assert_close(host(g2), rg2, rtol=1e-4, atol=1e-5 * np.abs(rg2).max(), what="backward")


def test_cuda_cross_entropy_bad_target(rng):
    with pytest.raises(ValueError, match=r"targets\[2\] = 9"):
        ops.cross_entropy(gpu(randn(rng, 4, 9)), gpu(np.array([0, 1, 9, 2])))


@pytest.mark.parametrize("ids_shape,V,C", [((1,), 1, 1), ((7,), 5, 3), ((3, 11), 13, 129),
                                           ((257,), 50, 768)])
@pytest.mark.parametrize("backend", ["naive", "sorted"])
def test_cuda_embedding(rng, ids_shape, V, C, backend):
    ids = rng.integers(0, V, ids_shape)  # repeats on purpose
    table = randn(rng, V, C)
    out = ops.embedding(gpu(ids), gpu(table))
    assert_close(host(out), reference.embedding(ids, f64(table)), what="forward")
    dout = randn(rng, *ids_shape, C)
    dt = ops.embedding_backward(gpu(dout), gpu(ids), V, backend=backend)
    rdt = reference.embedding_backward(f64(dout), ids, V)
    assert_close(host(dt), rdt, rtol=1e-5, atol=1e-5 * np.abs(rdt).max(), what="backward")
    acc = gpu(randn(rng, V, C))
    start = host(acc).astype(np.float64)
    ops.embedding_backward(gpu(dout), gpu(ids), V, out=acc, accumulate=True, backend=backend)
    assert_close(host(acc), start + rdt, rtol=1e-5, atol=1e-5 * np.abs(rdt).max(), what="acc")


def test_cuda_embedding_sorted_is_deterministic(rng):
    ids = rng.integers(0, 3, 5000)
    dout = gpu(randn(rng, 5000, 17))
    a = host(ops.embedding_backward(dout, gpu(ids), 3, backend="sorted"))
    b = host(ops.embedding_backward(dout, gpu(ids), 3, backend="sorted"))
    assert np.array_equal(a, b)


def test_cuda_embedding_bad_id(rng):
    with pytest.raises(ValueError, match=r"ids\[1\] = 7"):
        ops.embedding(gpu(np.array([0, 7])), gpu(randn(rng, 5, 3)))


@pytest.mark.parametrize("shape,rd", [((1, 2), None), ((3, 5, 8), None), ((2, 3, 17, 64), 32),
                                      ((1, 4, 33, 128), None), ((7, 10), 6)])
@pytest.mark.parametrize("layout", ["half", "interleaved"])
@pytest.mark.parametrize("inverse", [False, True])
def test_cuda_rope(rng, shape, rd, layout, inverse):
    x = randn(rng, *shape)
    y = ops.rope(gpu(x), offset=1000, layout=layout, rotary_dim=rd, inverse=inverse)
    ry = reference.rope(f64(x), None, 1000, 10000.0, layout, rd, inverse)
    assert_close(host(y), ry, atol=1e-6 * np.abs(ry).max())
    pos = rng.integers(0, 1 << 30, shape[-2])
    y = ops.rope(gpu(x), positions=gpu(pos), base=500000.0, layout=layout, rotary_dim=rd)
    ry = reference.rope(f64(x), pos, 0, 500000.0, layout, rd)
    assert_close(host(y), ry, atol=1e-6 * np.abs(ry).max())


@pytest.mark.parametrize("n", [1, 7, 1031, 100003])
def test_cuda_adamw(rng, n):
    p, g, m, v = randn(rng, n), randn(rng, n), randn(rng, n) * 0.1, np.abs(randn(rng, n)) * 0.01
    gp, gm, gv = gpu(p), gpu(m), gpu(v)
    kw = dict(step=3, lr=1e-2, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1)
    ops.adamw_step(gp, gpu(g), gm, gv, **kw)
    rp, rm, rv = f64(p), f64(m), f64(v)
    reference.adamw_step(rp, f64(g), rm, rv, kw["step"], kw["lr"], kw["beta1"], kw["beta2"],
                         kw["eps"], kw["weight_decay"])
    assert_close(host(gp), rp, rtol=1e-5, what="param")
    assert_close(host(gm), rm, rtol=1e-5, what="m")
    assert_close(host(gv), rv, rtol=1e-5, what="v")


def test_cuda_grad_norm_and_clip(rng):
    grads = [randn(rng, 1), randn(rng, 7, 3), randn(rng, 100003)]
    norm = ops.grad_norm([gpu(g) for g in grads])
    assert abs(float(norm) - reference.grad_norm(grads)) <= 1e-6 * reference.grad_norm(grads)
    dev = [gpu(g) for g in grads]
    before = ops.clip_grad_norm(dev, 1.0)
    ref = [g.copy() for g in grads]
    reference.clip_grad_norm(ref, 1.0)
    assert abs(float(before) - reference.grad_norm(grads)) <= 1e-6 * float(before)
    for d, r in zip(dev, ref):
        assert_close(host(d), r, rtol=1e-5)


ATTN_CASES = [  # B, H, Hkv, T, S, D, causal
    (1, 1, 1, 1, 1, 1, True), (2, 4, 2, 5, 5, 16, True), (1, 6, 2, 37, 37, 64, True),
    (1, 2, 1, 7, 130, 32, True), (2, 3, 3, 9, 33, 17, False), (1, 8, 2, 1, 1000, 128, True),
    (1, 2, 2, 70, 70, 160, False)]


@pytest.mark.parametrize("B,H,Hkv,T,S,D,causal", ATTN_CASES)
@pytest.mark.parametrize("backend", ["naive", "flash", "decode", "auto"])
def test_cuda_attention(rng, B, H, Hkv, T, S, D, causal, backend):
    if D > 128 and backend in ("flash", "decode"):
        with pytest.raises(ValueError, match="D <= 128"):
            ops.attention(gpu(randn(rng, B, H, T, D)), gpu(randn(rng, B, Hkv, S, D)),
                          gpu(randn(rng, B, Hkv, S, D)), backend=backend)
        return
    q, k, v = randn(rng, B, H, T, D), randn(rng, B, Hkv, S, D), randn(rng, B, Hkv, S, D)
    out, lse = ops.attention(gpu(q), gpu(k), gpu(v), causal=causal, return_lse=True,
                             backend=backend)
    rout, rlse = reference.attention(f64(q), f64(k), f64(v), causal)
    assert_close(host(out), rout, rtol=1e-4, atol=1e-4 * np.abs(rout).max(), what="out")
    assert_close(host(lse), rlse, rtol=1e-4, atol=1e-4, what="lse")


@pytest.mark.parametrize("backend", ["naive", "flash", "decode"])
def test_cuda_attention_kv_cache(rng, backend):
    B, H, Hkv, T, cap, used, D = 2, 4, 2, 3, 64, 41, 32
    q, k, v = randn(rng, B, H, T, D), randn(rng, B, Hkv, cap, D), randn(rng, B, Hkv, cap, D)
    out = ops.attention(gpu(q), gpu(k), gpu(v), kv_length=used, backend=backend)
    rout, _ = reference.attention(f64(q), f64(k[:, :, :used]), f64(v[:, :, :used]), True)
    assert_close(host(out), rout, rtol=1e-4, atol=1e-4 * np.abs(rout).max())


@pytest.mark.parametrize("qtype", ["q8_0", "q4_1"])
@pytest.mark.parametrize("M,N,K", [(1, 1, 32), (1, 7, 96), (3, 33, 256), (5, 129, 576)])
@pytest.mark.parametrize("backend", ["naive", "warp"])
def test_cuda_quant(rng, qtype, M, N, K, backend):
    w = randn(rng, N, K)
    raw = reference.quantize(w, qtype)
    x = randn(rng, M, K)
    dq = ops.dequantize(gpu(raw), qtype, (N, K))
    rdq = reference.dequantize(raw, qtype, (N, K)).astype(np.float64)
    assert_close(host(dq), rdq, rtol=1e-6, atol=1e-6 * np.abs(rdq).max(), what="dequantize")
    y = ops.quant_matmul(gpu(x), gpu(raw), qtype, N, backend=backend)
    ry = f64(x) @ rdq.T
    assert_close(host(y), ry, rtol=1e-4, atol=1e-4 * (np.abs(x) @ np.abs(rdq).T).max())
    y1 = ops.quant_matmul(gpu(x[0]), gpu(raw), qtype, N, backend=backend)
    assert_close(host(y1), ry[0], rtol=1e-4, atol=1e-4 * (np.abs(x[0]) @ np.abs(rdq).T).max())


def test_cuda_mixed_and_dtype_errors(rng):
    x = gpu(randn(rng, 3, 8))
    with pytest.raises(TypeError, match="mixing numpy and device arrays"):
        ops.layernorm(x, randn(rng, 8))
    with pytest.raises(TypeError, match="float32"):
        ops.rmsnorm(x.astype(cp.float64), gpu(randn(rng, 8)))
    with pytest.raises(ValueError, match="weight has shape"):
        ops.rmsnorm(x, gpu(randn(rng, 7)))
    with pytest.raises(TypeError, match="mixing numpy and device arrays"):
        ops.silu_backward(randn(rng, 3, 8), x)
    with pytest.raises(TypeError, match="raw"):
        ops.quant_matmul(gpu(randn(rng, 32)), reference.quantize(randn(rng, 2, 32), "q8_0"),
                         "q8_0", 2)


@pytest.mark.parametrize("backend", matmul_family.VERSIONS.names("cuda"))
def test_cuda_matmul_batched_accumulate(rng, backend):
    a, b = randn(rng, 3, 67, 44), randn(rng, 44, 72)  # k, n multiples of 4: float4 loads
    c0 = randn(rng, 3, 67, 72)
    c = gpu(c0)
    ops.matmul(gpu(a), gpu(b), out=c, accumulate=True, backend=backend)
    ref = c0.astype(np.float64) + f64(a) @ f64(b)
    np.testing.assert_allclose(host(c), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (2, 5, 33), (4, 1000), (2, 50257)])
@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("backend", ["naive", "fused"])
def test_cuda_softmax_backward(rng, shape, log, backend):
    x, dy = randn(rng, *shape, scale=3.0), randn(rng, *shape)
    causal = len(shape) == 3  # masked entries: y = 0 (softmax) or -inf (log-softmax)
    fwd = ops.log_softmax if log else ops.softmax
    bwd = ops.log_softmax_backward if log else ops.softmax_backward
    y = fwd(x, scale=0.7, causal=causal)
    dx = bwd(gpu(dy), gpu(y), scale=0.7, backend=backend)
    ref = (reference.log_softmax_backward if log else reference.softmax_backward)(
        f64(dy), f64(y), scale=0.7)
    terms = 0.7 * np.abs(f64(dy)).max() * (1 if log else np.abs(f64(y)).max())
    assert_close(host(dx), ref, rtol=1e-4, atol=1e-4 * terms)


ATTN_BWD_CASES = [  # B, H, Hkv, T, S, D, causal
    (1, 1, 1, 1, 1, 1, True), (2, 4, 2, 5, 5, 16, True), (1, 6, 2, 37, 37, 64, True),
    (1, 2, 1, 7, 40, 32, True), (2, 3, 3, 9, 33, 17, False), (1, 2, 2, 33, 70, 128, False),
    (1, 2, 1, 12, 12, 160, True)]


@pytest.mark.parametrize("B,H,Hkv,T,S,D,causal", ATTN_BWD_CASES)
@pytest.mark.parametrize("backend", ["naive", "flash", "auto"])
def test_cuda_attention_backward(rng, B, H, Hkv, T, S, D, causal, backend):
    q, k, v = randn(rng, B, H, T, D), randn(rng, B, Hkv, S, D), randn(rng, B, Hkv, S, D)
    dout = randn(rng, B, H, T, D)
    out, lse = ops.attention(q, k, v, causal=causal, return_lse=True, backend="numpy")
    if D > 128 and backend == "flash":
        with pytest.raises(ValueError, match="D <= 128"):
            ops.attention_backward(gpu(dout), gpu(q), gpu(k), gpu(v), gpu(out), gpu(lse),
                                   causal=causal, backend=backend)
        return
    dq, dk, dv = ops.attention_backward(gpu(dout), gpu(q), gpu(k), gpu(v), gpu(out), gpu(lse),
                                        causal=causal, backend=backend)
    refs = reference.attention_backward(f64(dout), f64(q), f64(k), f64(v), f64(out), f64(lse),
                                        causal)
    for got, ref, name in zip((dq, dk, dv), refs, ("dq", "dk", "dv")):
        assert_close(host(got), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max(), what=name)


def test_cuda_attention_backward_matches_finite_differences(rng):
    # the float64 reference itself checked: d/dq of sum(out * w) by central differences
    B, H, Hkv, T, S, D = 1, 2, 1, 4, 6, 8
    q, k, v = (rng.standard_normal(s) for s in ((B, H, T, D), (B, Hkv, S, D), (B, Hkv, S, D)))
    w = rng.standard_normal((B, H, T, D))
    out, lse = reference.attention(q, k, v, True)
    dq, dk, dv = ops.attention_backward(*(gpu(a.astype(np.float32)) for a in (w, q, k, v, out,
                                                                            lse)))
    h = 1e-6
    for idx in [(0, 1, 2, 3), (0, 0, 3, 0)]:
        qp, qm = q.copy(), q.copy()
        qp[idx] += h
        qm[idx] -= h
        fd = ((reference.attention(qp, k, v, True)[0] * w).sum()
              - (reference.attention(qm, k, v, True)[0] * w).sum()) / (2 * h)
        assert abs(host(dq)[idx] - fd) <= 1e-3 * max(1.0, abs(fd))


def test_cuda_bf16_round_trip(rng):
    x = randn(rng, 1001, scale=10.0)
    x[:4] = [np.nan, np.inf, -0.0, 3.0e38]
    bits = ops.to_bf16(gpu(x))
    assert bits.dtype == np.uint16
    ref = reference.to_bf16(x)
    np.testing.assert_array_equal(host(bits)[1:], ref[1:])
    assert np.isnan(host(ops.from_bf16(bits))[0])
    np.testing.assert_array_equal(host(ops.from_bf16(bits))[1:], reference.from_bf16(ref)[1:])


@pytest.mark.parametrize("M,K,N", [(1, 1, 1), (7, 13, 5), (64, 64, 64), (67, 130, 129),
                                   (3, 576, 200)])
@pytest.mark.parametrize("ta,tb", [(False, False), (False, True), (True, False), (True, True)])
@pytest.mark.parametrize("backend", ["naive", "wmma"])
def test_cuda_matmul_bf16(rng, M, K, N, ta, tb, backend):
    a = reference.to_bf16(randn(rng, *((K, M) if ta else (M, K))))
    b = reference.to_bf16(randn(rng, *((N, K) if tb else (K, N))))
    bias, c0 = randn(rng, N), randn(rng, M, N)
    fa, fb = f64(reference.from_bf16(a)), f64(reference.from_bf16(b))
    fa, fb = (fa.T if ta else fa), (fb.T if tb else fb)
    ref, terms = fa @ fb, np.abs(fa) @ np.abs(fb)
    c = ops.matmul_bf16(gpu(a), gpu(b), trans_a=ta, trans_b=tb, backend=backend)
    # products of bf16 values are exact in float32; the sums round (tensor cores may truncate)
    assert_close(host(c), ref, rtol=0, atol=1e-4 * terms.max())
    out = gpu(c0)
    ops.matmul_bf16(gpu(a), gpu(b), gpu(bias), trans_a=ta, trans_b=tb, out=out,
                      accumulate=True, backend=backend)
    assert_close(host(out), c0 + ref + bias, rtol=0, atol=1e-4 * (terms.max() + 3))


@pytest.mark.parametrize("backend", ["naive", "wmma"])
def test_cuda_bf16_matmul_op(rng, backend):
    x, w = randn(rng, 5, 96), reference.to_bf16(randn(rng, 33, 96))
    y = ops.bf16_matmul(gpu(x), gpu(w), backend=backend)
    xr = reference.from_bf16(reference.to_bf16(x))
    ref = ops.bf16_matmul(xr, w, backend="numpy")
    assert_close(host(y), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    y1 = ops.bf16_matmul(gpu(x[0]), gpu(w), backend=backend)
    assert y1.shape == (33,)
    assert_close(host(y1), ref[0], rtol=1e-4, atol=1e-4 * np.abs(ref).max())


TC_CASES = [  # B, H, Hkv, T, S, D, causal
    (1, 1, 1, 1, 1, 16, True), (2, 4, 2, 5, 5, 16, True), (1, 2, 1, 70, 70, 64, True),
    (1, 2, 2, 7, 130, 32, True), (2, 3, 3, 65, 33, 48, False), (1, 2, 1, 3, 90, 128, True)]


@pytest.mark.parametrize("B,H,Hkv,T,S,D,causal", TC_CASES)
def test_cuda_attention_tensor_cores(rng, B, H, Hkv, T, S, D, causal):
    q, k, v = randn(rng, B, H, T, D), randn(rng, B, Hkv, S, D), randn(rng, B, Hkv, S, D)
    out, lse = ops.attention(gpu(q), gpu(k), gpu(v), causal=causal, return_lse=True,
                             backend="flash_tc")
    # the reference on the same bf16-rounded inputs; P is rounded to bf16 in the kernel too
    qr, kr, vr = (f64(reference.from_bf16(reference.to_bf16(a))) for a in (q, k, v))
    rout, rlse = reference.attention(qr, kr, vr, causal)
    assert_close(host(out), rout, rtol=0, atol=1e-2 * np.abs(rout).max(), what="out")
    assert_close(host(lse), rlse, rtol=1e-4, atol=1e-4, what="lse")


def test_cuda_attention_tensor_cores_kv_cache_and_errors(rng):
    B, H, Hkv, T, cap, used, D = 1, 4, 2, 3, 80, 67, 32
    q, k, v = randn(rng, B, H, T, D), randn(rng, B, Hkv, cap, D), randn(rng, B, Hkv, cap, D)
    out = ops.attention(gpu(q), gpu(k), gpu(v), kv_length=used, backend="flash_tc")
    qr, kr, vr = (f64(reference.from_bf16(reference.to_bf16(a))) for a in (q, k, v))
    rout, _ = reference.attention(qr, kr[:, :, :used], vr[:, :, :used], True)
    assert_close(host(out), rout, rtol=0, atol=1e-2 * np.abs(rout).max())
    with pytest.raises(ValueError, match="multiple of 16"):
        ops.attention(gpu(randn(rng, 1, 1, 4, 24)), gpu(randn(rng, 1, 1, 4, 24)),
                      gpu(randn(rng, 1, 1, 4, 24)), backend="flash_tc")


# ---- selective scan: the launchers themselves (csrc/cuda/ssm.cu) ----------------------------

from kernelgpt import _C  # noqa: E402

SCAN_SHAPES = [(1, 1, 1, 1), (2, 7, 3, 5), (3, 37, 19, 16), (2, 33, 40, 17)]  # Bt, T, E, N
SCAN_VERSIONS = [  # (version, chunk); chunk None: the whole sequence in one chunk (no work)
    pytest.param(1, None, id="naive"), pytest.param(2, 1, id="chunked-1"),
    pytest.param(2, 5, id="chunked-5"), pytest.param(2, None, id="chunked-T")]


def scan_lib():
    """The compiled launchers of the current device: the emulator's or the CUDA build's."""
    return cuda_emu._lib() if cp is cuda_emu else _C


def stream():
    return cp.cuda.get_current_stream().ptr


def nans(*shape):
    """An uninitialized device array that shows what a kernel left unwritten (NaN)."""
    a = cp.empty(shape, np.float32)
    a.fill(np.nan)
    return a


def ptrs(*arrays):
    return [0 if a is None else a.data.ptr for a in arrays]


def scan_inputs(rng, Bt, T, E, N):
    """As the layer makes them: delta = softplus(.) > 0, A = -exp(.) < 0."""
    u = randn(rng, Bt, T, E)
    delta = np.logaddexp(0, randn(rng, Bt, T, E)).astype(np.float32)
    A = (-np.exp(randn(rng, E, N, scale=0.5))).astype(np.float32)
    return u, delta, A, randn(rng, Bt, T, N), randn(rng, Bt, T, N), randn(rng, E)


def cuda_scan(version, args, h0, chunk, want_state=True):
    """y (and the final state) from cuda_selective_scan; every device array is kept alive
    until the launch has finished."""
    Bt, T, E = args[0].shape
    N = args[2].shape[1]
    dev = [gpu(a) for a in args]
    dh0 = None if h0 is None else gpu(h0)
    y, h = nans(Bt, T, E), (nans(Bt, E, N) if want_state else None)
    nchunks = 1 if chunk is None else -(-T // chunk)
    work = nans(2 * Bt * nchunks * N * E) if nchunks > 1 else None
    scan_lib().cuda_selective_scan(version, *ptrs(*dev, dh0, y, h), Bt, T, E, N,
                                   T if chunk is None else chunk, *ptrs(work), stream())
    cp.cuda.get_current_stream().synchronize()
    return host(y), (None if h is None else host(h))


@pytest.mark.parametrize("shape", SCAN_SHAPES)
@pytest.mark.parametrize("version,chunk", SCAN_VERSIONS)
@pytest.mark.parametrize("with_h0", [True, False], ids=["h0", "zero-state"])
def test_cuda_selective_scan(rng, shape, version, chunk, with_h0):
    Bt, T, E, N = shape
    args = scan_inputs(rng, *shape)
    h0 = randn(rng, Bt, E, N) if with_h0 else None
    ry, rh = reference.selective_scan(*(f64(a) for a in args),
                                      h0=None if h0 is None else f64(h0), return_state=True)
    y, h = cuda_scan(version, args, h0, chunk)
    assert_close(y, ry, rtol=1e-5, atol=1e-5 * np.abs(ry).max(), what="y")
    assert_close(h, rh, rtol=1e-5, atol=1e-5 * np.abs(rh).max(), what="state")
    if not with_h0:  # no final state asked for: y alone
        y2, _ = cuda_scan(version, args, None, chunk, want_state=False)
        assert_close(y2, ry, rtol=1e-5, atol=1e-5 * np.abs(ry).max(), what="y without state")


@pytest.mark.parametrize("shape", SCAN_SHAPES)
def test_cuda_selective_scan_backward(rng, shape):
    Bt, T, E, N = shape
    args = scan_inputs(rng, *shape)
    dy = randn(rng, Bt, T, E)
    dev = [gpu(a) for a in (dy, *args)]
    grads = [nans(*a.shape) for a in args]  # du, d_delta, dA, dB, dC, dD
    work = nans(Bt * (T + 1) * N * E)
    scan_lib().cuda_selective_scan_backward(1, *ptrs(*dev, *grads), Bt, T, E, N, *ptrs(work),
                                            stream())
    cp.cuda.get_current_stream().synchronize()
    expected = reference.selective_scan_backward(f64(dy), *(f64(a) for a in args))
    for name, g, e in zip(["du", "d_delta", "dA", "dB", "dC", "dD"], grads, expected):
        assert_close(host(g), e, rtol=1e-4, atol=1e-5 * max(float(np.abs(e).max()), 1e-30),
                     what=name)
