"""The C++ argument checks of the CUDA launchers: they run before any CUDA call, so this
needs a CUDA build of kernelgpt but no GPU (skipped in CPU-only builds)."""
import pytest

from kernelgpt import _C

if not hasattr(_C, "cuda_device_count"):
    pytest.skip("kernelgpt was built without CUDA", allow_module_level=True)


def test_bad_version_is_a_value_error():
    # the launchers take the family's version numbers (kernels/<family>.py), not indices
    with pytest.raises(ValueError, match=r"layernorm: unknown version 5 for the CUDA kernel, "
                                         r"expected one of 1 \(naive\), 2 \(fast\)"):
        _C.cuda_layernorm(5, 1, 1, 0, 1, 0, 0, 3, 4, 1e-5, 0)
    with pytest.raises(ValueError, match="attention: unknown version 5"):
        _C.cuda_attention(5, 1, 1, 1, 1, 0, 1, 1, 2, 2, 5, 5, 5, 16, 0.25, True, 0, 0)
    with pytest.raises(ValueError, match=r"matmul: unknown version 0 .* 1 \(naive\), "
                                         r"2 \(coalesced\), .* 7 \(warptiled\)"):
        _C.cuda_matmul(0, 1, 1, 0, 1, 1, 2, 2, 2, 0, 0, 4, False, False, False, 0)
    with pytest.raises(ValueError, match=r"quant_matmul: unknown version 2 for the CUDA kernel, "
                                         r"expected one of 1 \(naive\), 5 \(warp\)"):
        _C.cuda_quant_matmul(2, 8, 1, 1, 1, 1, 1, 32, False, 0)  # fused is C++ only


@pytest.mark.parametrize("call", [
    lambda: _C.cuda_rmsnorm(2, 1, 1, 1, 0, 0, 7, 1e-6, 0),             # zero rows
    lambda: _C.cuda_activation(1, 6, 1, 1, 10, 0),                        # unknown op
    lambda: _C.cuda_rope(1, 1, 1, 0, 0, 1e4, False, 6, False, 3, 3, 4, 0),  # rotary_dim > D
    lambda: _C.cuda_cross_entropy(2, 1, 1, 0, 1, 1, -1, 4, 9, -100, 0),   # negative stride
    lambda: _C.cuda_embedding(1, 1, 1, 1, 5, 0, 3, 0),                    # empty table
])
def test_bad_size_is_a_value_error(call):
    with pytest.raises(ValueError, match="sizes must be >= 1"):
        call()


@pytest.mark.parametrize("call", [
    lambda: _C.cuda_quant_matmul(5, 8, 0, 1, 1, 1, 1, 32, False, 0),      # x missing
    lambda: _C.cuda_attention(1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 1, 8, 0.3, True, 0, 0),
    lambda: _C.cuda_kv_write(1, 0, 1, 2, 8, 4, 0),                        # src missing
    lambda: _C.cuda_embedding_backward(2, 1, 1, 0, 1, 4, 9, 3, 0),        # sorted: order
    lambda: _C.cuda_adamw(1, 1, 0, 1, 1, 5, 1e-3, 0.9, 0.99, 1e-8, 0.0, 0.1, 0.01, 0),
])
def test_missing_array_is_a_value_error(call):
    with pytest.raises(ValueError, match="a required array is missing"):
        call()


# the selective scan: (version, u, delta, A, B, C, D, h0, y, h_out, batch, T, E, N, chunk, work,
# stream) and (version, dy, u, delta, A, B, C, D, du, d_delta, dA, dB, dC, dD, batch, T, E, N,
# work, stream); h0 / h_out may be 0, work only when version 2 has more than one chunk
def test_selective_scan_args():
    scan, back = _C.cuda_selective_scan, _C.cuda_selective_scan_backward
    with pytest.raises(ValueError, match=r"selective_scan: unknown version 3 for the CUDA "
                                         r"kernel, expected one of 1 \(naive\), 2 \(chunked\)"):
        scan(3, 1, 1, 1, 1, 1, 1, 0, 1, 0, 2, 8, 4, 3, 4, 1, 0)
    with pytest.raises(ValueError, match=r"selective_scan_backward: unknown version 2 .* "
                                         r"1 \(naive\)$"):
        back(2, *[1] * 13, 2, 8, 4, 3, 1, 0)
    with pytest.raises(ValueError, match="sizes must be >= 1"):
        scan(2, 1, 1, 1, 1, 1, 1, 0, 1, 0, 2, 8, 4, 3, 0, 1, 0)   # chunk 0
    with pytest.raises(ValueError, match="sizes must be >= 1"):
        back(1, *[1] * 13, 2, 0, 4, 3, 1, 0)                        # T = 0
    with pytest.raises(ValueError, match="a required array is missing"):
        scan(2, 1, 1, 1, 1, 1, 1, 0, 1, 0, 2, 8, 4, 3, 4, 0, 0)   # two chunks, no work
    with pytest.raises(ValueError, match="a required array is missing"):
        scan(1, 1, 1, 1, 1, 1, 0, 0, 1, 0, 2, 8, 4, 3, 1, 0, 0)   # D missing
    with pytest.raises(ValueError, match="a required array is missing"):
        back(1, *[1] * 13, 2, 8, 4, 3, 0, 0)                        # work missing
    with pytest.raises(ValueError, match=r"N \(the state size\) must be <= 128, got 129"):
        scan(1, 1, 1, 1, 1, 1, 1, 0, 1, 0, 2, 8, 4, 129, 1, 0, 0)
    with pytest.raises(ValueError, match=r"N \(the state size\) must be <= 128"):
        back(1, *[1] * 13, 2, 8, 4, 129, 1, 0)
