// Selective scan (the state-space layer's recurrence), forward and backward. Shapes in ssm.h.
//
// version 1 (naive): one channel (b, e) at a time, step after step, its N states in a local
//   array, std::exp. One thread. The backward pass keeps the channel's states of every step,
//   then walks back: dh_t = C_t dy_t + exp(delta_{t+1} A) dh_{t+1}.
// version 2 (chunked): the recurrence h_t = a_t h_{t-1} + b_t is linear, so time can be cut
//   into chunks scanned in parallel: (1) every chunk scanned from a zero state, keeping its end
//   state and the product of its a_t; (2) the true start state of each chunk carried across
//   chunks, a short sequential pass (h_start(c+1) = prod_c * h_start(c) + end_c); (3) every
//   chunk scanned again from its true start, writing y. The backward pass does the same for
//   dh, which runs the other way. Work items are (sequence, group of kWidth channels, chunk):
//   the channels of a group are the SIMD lanes (u, delta, y contiguous over e), the N states
//   of the group live in registers / L1. With enough sequences x channel groups to keep every
//   thread busy there is one chunk (steps 1-2 skipped; scan_plan in ssm.h).
//   Reductions over channels (dB, dC) and over time (dA, dD) are per-item partials summed in a
//   fixed order: the result does not depend on the thread count.
#include "kernels/ssm.h"

#include <cmath>

#include "common/simd.h"
#include "common/threading.h"
#include "common/workspace.h"

