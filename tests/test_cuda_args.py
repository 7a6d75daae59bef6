"""The C++ argument checks of the CUDA launchers: they run before any CUDA call, so this
needs a CUDA build of kernelgpt but no GPU (skipped in CPU-only builds)."""
import pytest

from kernelgpt import _C

if not hasattr(_C, "cuda_device_count"):
    pytest.skip("kernelgpt was built without CUDA", allow_module_level=True)


def test_bad_version_is_a_value_error():
    with pytest.raises(ValueError, match=r"layernorm: version 5 out of range \[0, 2\)"):
        _C.cuda_layernorm(5, 1, 1, 0, 1, 0, 0, 3, 4, 1e-5, 0)
    with pytest.raises(ValueError, match="attention: version 4"):
        _C.cuda_attention(4, 1, 1, 1, 1, 0, 1, 1, 2, 2, 5, 5, 5, 16, 0.25, True, 0, 0)


@pytest.mark.parametrize("call", [
    lambda: _C.cuda_rmsnorm(1, 1, 1, 1, 0, 0, 7, 1e-6, 0),             # zero rows
    lambda: _C.cuda_activation(0, 6, 1, 1, 10, 0),                        # unknown op
    lambda: _C.cuda_rope(0, 1, 1, 0, 0, 1e4, False, 6, False, 3, 3, 4, 0),  # rotary_dim > D
    lambda: _C.cuda_cross_entropy(1, 1, 1, 0, 1, 1, -1, 4, 9, -100, 0),   # negative stride
    lambda: _C.cuda_embedding(0, 1, 1, 1, 5, 0, 3, 0),                    # empty table
])
def test_bad_size_is_a_value_error(call):
    with pytest.raises(ValueError, match="sizes must be >= 1"):
        call()


@pytest.mark.parametrize("call", [
    lambda: _C.cuda_quant_matmul(1, 8, 0, 1, 1, 1, 1, 32, False, 0),      # x missing
    lambda: _C.cuda_attention(0, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 1, 8, 0.3, True, 0, 0),
    lambda: _C.cuda_kv_write(1, 0, 1, 2, 8, 4, 0),                        # src missing
    lambda: _C.cuda_embedding_backward(1, 1, 1, 0, 1, 4, 9, 3, 0),        # sorted: order
    lambda: _C.cuda_adamw(0, 1, 0, 1, 1, 5, 1e-3, 0.9, 0.99, 1e-8, 0.0, 0.1, 0.01, 0),
])
def test_missing_array_is_a_value_error(call):
    with pytest.raises(ValueError, match="a required array is missing"):
        call()
