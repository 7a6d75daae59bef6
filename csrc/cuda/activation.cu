// GELU (tanh and exact), SiLU, SwiGLU (and ReLU, sigmoid, tanh) on the GPU, forward and
// backward (formulas in ops.py).
//
// Versions as in python/kernelgpt/kernels/activation.py:
// version 1 "naive": one thread per element in a grid-stride loop.
// version 2 "fast": float4: each thread loads and stores four neighbours at once (16-byte
//            transactions); the n % 4 tail and unaligned arrays take the scalar path.
// The math is the CPU reference's: exp only of -|x| (no overflow), 1 - sigmoid(x) written as
// sigmoid(-x) (no cancellation), gelu_tanh as x * sigmoid(2u).
#include "cuda/common.cuh"
#include "cuda/cuda_kernels.h"

namespace kg {
namespace cuda {

enum { kGeluTanh = 0, kGeluErf = 1, kSilu = 2, kRelu = 3, kSigmoid = 4, kTanh = 5 };

__device__ inline float sigmoid(float x) {
  float e = expf(-fabsf(x));
  return x >= 0.0f ? 1.0f / (1.0f + e) : e / (1.0f + e);
}

constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kInvSqrt2Pi = 0.3989422804014327f;

__device__ inline float act_forward(int op, float x) {
  if (op == kRelu) return x > 0.0f || x != x ? x : 0.0f;  // NaN stays NaN (fmaxf drops it)
  if (op == kSigmoid) return sigmoid(x);
  if (op == kTanh) return tanhf(x);
  if (op == kSilu) return x * sigmoid(x);
  if (op == kGeluErf) return x * normcdff(x);
  float u = kSqrt2OverPi * (x + 0.044715f * x * x * x);
  return x * sigmoid(2.0f * u);
}

__device__ inline float act_derivative(int op, float x) {
  if (op == kRelu) return x > 0.0f ? 1.0f : 0.0f;
  if (op == kSigmoid) return sigmoid(x) * sigmoid(-x);
  if (op == kTanh) {  // 1 - tanh^2 = 4e / (1 + e)^2, e = exp(-2|x|): no cancellation
    float e = expf(-2.0f * fabsf(x));
    return 4.0f * e / ((1.0f + e) * (1.0f + e));
  }
  if (op == kSilu) return sigmoid(x) * (1.0f + x * sigmoid(-x));
  if (op == kGeluErf) return normcdff(x) + x * kInvSqrt2Pi * expf(-0.5f * x * x);
  float u = kSqrt2OverPi * (x + 0.044715f * x * x * x);
  float du = kSqrt2OverPi * (1.0f + 3.0f * 0.044715f * x * x);
  return sigmoid(2.0f * u) * (1.0f + x * sigmoid(-2.0f * u) * 2.0f * du);
}

// The four elementwise jobs, on element i. (One switch keeps this to one kernel per version.)
enum { kJobForward, kJobBackward, kJobSwiglu, kJobSwigluBackward };
struct Elementwise {
  int job, op;
  const float* a;  // x, or gate
  const float* b;  // dy (backward), up (swiglu)
  const float* c;  // up (swiglu backward)
  float* y;        // y, dx or dgate
  float* y2;       // dup
  int64_t n;
};

__device__ inline void apply(const Elementwise& p, int64_t i) {
  switch (p.job) {
    case kJobForward: p.y[i] = act_forward(p.op, p.a[i]); break;
    case kJobBackward: p.y[i] = p.b[i] * act_derivative(p.op, p.a[i]); break;
    case kJobSwiglu: p.y[i] = act_forward(kSilu, p.a[i]) * p.b[i]; break;
    default: {  // dgate = dy * up * silu'(gate), dup = dy * silu(gate)
      float g = p.a[i], dy = p.b[i];
      p.y[i] = dy * p.c[i] * act_derivative(kSilu, g);
      p.y2[i] = dy * act_forward(kSilu, g);
    }
  }
}

__global__ void elementwise_naive(Elementwise p) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < p.n;
       i += (int64_t)gridDim.x * blockDim.x)
    apply(p, i);
}

// float4 loads of each input for elements 4i..4i+3; the launcher checks alignment.
__global__ void elementwise_vec4(Elementwise p) {
  int64_t n4 = p.n / 4;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n4;
       i += (int64_t)gridDim.x * blockDim.x) {
    float4 a = reinterpret_cast<const float4*>(p.a)[i];
    float4 b = p.b ? reinterpret_cast<const float4*>(p.b)[i] : a;
    float4 c = p.c ? reinterpret_cast<const float4*>(p.c)[i] : a;
    float av[4] = {a.x, a.y, a.z, a.w}, bv[4] = {b.x, b.y, b.z, b.w};
    float cv[4] = {c.x, c.y, c.z, c.w}, y[4], y2[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      float x = av[e];
      switch (p.job) {
        case kJobForward: y[e] = act_forward(p.op, x); break;
        case kJobBackward: y[e] = bv[e] * act_derivative(p.op, x); break;
        case kJobSwiglu: y[e] = act_forward(kSilu, x) * bv[e]; break;
        default:
          y[e] = bv[e] * cv[e] * act_derivative(kSilu, x);
          y2[e] = bv[e] * act_forward(kSilu, x);
      }
    }
    reinterpret_cast<float4*>(p.y)[i] = make_float4(y[0], y[1], y[2], y[3]);
    if (p.job == kJobSwigluBackward)
      reinterpret_cast<float4*>(p.y2)[i] = make_float4(y2[0], y2[1], y2[2], y2[3]);
  }
  // the last n % 4 elements
  int64_t i = n4 * 4 + blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (blockIdx.x == 0 && i < p.n) apply(p, i);
}

static bool aligned16(const void* ptr) { return ptr == nullptr || (uintptr_t)ptr % 16 == 0; }

static void run(int version, const Elementwise& p, uintptr_t stream) {
  const int threads = 256;
  bool vec = version == 2 && aligned16(p.a) && aligned16(p.b) && aligned16(p.c) &&
             aligned16(p.y) && aligned16(p.y2);
  if (vec)
    elementwise_vec4<<<grid_for(p.n / 4 + 1, threads), threads, 0, as_stream(stream)>>>(p);
  else
    elementwise_naive<<<grid_for(p.n, threads), threads, 0, as_stream(stream)>>>(p);
  check(cudaGetLastError(), "activation (cuda) launch");
}

void activation(int version, int op, const float* x, float* y, int64_t n, uintptr_t stream) {
  run(version, Elementwise{kJobForward, op, x, nullptr, nullptr, y, nullptr, n}, stream);
}

void activation_backward(int version, int op, const float* dy, const float* x, float* dx,
                         int64_t n, uintptr_t stream) {
  run(version, Elementwise{kJobBackward, op, x, dy, nullptr, dx, nullptr, n}, stream);
}

void swiglu(int version, const float* gate, const float* up, float* y, int64_t n,
            uintptr_t stream) {
  run(version, Elementwise{kJobSwiglu, kSilu, gate, up, nullptr, y, nullptr, n}, stream);
}

void swiglu_backward(int version, const float* dy, const float* gate, const float* up,
                     float* dgate, float* dup, int64_t n, uintptr_t stream) {
  run(version, Elementwise{kJobSwigluBackward, kSilu, gate, dy, up, dgate, dup, n}, stream);
}

}  // namespace cuda
}  // namespace kg