KG_BEGIN_ISA_NAMESPACE
namespace {

using namespace simd;

// ---- version 1: naive ------------------------------------------------------------------

void scan_naive(const ScanArgs& p) {
  const int64_t T = p.T, E = p.E, N = p.N;
  float h[kScanMaxState];
  for (int64_t b = 0; b < p.batch; ++b)
    for (int64_t e = 0; e < E; ++e) {
      for (int64_t n = 0; n < N; ++n) h[n] = p.h0 ? p.h0[(b * E + e) * N + n] : 0.0f;
      for (int64_t t = 0; t < T; ++t) {
        int64_t row = b * T + t;
        float dt = p.delta[row * E + e], u = p.u[row * E + e];
        float y = p.D[e] * u;
        for (int64_t n = 0; n < N; ++n) {
          h[n] = std::exp(dt * p.A[e * N + n]) * h[n] + dt * p.B[row * N + n] * u;
          y += p.C[row * N + n] * h[n];
        }
        p.y[row * E + e] = y;
      }
      if (p.h_out)
        for (int64_t n = 0; n < N; ++n) p.h_out[(b * E + e) * N + n] = h[n];
    }
}

thread_local GrowBuffer<float> tl_history;

void scan_backward_naive(const ScanBackwardArgs& p) {
  const int64_t T = p.T, E = p.E, N = p.N;
  float* hs = tl_history.get((size_t)(T + 1) * N);  // hs[(t + 1) N + n] = h_t[n]; h_{-1} = 0
  for (int64_t i = 0; i < E * N; ++i) p.dA[i] = 0.0f;
  for (int64_t i = 0; i < p.batch * T * N; ++i) p.dB[i] = p.dC[i] = 0.0f;
  for (int64_t e = 0; e < E; ++e) p.dD[e] = 0.0f;
  float dh[kScanMaxState];
  for (int64_t b = 0; b < p.batch; ++b)
    for (int64_t e = 0; e < E; ++e) {
      for (int64_t n = 0; n < N; ++n) hs[n] = 0.0f, dh[n] = 0.0f;
      for (int64_t t = 0; t < T; ++t) {
        int64_t row = b * T + t;
        float dt = p.delta[row * E + e], u = p.u[row * E + e];
        for (int64_t n = 0; n < N; ++n)
          hs[(t + 1) * N + n] =
              std::exp(dt * p.A[e * N + n]) * hs[t * N + n] + dt * p.B[row * N + n] * u;
      }
      for (int64_t t = T - 1; t >= 0; --t) {
        int64_t row = b * T + t;
        float dt = p.delta[row * E + e], u = p.u[row * E + e], dy = p.dy[row * E + e];
        float d_dt = 0.0f, dBu = 0.0f;
        for (int64_t n = 0; n < N; ++n) {
          float A = p.A[e * N + n], a = std::exp(dt * A), Bn = p.B[row * N + n];
          p.dC[row * N + n] += hs[(t + 1) * N + n] * dy;
          dh[n] += dy * p.C[row * N + n];               // dL/dh_t
          float da = dh[n] * hs[t * N + n];             // through a_t = exp(dt A)
          d_dt += da * a * A;
          p.dA[e * N + n] += da * a * dt;
          p.dB[row * N + n] += dh[n] * dt * u;
          dBu += dh[n] * Bn;
          dh[n] *= a;                                   // on to h_{t-1}
        }
        p.d_delta[row * E + e] = d_dt + dBu * u;
        p.du[row * E + e] = dBu * dt + dy * p.D[e];
        p.dD[e] += dy * u;
      }
    }
}

// ---- version 2: chunked, SIMD over channels ----------------------------------------------

struct Group {       // the channels e0 .. e0 + ne - 1 of sequence b, as SIMD lanes
  int64_t b, e0, ne;
};

// A[e0 + lane, n] for every n as vectors (lanes past ne: 0, so a = exp(0) = 1, harmless).
inline void load_A(const float* A, int64_t N, const Group& g, vfloat* At) {
  for (int64_t n = 0; n < N; ++n) {
    vfloat v = zero();
    for (int64_t l = 0; l < g.ne; ++l) v[l] = A[(g.e0 + l) * N + n];
    At[n] = v;
  }
}

// Scans steps [t0, t1) of group g from state h (updated in place). y (when not null) gets the
// outputs; prod (when not null) is multiplied by every step's decay a_t.
inline void scan_steps(const ScanArgs& p, const Group& g, int64_t t0, int64_t t1,
                       const vfloat* At, vfloat* h, vfloat* prod, bool write_y) {
  const int64_t E = p.E, N = p.N;
  vfloat Dv = load_upto(p.D + g.e0, g.ne);
  for (int64_t t = t0; t < t1; ++t) {
    int64_t row = g.b * p.T + t;
    vfloat uv = load_upto(p.u + row * E + g.e0, g.ne);
    vfloat dv = load_upto(p.delta + row * E + g.e0, g.ne);
    vfloat du = dv * uv, y = Dv * uv;
    const float *Bt = p.B + row * N, *Ct = p.C + row * N;
    for (int64_t n = 0; n < N; ++n) {
      vfloat a = simd::exp(dv * At[n]);
      h[n] = a * h[n] + du * broadcast(Bt[n]);
      if (prod) prod[n] *= a;
      y += broadcast(Ct[n]) * h[n];
    }
    if (write_y) store_upto(p.y + row * E + g.e0, y, g.ne);
  }
}

// Work items per thread worth waking a thread for: an item is (steps x N x kWidth) updates;
// a thread should get >= 64k of them (a decode step, one step per item, stays on one thread).
inline int64_t min_items(int64_t steps, int64_t N) {
  int64_t per_item = steps * N * kWidth;
  return per_item >= 65536 ? 1 : (65536 + per_item - 1) / per_item;
}

// How version 2 cuts the work: sequences x channel groups (of kWidth lanes) x chunks of time,
// and where its per-chunk carries live in the workspace (slot: [b][c][n][e], e fastest).
struct Chunks {
  int64_t batch, E, N, L, nc, groups;
  Chunks(int64_t batch_, int64_t T, int64_t E_, int64_t N_, int64_t L_)
      : batch(batch_), E(E_), N(N_), L(L_), nc((T + L_ - 1) / L_),
        groups((E_ + kWidth - 1) / kWidth) {}
  int64_t items() const { return batch * groups * nc; }
  // the channels of group bg = b * groups + g
  Group group(int64_t bg) const {
    int64_t e0 = (bg % groups) * kWidth;
    return Group{bg / groups, e0, E - e0 < kWidth ? E - e0 : kWidth};
  }
  // work item -> its group and chunk c
  Group item(int64_t i, int64_t& c) const {
    c = i % nc;
    return group(i / nc);
  }
  float* slot(float* base, int64_t b, int64_t c, int64_t n) const {
    return base + ((b * nc + c) * N + n) * E;
  }
};

void scan_chunked(const ScanArgs& p) {
  const int64_t T = p.T, E = p.E, N = p.N, L = p.chunk;
  const Chunks ch(p.batch, T, E, N, L);
  const int64_t nc = ch.nc, groups = ch.groups;
  // workspace (nc > 1): S[b][c][n][e] chunk end states, then start states; P[b][c][n][e] products
  float* S = p.work;
  float* P = nc > 1 ? p.work + p.batch * nc * N * E : nullptr;
  auto start_state = [&](const Group& g, vfloat* h) {
    for (int64_t n = 0; n < N; ++n) {
      vfloat v = zero();
      if (p.h0)
        for (int64_t l = 0; l < g.ne; ++l) v[l] = p.h0[((g.b * E) + g.e0 + l) * N + n];
      h[n] = v;
    }
  };
  const int64_t items = ch.items(), grain = min_items(L, N);
  if (nc > 1) {  // (1) every chunk from a zero state: its end state and its product of decays
    parallel_for(items, grain, [&](int64_t i0, int64_t i1) {
      vfloat At[kScanMaxState], h[kScanMaxState], prod[kScanMaxState];
      for (int64_t item = i0; item < i1; ++item) {
        int64_t c;
        Group g = ch.item(item, c);
        load_A(p.A, N, g, At);
        for (int64_t n = 0; n < N; ++n) h[n] = zero(), prod[n] = broadcast(1.0f);
        int64_t t1 = (c + 1) * L < T ? (c + 1) * L : T;
        scan_steps(p, g, c * L, t1, At, h, prod, false);
        for (int64_t n = 0; n < N; ++n) {
          store_upto(ch.slot(S, g.b, c, n) + g.e0, h[n], g.ne);
          store_upto(ch.slot(P, g.b, c, n) + g.e0, prod[n], g.ne);
        }
      }
    });
    // (2) carry the true start state across chunks: S[b][c] becomes the state before chunk c
    parallel_for(p.batch * groups, min_items(nc, N), [&](int64_t i0, int64_t i1) {
      vfloat h[kScanMaxState];
      for (int64_t bg = i0; bg < i1; ++bg) {
        Group g = ch.group(bg);
        start_state(g, h);
        for (int64_t c = 0; c < nc; ++c)
          for (int64_t n = 0; n < N; ++n) {
            float* s = ch.slot(S, g.b, c, n) + g.e0;
            vfloat end = load_upto(s, g.ne), prod = load_upto(ch.slot(P, g.b, c, n) + g.e0, g.ne);
            store_upto(s, h[n], g.ne);
            h[n] = prod * h[n] + end;
          }
        if (p.h_out)
          for (int64_t n = 0; n < N; ++n)
            for (int64_t l = 0; l < g.ne; ++l) p.h_out[((g.b * E) + g.e0 + l) * N + n] = h[n][l];
      }
    });
  }
  // (3) every chunk from its true start state, writing y
  parallel_for(items, grain, [&](int64_t i0, int64_t i1) {
    vfloat At[kScanMaxState], h[kScanMaxState];
    for (int64_t item = i0; item < i1; ++item) {
      int64_t c;
      Group g = ch.item(item, c);
      load_A(p.A, N, g, At);
      if (nc > 1)
        for (int64_t n = 0; n < N; ++n) h[n] = load_upto(ch.slot(S, g.b, c, n) + g.e0, g.ne);
      else
        start_state(g, h);
      int64_t t1 = (c + 1) * L < T ? (c + 1) * L : T;
      scan_steps(p, g, c * L, t1, At, h, nullptr, true);
      if (nc == 1 && p.h_out)
        for (int64_t n = 0; n < N; ++n)
          for (int64_t l = 0; l < g.ne; ++l) p.h_out[((g.b * E) + g.e0 + l) * N + n] = h[n][l];
    }
  });
}

thread_local GrowBuffer<vfloat> tl_chunk_states;

void scan_backward_chunked(const ScanBackwardArgs& p) {
  const int64_t T = p.T, E = p.E, N = p.N, L = p.chunk;
  const Chunks ch(p.batch, T, E, N, L);
  const int64_t nc = ch.nc, groups = ch.groups;
  const int64_t slab = p.batch * nc * N * E;
  // workspace: S start states (then dA partials), P decay products, Q dh carries,
  // WD[b][c][e] dD partials, WB / WC[group][b][t][n] dB / dC partials
  float *S = p.work, *P = S + slab, *Q = P + slab, *WD = Q + slab;
  float *WB = WD + p.batch * nc * E, *WC = WB + groups * p.batch * T * N;
  ScanArgs fp;  // the forward pass's view of the inputs
  fp.u = p.u, fp.delta = p.delta, fp.A = p.A, fp.B = p.B, fp.C = p.C, fp.D = p.D;
  fp.batch = p.batch, fp.T = T, fp.E = E, fp.N = N;
  const int64_t items = ch.items(), grain = min_items(L, N);
  // reverse-time step of dh over [t0, t1): dh = (dh + C_t dy_t) * a_t, with no gradients
  auto reverse_steps = [&](const Group& g, int64_t t0, int64_t t1, const vfloat* At, vfloat* dh) {
    for (int64_t t = t1 - 1; t >= t0; --t) {
      int64_t row = g.b * T + t;
      vfloat dyv = load_upto(p.dy + row * E + g.e0, g.ne);
      vfloat dv = load_upto(p.delta + row * E + g.e0, g.ne);
      const float* Ct = p.C + row * N;
      for (int64_t n = 0; n < N; ++n)
        dh[n] = (dh[n] + dyv * broadcast(Ct[n])) * simd::exp(dv * At[n]);
    }
  };
  if (nc > 1) {
    // (1) per chunk: the forward end state and decay product from zero, the backward carry
    //     (a_ts * dh_ts) from a zero incoming gradient
    parallel_for(items, grain, [&](int64_t i0, int64_t i1) {
      vfloat At[kScanMaxState], h[kScanMaxState], prod[kScanMaxState];
      for (int64_t item = i0; item < i1; ++item) {
        int64_t c;
        Group g = ch.item(item, c);
        load_A(p.A, N, g, At);
        for (int64_t n = 0; n < N; ++n) h[n] = zero(), prod[n] = broadcast(1.0f);
        int64_t t0 = c * L, t1 = t0 + L < T ? t0 + L : T;
        scan_steps(fp, g, t0, t1, At, h, prod, false);
        for (int64_t n = 0; n < N; ++n) {
          store_upto(ch.slot(S, g.b, c, n) + g.e0, h[n], g.ne);
          store_upto(ch.slot(P, g.b, c, n) + g.e0, prod[n], g.ne);
          h[n] = zero();
        }
        reverse_steps(g, t0, t1, At, h);
        for (int64_t n = 0; n < N; ++n) store_upto(ch.slot(Q, g.b, c, n) + g.e0, h[n], g.ne);
      }
    });
    // (2) carries: S[b][c] = the state before chunk c, Q[b][c] = the gradient flowing into
    //     chunk c's last step from the chunks after it
    parallel_for(p.batch * groups, min_items(nc, N), [&](int64_t i0, int64_t i1) {
      for (int64_t bg = i0; bg < i1; ++bg) {
        const Group gr = ch.group(bg);
        const int64_t b = gr.b, e0 = gr.e0, ne = gr.ne;
        for (int64_t n = 0; n < N; ++n) {
          vfloat h = zero(), g = zero();
          for (int64_t c = 0; c < nc; ++c) {
            float* s = ch.slot(S, b, c, n) + e0;
            vfloat v = load_upto(s, ne), prod = load_upto(ch.slot(P, b, c, n) + e0, ne);
            store_upto(s, h, ne);
            h = prod * h + v;
          }
          for (int64_t c = nc - 1; c >= 0; --c) {
            float* q = ch.slot(Q, b, c, n) + e0;
            vfloat v = load_upto(q, ne), prod = load_upto(ch.slot(P, b, c, n) + e0, ne);
            store_upto(q, g, ne);
            g = v + prod * g;
          }
        }
      }
    });
  }
  // (3) per chunk from its true carries: the states of the chunk, then the gradients
  bool failed = false;
  parallel_for(items, grain, [&](int64_t i0, int64_t i1) {
    vfloat At[kScanMaxState], h[kScanMaxState], dh[kScanMaxState], dA[kScanMaxState];
    vfloat* hs = tl_chunk_states.try_get((size_t)(L + 1) * N);  // hs[(t - t0 + 1) N + n]
    if (!hs) {
      __atomic_store_n(&failed, true, __ATOMIC_RELAXED);
      return;
    }
    for (int64_t item = i0; item < i1; ++item) {
      int64_t c;
      Group g = ch.item(item, c);
      load_A(p.A, N, g, At);
      int64_t t0 = c * L, t1 = t0 + L < T ? t0 + L : T;
      for (int64_t n = 0; n < N; ++n) {
        if (nc > 1) {
          hs[n] = load_upto(ch.slot(S, g.b, c, n) + g.e0, g.ne);
          dh[n] = load_upto(ch.slot(Q, g.b, c, n) + g.e0, g.ne);
        } else {
          hs[n] = zero(), dh[n] = zero();
        }
        h[n] = hs[n];
        dA[n] = zero();
      }
      for (int64_t t = t0; t < t1; ++t) {  // the states of this chunk
        int64_t row = g.b * T + t;
        vfloat uv = load_upto(p.u + row * E + g.e0, g.ne);
        vfloat dv = load_upto(p.delta + row * E + g.e0, g.ne);
        vfloat du = dv * uv;
        const float* Bt = p.B + row * N;
        vfloat* out = hs + (t - t0 + 1) * N;
        for (int64_t n = 0; n < N; ++n)
          out[n] = h[n] = simd::exp(dv * At[n]) * h[n] + du * broadcast(Bt[n]);
      }
      vfloat Dv = load_upto(p.D + g.e0, g.ne), dDv = zero();
      float* wb = WB + ((g.e0 / kWidth) * p.batch + g.b) * T * N;
      float* wc = WC + ((g.e0 / kWidth) * p.batch + g.b) * T * N;
      for (int64_t t = t1 - 1; t >= t0; --t) {
        int64_t row = g.b * T + t;
        vfloat uv = load_upto(p.u + row * E + g.e0, g.ne);
        vfloat dv = load_upto(p.delta + row * E + g.e0, g.ne);
        vfloat dyv = load_upto(p.dy + row * E + g.e0, g.ne);
        const float *Bt = p.B + row * N, *Ct = p.C + row * N;
        const vfloat *ht = hs + (t - t0 + 1) * N, *hprev = hs + (t - t0) * N;
        vfloat d_dt = zero(), dBu = zero();
        for (int64_t n = 0; n < N; ++n) {
          vfloat a = simd::exp(dv * At[n]), Bn = broadcast(Bt[n]);
          wc[t * N + n] = reduce_add(ht[n] * dyv);
          dh[n] += dyv * broadcast(Ct[n]);
          vfloat da = dh[n] * hprev[n] * a;
          d_dt += da * At[n];
          dA[n] += da * dv;
          wb[t * N + n] = reduce_add(dh[n] * dv * uv);
          dBu += dh[n] * Bn;
          dh[n] *= a;
        }
        store_upto(p.d_delta + row * E + g.e0, d_dt + dBu * uv, g.ne);
        store_upto(p.du + row * E + g.e0, dBu * dv + dyv * Dv, g.ne);
        dDv += dyv * uv;
      }
      for (int64_t n = 0; n < N; ++n) store_upto(ch.slot(S, g.b, c, n) + g.e0, dA[n], g.ne);
      store_upto(WD + (g.b * nc + c) * E + g.e0, dDv, g.ne);
    }
  });
  if (__atomic_load_n(&failed, __ATOMIC_RELAXED)) throw std::bad_alloc();
  // (4) the partials, summed in a fixed order
  parallel_for(E, 4096 / (p.batch * nc * N + 1) + 1, [&](int64_t e0, int64_t e1) {
    for (int64_t e = e0; e < e1; ++e) {
      float d = 0.0f;
      for (int64_t bc = 0; bc < p.batch * nc; ++bc) d += WD[bc * E + e];
      p.dD[e] = d;
      for (int64_t n = 0; n < N; ++n) {
        float s = 0.0f;
        for (int64_t bc = 0; bc < p.batch * nc; ++bc) s += S[(bc * N + n) * E + e];
        p.dA[e * N + n] = s;
      }
    }
  });
  parallel_for(p.batch * T, 4096 / (groups * N + 1) + 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t n = 0; n < N; ++n) {
        float sb = 0.0f, sc = 0.0f;
        for (int64_t g = 0; g < groups; ++g) {
          sb += WB[(g * p.batch * T + r) * N + n];
          sc += WC[(g * p.batch * T + r) * N + n];
        }
        p.dB[r * N + n] = sb;
        p.dC[r * N + n] = sc;
      }
  });
}

}  // namespace

extern const ScanKernels scan_kernels = {scan_naive, scan_chunked, scan_backward_naive,
                                         scan_backward_chunked, kWidth};

KG_END_ISA_NAMESPACE
