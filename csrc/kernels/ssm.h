// Selective scan: the recurrence of a Mamba-style state-space layer, forward and backward,
// float32, row-major. For every sequence b and channel e (N state values per channel):
//
//   h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t        (elementwise over n)
//   y_t = sum_n C_t[n] h_t[n] + D * u_t
//
// u, delta, y, du, d_delta: [batch, T, E]; A, dA: [E, N]; B, C, dB, dC: [batch, T, N]; D, dD: [E];
// h0, h_out: [batch, E, N] (the state before the first step, default 0; the state after the
// last one). The backward pass starts from h0 = 0 (training) and recomputes the states.
#pragma once
#include <cstdint>

#include "common/isa.h"

namespace kg {

constexpr int64_t kScanMaxState = 128;  // N <= 128: the state of a channel group lives on the stack

struct ScanArgs {
  const float *u = nullptr, *delta = nullptr, *A = nullptr, *B = nullptr, *C = nullptr,
              *D = nullptr;
  const float* h0 = nullptr;  // optional
  float* y = nullptr;
  float* h_out = nullptr;     // optional
  int64_t batch = 0, T = 0, E = 0, N = 0;
  int64_t chunk = 0;          // steps per chunk (version 2; from scan_plan)
  float* work = nullptr;      // scan_work_floats(...) floats (version 2)
};

struct ScanBackwardArgs {
  const float *dy = nullptr, *u = nullptr, *delta = nullptr, *A = nullptr, *B = nullptr,
              *C = nullptr, *D = nullptr;
  float *du = nullptr, *d_delta = nullptr, *dA = nullptr, *dB = nullptr, *dC = nullptr,
        *dD = nullptr;
  int64_t batch = 0, T = 0, E = 0, N = 0;
  int64_t chunk = 0;
  float* work = nullptr;
};

using ScanFn = void (*)(const ScanArgs&);
using ScanBackwardFn = void (*)(const ScanBackwardArgs&);

struct ScanKernels {
  ScanFn naive;                   // version 1: one channel at a time, step after step, one thread
  ScanFn chunked;                 // version 2: chunks of time in parallel, SIMD over channels
  ScanBackwardFn backward_naive;  // version 1
  ScanBackwardFn backward_chunked;  // version 2
  int width;                      // channels per SIMD group
};

// Steps per chunk for version 2: the whole sequence when batch x channel groups already give
// every thread several work items; else shorter chunks (>= 16 steps) until they do. The
// backward pass keeps the states of one chunk per thread, so its chunks are <= 256 steps.
inline int64_t scan_plan(int64_t batch, int64_t T, int64_t E, int64_t threads, int64_t requested,
                         bool backward) {
  if (T < 1) return 1;
  if (requested > 0) return requested < T ? requested : T;
  int64_t items = batch * ((E + 15) / 16), want = 4 * threads, len = T;
  if (items < want) {
    int64_t chunks = (want + items - 1) / items;
    len = (T + chunks - 1) / chunks;
    if (len < 16) len = 16;
  }
  if (backward && len > 256) len = 256;
  return len < T ? len : T;
}

// Workspace floats version 2 needs (0 for version 1).
inline int64_t scan_work_floats(int64_t batch, int64_t T, int64_t E, int64_t N, int64_t chunk,
                                bool backward) {
  int64_t nc = (T + chunk - 1) / chunk;
  if (!backward) return nc > 1 ? 2 * batch * nc * N * E : 0;
  int64_t groups = (E + 15) / 16 * 4;  // an upper bound on channel groups of any width >= 4
  return 3 * batch * nc * N * E + batch * nc * E + 2 * groups * batch * T * N;
}

}  // namespace kg

KG_DECLARE_PER_ISA(ScanKernels, scan_kernels)
