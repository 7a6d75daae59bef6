// Elementwise activations, float32, over n contiguous values.
//
//   relu(x)      = max(x, 0)                     relu'(x)    = 1 if x > 0 else 0
//   sigmoid(x)   = 1 / (1 + exp(-x))             sigmoid'(x) = sigmoid(x) * sigmoid(-x)
//   tanh(x)                                      tanh'(x)    = 1 - tanh(x)^2
//   silu(x)      = x * sigmoid(x)                silu'(x)    = s + x * s * (1 - s), s = sigmoid(x)
//   gelu (tanh)  = 0.5 x (1 + tanh(u)) = x * sigmoid(2u),  u = sqrt(2/pi) (x + 0.044715 x^3)
//   gelu (none)  = x * Phi(x) = 0.5 x erfc(-x / sqrt(2))  (Phi: the standard normal CDF)
//   swiglu(gate, up) = silu(gate) * up
//
// swiglu also takes the packed layout of Llama's fused gate/up projection: h [rows, 2n] with
// gate = h[:, :n] and up = h[:, n:] (rows > 0 and ld_in = 2n in SwigluArgs), so that the two
// halves need no copies; its backward then writes dgate and dup into d_h [rows, 2n] likewise.
//
// Backward kernels take the forward's input x (not its output) and dy, and return
// dx = dy * f'(x); swiglu's backward returns dgate = dy * up * silu'(gate), dup = dy * silu(gate).
#pragma once
#include <cstdint>

#include "common/isa.h"

namespace kg {

enum class Activation : int { relu = 0, sigmoid, tanh, silu, gelu_tanh, gelu_erf };

struct ActivationArgs {
  const float* x = nullptr;
  const float* dy = nullptr;  // backward only
  float* out = nullptr;       // forward: f(x); backward: dx
  int64_t n = 0;
  Activation kind = Activation::relu;
};

struct SwigluArgs {
  const float* gate = nullptr;
  const float* up = nullptr;
  const float* dy = nullptr;  // backward only
  float* out = nullptr;       // forward only
  float* dgate = nullptr;     // backward only
  float* dup = nullptr;       // backward only
  int64_t n = 0;              // values (per row when rows > 0)
  // rows > 0: `rows` rows of n values; row r of gate and up starts at r * ld_in, of dgate and
  // dup at r * ld_grad; out and dy are contiguous [rows, n]. rows == 0: n contiguous values.
  int64_t rows = 0;
  int64_t ld_in = 0;
  int64_t ld_grad = 0;
};

struct ActivationVersion {
  void (*forward)(const ActivationArgs&);
  void (*backward)(const ActivationArgs&);
  void (*swiglu)(const SwigluArgs&);
  void (*swiglu_backward)(const SwigluArgs&);
};

// The vectorised math of common/simd.h applied to n values (for the accuracy tests).
enum class SimdMath : int { exp = 0, tanh, sigmoid };

struct ActivationKernels {
  ActivationVersion naive;  // version 1: scalar loops with std:: math, one thread
  ActivationVersion fast;   // version 2: simd.h vectors, threads, one pass
  const char* fast_description;
  void (*simd_math)(SimdMath fn, const float* x, float* y, int64_t n);
  // Version 2's formulas on one span, on the calling thread (the epilogue of a GEMM tile, for
  // a fused linear + activation): y = f(x), and out = dy * f'(x) (out may be dy). Results match
  // version 2's to its documented accuracy (bit for bit except where gelu's float64 branch,
  // taken per vector, sees a different grouping of lanes: 2e-6 relative at most).
  void (*span_forward)(Activation kind, const float* x, float* y, int64_t n);
  void (*span_backward)(Activation kind, const float* dy, const float* x, float* out, int64_t n);
};

}  // namespace kg

KG_DECLARE_PER_ISA(ActivationKernels, activation_kernels)
