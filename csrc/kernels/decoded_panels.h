// y [M, N] = x [M, K] @ W^T for a weight matrix W [N, K] stored in a compact format (ggml
// quantized blocks, bf16): rows of W are decoded to float32 in panels of about 4 MiB and each
// panel goes through the blocked fp32 matmul, so a batched product (prefill) runs at the fp32
// GEMM's speed plus one pass of decoding. The "tiled" version of the quant and bf16 families.
// Include only from csrc/kernels/*.cpp (it opens namespace kg::<level>).
#pragma once
#include <cstdint>
#include <cstring>

#include "common/threading.h"
#include "common/workspace.h"
#include "kernels/matmul.h"

KG_BEGIN_ISA_NAMESPACE

// decode(n0, nc, out) writes rows n0 .. n0 + nc - 1 of W to out as float32 [nc, K].
template <class Decode>
void matmul_decoded_panels(const float* x, float* y, int64_t m, int64_t n, int64_t k,
                           Decode&& decode) {
  constexpr int64_t kPanelFloats = (int64_t)1 << 20;  // 4 MiB of decoded weights per panel
  thread_local Workspace panel_buffer, y_panel_buffer;
  int64_t panel = kPanelFloats / k;
  if (panel < 64) panel = 64;
  if (panel > n) panel = n;
  float* w = panel_buffer.get(panel * k);
  float* ypanel = panel < n ? y_panel_buffer.get(m * panel) : nullptr;
  for (int64_t n0 = 0; n0 < n; n0 += panel) {
    int64_t nc = n - n0 < panel ? n - n0 : panel;
    decode(n0, nc, w);
    MatmulArgs mm;
    mm.a = x;
    mm.b = w;  // [nc, K]: nn.Linear's layout
    mm.c = ypanel ? ypanel : y;
    mm.m = m;
    mm.n = nc;
    mm.k = k;
    mm.trans_b = true;
    matmul_kernels.blocked(mm);
    if (ypanel)  // the panel's columns into y [M, N]
      parallel_for(m, 64, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i)
          std::memcpy(y + i * n + n0, ypanel + i * nc, nc * sizeof(float));
      });
  }
}

KG_END_ISA_NAMESPACE
