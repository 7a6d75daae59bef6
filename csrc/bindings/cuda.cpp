// CUDA launchers for device arrays (CuPy, or kernelgpt.cuda_emu on the CPU emulator). Python
// (python/kernelgpt/kernels/<family>.py, with kernelgpt/device.py) checks the arrays and passes
// the version number, raw device pointers and the current stream; nothing here touches host
// memory. Version numbers are the family's (the Versions(...) table of its Python module).
#include <initializer_list>
#include <stdexcept>
#include <string>

#include "bindings/args.h"
#include "bindings/registry.h"

#if KG_HAVE_CUDA
#include "cuda/cuda_kernels.h"
#endif

namespace kg {
namespace bind {

#if KG_HAVE_CUDA
namespace {

// Device pointers arrive as integers (CuPy's data.ptr); 0 means "none".
template <typename T>
T* ptr(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

// The CUDA versions of each family, numbered as in python/kernelgpt/kernels/<family>.py (a
// number missing here is a version that exists only in C++).
using Versions = std::initializer_list<VersionName>;
const Versions kMatmulVersions = {{1, "naive"},   {2, "coalesced"},  {3, "tiled"},
                                  {4, "blocked1d"}, {5, "blocked"},    {6, "vectorized"},
                                  {7, "warptiled"}};
const Versions kSoftmaxVersions = {{1, "naive"}, {2, "online"}};
const Versions kSoftmaxBackwardVersions = {{1, "naive"}, {2, "fused"}};
const Versions kBf16MatmulVersions = {{1, "naive"}, {5, "wmma"}};
const Versions kNormVersions = {{1, "naive"}, {2, "fast"}};
const Versions kActivationVersions = {{1, "naive"}, {2, "fast"}};
const Versions kCrossEntropyVersions = {{1, "naive"}, {2, "online"}};
const Versions kEmbeddingVersions = {{1, "naive"}};
const Versions kEmbeddingBackwardVersions = {{1, "naive"}, {2, "fast"}};
const Versions kRopeVersions = {{1, "naive"}};
const Versions kAdamwVersions = {{1, "naive"}};
const Versions kAttentionVersions = {{1, "naive"}, {2, "flash"}, {3, "decode"}, {4, "flash_tc"}};
const Versions kAttentionBackwardVersions = {{1, "naive"}, {2, "flash"}};
const Versions kDequantizeVersions = {{1, "naive"}};
const Versions kQuantMatmulVersions = {{1, "naive"}, {5, "warp"}};
const Versions kScanVersions = {{1, "naive"}, {2, "chunked"}};
const Versions kScanBackwardVersions = {{1, "naive"}};

// The C++ side of the argument checks (Python checked the arrays already): sizes >= 1,
// required device pointers non-null. ValueError otherwise.
void check_sizes(const char* fn, std::initializer_list<int64_t> sizes,
                 std::initializer_list<uintptr_t> required) {
  for (int64_t n : sizes)
    if (n < 1) throw std::invalid_argument(std::string(fn) + ": sizes must be >= 1");
  for (uintptr_t p : required)
    if (!p) throw std::invalid_argument(std::string(fn) + ": a required array is missing");
}
// ... and first the version: one of the family's CUDA versions (ValueError naming them).
void check_args(const char* fn, int version, Versions versions,
                std::initializer_list<int64_t> sizes, std::initializer_list<uintptr_t> required) {
  check_version(fn, version, versions, "CUDA");
  check_sizes(fn, sizes, required);
}
// The selective scan keeps a channel's N states in a local array (csrc/cuda/ssm.cu).
void check_scan_state(const char* fn, int64_t N) {
  if (N > 128)
    throw std::invalid_argument(std::string(fn) + ": N (the state size) must be <= 128, got " +
                                std::to_string(N));
}
// Binds a launcher with the GIL released: on a GPU a launch returns at once, but the CPU
// emulator (kernelgpt._cuda_emu, the same bindings) runs the whole kernel inside the call.
template <typename F>
void launcher(py::module_& m, const char* name, F&& f) {
  m.def(name, std::forward<F>(f), py::call_guard<py::gil_scoped_release>());
}

void register_cuda_families(py::module_& m) {
  launcher(m, "cuda_layernorm", [](int ver, uintptr_t x, uintptr_t w, uintptr_t b, uintptr_t y,
                             uintptr_t mean, uintptr_t rstd, int64_t rows, int64_t cols, float eps,
                             uintptr_t s) {
    check_args("layernorm", ver, kNormVersions, {rows, cols}, {x, w, y});
    cuda::layernorm(ver, ptr<const float>(x), ptr<const float>(w), ptr<const float>(b),
                    ptr<float>(y), ptr<float>(mean), ptr<float>(rstd), rows, cols, eps, s);
  });
  launcher(m, "cuda_layernorm_backward",
        [](int ver, uintptr_t dy, uintptr_t x, uintptr_t w, uintptr_t mean, uintptr_t rstd,
           uintptr_t dx, uintptr_t dw, uintptr_t db, int64_t rows, int64_t cols, uintptr_t s) {
          check_args("layernorm_backward", ver, kNormVersions, {rows, cols},
                     {dy, x, w, mean, rstd, dx, dw});
          cuda::layernorm_backward(ver, ptr<const float>(dy), ptr<const float>(x),
                                   ptr<const float>(w), ptr<const float>(mean),
                                   ptr<const float>(rstd), ptr<float>(dx), ptr<float>(dw),
                                   ptr<float>(db), rows, cols, s);
        });
  launcher(m, "cuda_rmsnorm", [](int ver, uintptr_t x, uintptr_t w, uintptr_t y, uintptr_t rstd,
                           int64_t rows, int64_t cols, float eps, uintptr_t s) {
    check_args("rmsnorm", ver, kNormVersions, {rows, cols}, {x, w, y});
    cuda::rmsnorm(ver, ptr<const float>(x), ptr<const float>(w), ptr<float>(y), ptr<float>(rstd),
                  rows, cols, eps, s);
  });
  launcher(m, "cuda_rmsnorm_backward", [](int ver, uintptr_t dy, uintptr_t x, uintptr_t w,
                                    uintptr_t rstd, uintptr_t dx, uintptr_t dw, int64_t rows,
                                    int64_t cols, uintptr_t s) {
    check_args("rmsnorm_backward", ver, kNormVersions, {rows, cols}, {dy, x, w, rstd, dx, dw});
    cuda::rmsnorm_backward(ver, ptr<const float>(dy), ptr<const float>(x), ptr<const float>(w),
                           ptr<const float>(rstd), ptr<float>(dx), ptr<float>(dw), rows, cols, s);
  });
  launcher(m, "cuda_activation",
           [](int ver, int op, uintptr_t x, uintptr_t y, int64_t n, uintptr_t s) {
    check_args("activation", ver, kActivationVersions, {n, op + 1, 6 - op}, {x, y});
    cuda::activation(ver, op, ptr<const float>(x), ptr<float>(y), n, s);
  });
  launcher(m, "cuda_activation_backward",
        [](int ver, int op, uintptr_t dy, uintptr_t x, uintptr_t dx, int64_t n, uintptr_t s) {
          check_args("activation_backward", ver, kActivationVersions, {n, op + 1, 6 - op},
                     {dy, x, dx});
          cuda::activation_backward(ver, op, ptr<const float>(dy), ptr<const float>(x),
                                    ptr<float>(dx), n, s);
        });
  launcher(m, "cuda_swiglu",
           [](int ver, uintptr_t g, uintptr_t u, uintptr_t y, int64_t n, uintptr_t s) {
    check_args("swiglu", ver, kActivationVersions, {n}, {g, u, y});
    cuda::swiglu(ver, ptr<const float>(g), ptr<const float>(u), ptr<float>(y), n, s);
  });
  launcher(m, "cuda_swiglu_backward",
           [](int ver, uintptr_t dy, uintptr_t g, uintptr_t u, uintptr_t dg,
                                   uintptr_t du, int64_t n, uintptr_t s) {
    check_args("swiglu_backward", ver, kActivationVersions, {n}, {dy, g, u, dg, du});
    cuda::swiglu_backward(ver, ptr<const float>(dy), ptr<const float>(g), ptr<const float>(u),
                          ptr<float>(dg), ptr<float>(du), n, s);
  });
  launcher(m, "cuda_cross_entropy",
        [](int ver, uintptr_t logits, uintptr_t targets, uintptr_t losses, uintptr_t dlogits,
           uintptr_t weight, int64_t weight_stride, int64_t n, int64_t v, int64_t ignore_index,
           uintptr_t s) {
          check_args("cross_entropy", ver, kCrossEntropyVersions, {n, v, weight_stride + 1},
                     {logits, targets, weight});
          cuda::cross_entropy(ver, ptr<const float>(logits), ptr<const int64_t>(targets),
                              ptr<float>(losses), ptr<float>(dlogits), ptr<const float>(weight),
                              weight_stride, n, v, ignore_index, s);
        });
  launcher(m, "cuda_embedding",
           [](int ver, uintptr_t ids, uintptr_t table, uintptr_t out, int64_t n,
                             int64_t vocab, int64_t c, uintptr_t s) {
    check_args("embedding", ver, kEmbeddingVersions, {n, vocab, c}, {ids, table, out});
    cuda::embedding(ver, ptr<const int64_t>(ids), ptr<const float>(table), ptr<float>(out), n,
                    vocab, c, s);
  });
  launcher(m, "cuda_embedding_backward",
        [](int ver, uintptr_t dout, uintptr_t ids, uintptr_t order, uintptr_t dtable, int64_t n,
           int64_t vocab, int64_t c, uintptr_t s) {
          check_args("embedding_backward", ver, kEmbeddingBackwardVersions, {n, vocab, c},
                     {dout, ids, dtable, ver == 2 ? order : 1});
          cuda::embedding_backward(ver, ptr<const float>(dout), ptr<const int64_t>(ids),
                                   ptr<const int64_t>(order), ptr<float>(dtable), n, vocab, c, s);
        });
  launcher(m, "cuda_rope",
           [](int ver, uintptr_t x, uintptr_t y, uintptr_t positions, int64_t offset,
                        double base, bool interleaved, int64_t rotary_dim, bool inverse,
                        int64_t rows, int64_t t, int64_t d, uintptr_t s) {
    check_args("rope", ver, kRopeVersions,
               {rows, t, d, rotary_dim, d - rotary_dim + 1, offset + 1}, {x, y});
    cuda::rope(ver, ptr<const float>(x), ptr<float>(y), ptr<const int64_t>(positions), offset,
               base, interleaved, rotary_dim, inverse, rows, t, d, s);
  });
  launcher(m, "cuda_adamw", [](int ver, uintptr_t param, uintptr_t grad, uintptr_t mm, uintptr_t v,
                         int64_t n, float lr, float beta1, float beta2, float eps, float wd,
                         float bc1, float bc2, uintptr_t s) {
    check_args("adamw", ver, kAdamwVersions, {n}, {param, grad, mm, v});
    cuda::adamw(ver, ptr<float>(param), ptr<const float>(grad), ptr<float>(mm), ptr<float>(v), n,
                lr, beta1, beta2, eps, wd, bc1, bc2, s);
  });
  m.def("cuda_grad_norm_partials", &cuda::grad_norm_partials);
  launcher(m, "cuda_grad_norm_accumulate", [](uintptr_t g, int64_t n, uintptr_t partials,
                                        uintptr_t total, uintptr_t s) {
    cuda::grad_norm_accumulate(ptr<const float>(g), n, ptr<double>(partials), ptr<double>(total),
                               s);
  });
  launcher(m, "cuda_clip_scale",
           [](uintptr_t g, int64_t n, uintptr_t total, float max_norm, float eps,
                              uintptr_t s) {
    cuda::clip_scale(ptr<float>(g), n, ptr<const double>(total), max_norm, eps, s);
  });
  launcher(m, "cuda_attention",
           [](int ver, uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t out, uintptr_t lse,
              uintptr_t scores, int64_t b, int64_t h, int64_t hkv, int64_t t, int64_t s_len,
              int64_t cap, int64_t dh, float scale, bool causal, uintptr_t s_dev, uintptr_t s) {
             check_args("attention", ver, kAttentionVersions, {b, h, hkv, t, s_len, cap, dh},
                        {q, k, v, out, ver == 1 ? scores : 1});
             cuda::attention(ver, ptr<const float>(q), ptr<const float>(k), ptr<const float>(v),
                             ptr<float>(out), ptr<float>(lse), ptr<float>(scores), b, h, hkv, t,
                             s_len, cap, dh, scale, causal, ptr<const int64_t>(s_dev), s);
           });
  launcher(m, "cuda_kv_write", [](uintptr_t cache, uintptr_t src, uintptr_t pos, int64_t hkv,
                                  int64_t cap, int64_t dh, uintptr_t s) {
    check_sizes("kv_write", {hkv, cap, dh}, {cache, src, pos});
    cuda::kv_write(ptr<float>(cache), ptr<const float>(src), ptr<const int64_t>(pos), hkv, cap,
                   dh, s);
  });
  launcher(m, "cuda_attention_backward",
        [](int ver, uintptr_t dout, uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t out,
           uintptr_t lse, uintptr_t dq, uintptr_t dk, uintptr_t dv, uintptr_t delta,
           uintptr_t scores, int64_t b, int64_t h, int64_t hkv, int64_t t, int64_t s_len,
           int64_t dh, float scale, bool causal, uintptr_t s) {
          check_args("attention_backward", ver, kAttentionBackwardVersions,
                     {b, h, hkv, t, s_len, dh},
                     {dout, q, k, v, out, lse, dq, dk, dv, delta, ver == 1 ? scores : 1});
          cuda::attention_backward(ver, ptr<const float>(dout), ptr<const float>(q),
                                   ptr<const float>(k), ptr<const float>(v),
                                   ptr<const float>(out), ptr<const float>(lse), ptr<float>(dq),
                                   ptr<float>(dk), ptr<float>(dv), ptr<float>(delta),
                                   ptr<float>(scores), b, h, hkv, t, s_len, dh, scale, causal, s);
        });
  launcher(m, "cuda_dequantize",
           [](int ver, int qtype, uintptr_t raw, uintptr_t out, int64_t blocks,
                              uintptr_t s) {
    check_args("dequantize", ver, kDequantizeVersions, {blocks}, {raw, out});
    cuda::dequantize(ver, qtype, ptr<const uint8_t>(raw), ptr<float>(out), blocks, s);
  });
  launcher(m, "cuda_quant_matmul", [](int ver, int qtype, uintptr_t x, uintptr_t raw,
                                      uintptr_t y, int64_t mm, int64_t n, int64_t k,
                                      bool accumulate, uintptr_t s) {
    check_args("quant_matmul", ver, kQuantMatmulVersions, {mm, n, k}, {x, raw, y});
    cuda::quant_matmul(ver, qtype, ptr<const float>(x), ptr<const uint8_t>(raw), ptr<float>(y),
                       mm, n, k, accumulate, s);
  });
  launcher(m, "cuda_dequantize_rows", [](int qtype, uintptr_t raw, uintptr_t ids, uintptr_t out,
                                         int64_t n, int64_t k, uintptr_t s) {
    check_sizes("dequantize_rows", {n, k}, {raw, ids, out});
    cuda::dequantize_rows(qtype, ptr<const uint8_t>(raw), ptr<const int64_t>(ids),
                          ptr<float>(out), n, k, s);
  });
  // h0, h_out may be 0 (a zero start state, no final state); work (version 2) holds
  // 2 * batch * ceil(T / chunk) * N * E floats, and may be 0 when chunk >= T.
  launcher(m, "cuda_selective_scan",
           [](int ver, uintptr_t u, uintptr_t delta, uintptr_t A, uintptr_t B, uintptr_t C,
              uintptr_t D, uintptr_t h0, uintptr_t y, uintptr_t h_out, int64_t batch, int64_t T,
              int64_t E, int64_t N, int64_t chunk, uintptr_t work, uintptr_t s) {
             bool chunked = ver == 2;
             check_args("selective_scan", ver, kScanVersions,
                        {batch, T, E, N, chunked ? chunk : 1},
                        {u, delta, A, B, C, D, y, chunked && chunk < T ? work : 1});
             check_scan_state("selective_scan", N);
             cuda::selective_scan(ver, ptr<const float>(u), ptr<const float>(delta),
                                  ptr<const float>(A), ptr<const float>(B), ptr<const float>(C),
                                  ptr<const float>(D), ptr<const float>(h0), ptr<float>(y),
                                  ptr<float>(h_out), batch, T, E, N, chunk, ptr<float>(work), s);
           });
  // work: batch * (T + 1) * N * E floats.
  launcher(m, "cuda_selective_scan_backward",
           [](int ver, uintptr_t dy, uintptr_t u, uintptr_t delta, uintptr_t A, uintptr_t B,
              uintptr_t C, uintptr_t D, uintptr_t du, uintptr_t d_delta, uintptr_t dA,
              uintptr_t dB, uintptr_t dC, uintptr_t dD, int64_t batch, int64_t T, int64_t E,
              int64_t N, uintptr_t work, uintptr_t s) {
             check_args("selective_scan_backward", ver, kScanBackwardVersions, {batch, T, E, N},
                        {dy, u, delta, A, B, C, D, du, d_delta, dA, dB, dC, dD, work});
             check_scan_state("selective_scan_backward", N);
             cuda::selective_scan_backward(
                 ver, ptr<const float>(dy), ptr<const float>(u), ptr<const float>(delta),
                 ptr<const float>(A), ptr<const float>(B), ptr<const float>(C),
                 ptr<const float>(D), ptr<float>(du), ptr<float>(d_delta), ptr<float>(dA),
                 ptr<float>(dB), ptr<float>(dC), ptr<float>(dD), batch, T, E, N,
                 ptr<float>(work), s);
           });
}

}  // namespace
#endif

void register_cuda(py::module_& m) {
#if KG_HAVE_CUDA
  m.def("cuda_device_count", &cuda::device_count);
  launcher(
      m, "cuda_matmul",
      [](int version, uintptr_t a, uintptr_t b, uintptr_t bias, uintptr_t c, int64_t batch,
         int64_t mm, int64_t n, int64_t k, int64_t sa, int64_t sb, int64_t sc, bool trans_a,
         bool trans_b, bool accumulate, uintptr_t stream) {
        check_args("matmul", version, kMatmulVersions, {batch, mm, n, k}, {a, b, c});
        cuda::matmul(version, reinterpret_cast<const float*>(a), reinterpret_cast<const float*>(b),
                     reinterpret_cast<const float*>(bias), reinterpret_cast<float*>(c), batch, mm,
                     n, k, sa, sb, sc, trans_a, trans_b, accumulate, stream);
      });
  launcher(m, "cuda_softmax", [](int version, uintptr_t x, uintptr_t y, int64_t rows, int64_t cols,
                           int64_t t, float scale, bool causal, bool log, uintptr_t stream) {
    check_args("softmax", version, kSoftmaxVersions, {rows, cols, t}, {x, y});
    cuda::softmax(version, reinterpret_cast<const float*>(x), reinterpret_cast<float*>(y), rows,
                  cols, t, scale, causal, log, stream);
  });
  launcher(m, "cuda_matmul_bf16", [](int version, uintptr_t a, uintptr_t b, uintptr_t bias,
                               uintptr_t c, int64_t mm, int64_t n, int64_t k, bool trans_a,
                               bool trans_b, bool accumulate, uintptr_t stream) {
    check_args("matmul_bf16", version, kBf16MatmulVersions, {mm, n, k}, {a, b, c});
    cuda::matmul_bf16(version, ptr<const uint16_t>(a), ptr<const uint16_t>(b),
                      ptr<const float>(bias), ptr<float>(c), mm, n, k, trans_a, trans_b,
                      accumulate, stream);
  });
  launcher(m, "cuda_to_bf16", [](uintptr_t x, uintptr_t y, int64_t n, uintptr_t stream) {
    check_sizes("to_bf16", {n}, {x, y});
    cuda::to_bf16(ptr<const float>(x), ptr<uint16_t>(y), n, stream);
  });
  launcher(m, "cuda_softmax_backward", [](int version, uintptr_t dy, uintptr_t y, uintptr_t dx,
                                    int64_t rows, int64_t cols, float scale, bool log,
                                    uintptr_t stream) {
    check_args("softmax_backward", version, kSoftmaxBackwardVersions, {rows, cols},
               {dy, y, dx});
    cuda::softmax_backward(version, ptr<const float>(dy), ptr<const float>(y), ptr<float>(dx),
                           rows, cols, scale, log, stream);
  });
  register_cuda_families(m);
#else
  (void)m;
#endif
}

}  // namespace bind
}  // namespace kg
