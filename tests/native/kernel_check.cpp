// A native kernel check, no Python: every kernel family's fast version against its naive
// version 1 (itself a plain loop: the C++ twin of the numpy oracle), at every instruction-set
// level compiled in and supported by this CPU, on random inputs of awkward shapes. Used where
// the Python test suite cannot run: an aarch64 build run under QEMU (tools/arm_check.sh).
//
//   kernel_check [level ...]     # default: every level this CPU runs
//
// Tolerances as tests/conftest.py: |fast - naive| <= tol * (max |naive| + 1e-30) per output,
// tol 1e-5 for elementwise work, 1e-4 for long reductions (log-softmax: against max(|y|, 1));
// NaN anywhere fails.
// Exit status: the number of failed checks.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "common/cpu.h"
#include "common/threading.h"
#include "kernels/activation.h"
#include "kernels/adamw.h"
#include "kernels/attention.h"
#include "kernels/cross_entropy.h"
#include "kernels/matmul.h"
#include "kernels/matmul_bf16.h"
#include "kernels/norm.h"
#include "kernels/quant.h"
#include "kernels/rope.h"
#include "kernels/softmax.h"
#include "kernels/ssm.h"

using namespace kg;

namespace {

std::mt19937_64 rng(1234);
int failures = 0, checks = 0;

std::vector<float> randn(size_t n, float scale = 1.0f) {
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

void compare(const char* what, const std::string& shape, const std::vector<float>& got,
             const std::vector<float>& want, double tol, double floor = 1e-30) {
  ++checks;
  double scale = floor, worst = 0.0;
  size_t at = 0;
  bool nan = false;
  for (float w : want) scale = std::fmax(scale, std::fabs(w));
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::isnan(got[i]) != std::isnan(want[i])) nan = true;
    double e = std::fabs((double)got[i] - want[i]);
    if (e > worst) worst = e, at = i;
  }
  bool ok = !nan && worst <= tol * scale;
  if (!ok) {
    ++failures;
    std::printf("  FAIL %s %s: error %.3g at %zu (got %g, expected %g; scale %.3g)%s\n", what,
                shape.c_str(), worst, at, got[at], want[at], scale, nan ? ", NaN" : "");
  }
}

std::string dims(std::initializer_list<int64_t> d) {
  std::string s = "[";
  for (int64_t x : d) s += (s.size() > 1 ? ", " : "") + std::to_string(x);
  return s + "]";
}

void check_matmul() {
  const MatmulKernels& k = KG_DISPATCH(matmul_kernels);
  for (auto [m, n, kk] : {std::tuple<int64_t, int64_t, int64_t>{1, 1, 1}, {7, 13, 5}, {33, 97, 64},
                          {64, 130, 257}, {129, 48, 31}})
    for (int trans = 0; trans < 4; ++trans) {
      auto a = randn(m * kk), b = randn(kk * n), bias = randn(n);
      std::vector<float> c1(m * n), c2(m * n);
      MatmulArgs p;
      p.a = a.data(), p.b = b.data(), p.bias = bias.data(), p.m = m, p.n = n, p.k = kk;
      p.trans_a = trans & 1, p.trans_b = trans & 2;
      p.c = c1.data();
      k.naive(p);
      p.c = c2.data();
      k.blocked(p);
      compare("matmul", dims({m, n, kk, trans}), c2, c1, 1e-4);
    }
}

void check_matmul_bf16() {
  const MatmulBf16Kernels& k = KG_DISPATCH(matmul_bf16_kernels);
  for (auto [m, n, kk] : {std::tuple<int64_t, int64_t, int64_t>{1, 1, 1}, {7, 13, 5}, {33, 97, 64},
                          {17, 130, 257}})
    for (int trans = 0; trans < 4; ++trans) {
      auto a = randn(m * kk), b = randn(kk * n), bias = randn(n);
      std::vector<float> c1(m * n), c2(m * n);
      MatmulBf16Args p;  // float32 operands, rounded to bf16 by the packing (and by naive)
      p.a_f32 = a.data(), p.b_f32 = b.data(), p.bias = bias.data(), p.m = m, p.n = n, p.k = kk;
      p.trans_a = trans & 1, p.trans_b = trans & 2;
      p.c = c1.data();
      k.naive(p);
      p.c = c2.data();
      k.packed(p);
      compare("matmul_bf16", dims({m, n, kk, trans}), c2, c1, 1e-4);
    }
  // bf16 bit operands, accumulate into C, K cut into several blocks (K > 768: blocks of 516,
  // 516, 511 pairs... for BFMMLA's 4-k quads, 514 / 514 / 515 otherwise)
  for (auto [m, n, kk] : {std::tuple<int64_t, int64_t, int64_t>{5, 11, 2}, {9, 20, 3},
                          {13, 19, 1543}, {6, 8, 770}})
    for (int trans = 0; trans < 4; ++trans) {
      auto a = randn(m * kk), b = randn(kk * n), c0 = randn(m * n);
      std::vector<uint16_t> ab(a.size()), bb(b.size());
      auto bits = [](float f) {  // nearest bf16, ties to even (finite inputs)
        uint32_t u;
        std::memcpy(&u, &f, 4);
        return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
      };
      for (size_t i = 0; i < a.size(); ++i) ab[i] = bits(a[i]);
      for (size_t i = 0; i < b.size(); ++i) bb[i] = bits(b[i]);
      std::vector<float> c1 = c0, c2 = c0;
      MatmulBf16Args p;
      p.a = ab.data(), p.b = bb.data(), p.m = m, p.n = n, p.k = kk, p.accumulate = true;
      p.trans_a = trans & 1, p.trans_b = trans & 2;
      p.c = c1.data();
      k.naive(p);
      p.c = c2.data();
      k.packed(p);
      compare("matmul_bf16 bits+accumulate", dims({m, n, kk, trans}), c2, c1, 1e-4);
    }
}

void check_softmax() {
  const SoftmaxKernels& k = KG_DISPATCH(softmax_kernels);
  for (auto [rows, cols] : {std::pair<int64_t, int64_t>{1, 1}, {3, 7}, {5, 65}, {17, 1000}, {2, 4097}})
    for (int log = 0; log < 2; ++log) {
      auto x = randn(rows * cols, 3.0f);
      std::vector<float> y1(x.size()), y2(x.size());
      SoftmaxArgs p;
      p.x = x.data(), p.rows = rows, p.cols = cols, p.log = log, p.scale = 0.7f;
      p.y = y1.data();
      k.naive(p);
      p.y = y2.data();
      k.online(p);
      // log-softmax's error scale is that of scale * x (tests/test_softmax.py), not |y|,
      // which is 0 for a single column
      compare(log ? "log_softmax" : "softmax", dims({rows, cols}), y2, y1, 1e-5, log ? 1.0 : 1e-30);
    }
}

void check_norms() {
  const NormKernels& k = KG_DISPATCH(norm_kernels);
  for (auto [rows, cols] : {std::pair<int64_t, int64_t>{1, 1}, {3, 7}, {9, 64}, {5, 769}}) {
    auto x = randn(rows * cols, 2.0f), w = randn(cols), b = randn(cols);
    std::vector<float> y1(x.size()), y2(x.size());
    LayerNormArgs p;
    p.x = x.data(), p.weight = w.data(), p.bias = b.data(), p.rows = rows, p.cols = cols;
    p.y = y1.data();
    k.naive.layernorm(p);
    p.y = y2.data();
    k.fast.layernorm(p);
    compare("layernorm", dims({rows, cols}), y2, y1, 1e-5);
    RMSNormArgs r;
    r.x = x.data(), r.weight = w.data(), r.rows = rows, r.cols = cols;
    r.y = y1.data();
    k.naive.rmsnorm(r);
    r.y = y2.data();
    k.fast.rmsnorm(r);
    compare("rmsnorm", dims({rows, cols}), y2, y1, 1e-5);
  }
}

void check_cross_entropy() {
  const CrossEntropyKernels& k = KG_DISPATCH(cross_entropy_kernels);
  for (auto [n, v] : {std::pair<int64_t, int64_t>{1, 2}, {7, 65}, {13, 1001}, {4, 50257}}) {
    auto logits = randn(n * v, 3.0f);
    std::vector<int64_t> targets(n);
    for (int64_t i = 0; i < n; ++i) targets[i] = (int64_t)(rng() % v);
    std::vector<float> l1(n), l2(n), d1(n * v), d2(n * v);
    CrossEntropyArgs p;
    p.logits = logits.data(), p.targets = targets.data(), p.n = n, p.v = v;
    p.losses = l1.data(), p.dlogits = d1.data();
    k.naive(p);
    p.losses = l2.data(), p.dlogits = d2.data();
    k.online(p);
    compare("cross_entropy loss", dims({n, v}), l2, l1, 1e-4);
    compare("cross_entropy grad", dims({n, v}), d2, d1, 1e-5);
  }
}

void check_attention() {
  const AttentionKernels& k = KG_DISPATCH(attention_kernels);
  for (auto [t, d] : {std::pair<int64_t, int64_t>{1, 8}, {17, 16}, {65, 64}, {130, 32}})
    for (int causal = 0; causal < 2; ++causal) {
      int64_t B = 2, H = 4, Hkv = 2;
      auto q = randn(B * H * t * d), kk = randn(B * Hkv * t * d), v = randn(B * Hkv * t * d);
      std::vector<float> o1(q.size()), o2(q.size()), s1(B * H * t), s2(B * H * t);
      AttentionArgs p;
      p.q = q.data(), p.k = kk.data(), p.v = v.data(), p.batch = B, p.heads = H,
      p.kv_heads = Hkv, p.t = t, p.s = t, p.d = d, p.scale = 1.0f / std::sqrt((float)d),
      p.causal = causal;
      p.out = o1.data(), p.lse = s1.data();
      k.naive(p);
      p.out = o2.data(), p.lse = s2.data();
      k.flash(p);
      compare("attention", dims({B, H, t, d, causal}), o2, o1, 1e-4);
      compare("attention lse", dims({B, H, t, d, causal}), s2, s1, 1e-5);
    }
}

void check_activations() {
  const ActivationKernels& k = KG_DISPATCH(activation_kernels);
  for (int64_t n : {1, 7, 1000, 4099}) {
    auto x = randn(n, 3.0f), dy = randn(n), up = randn(n);
    for (Activation kind : {Activation::relu, Activation::sigmoid, Activation::tanh,
                            Activation::silu, Activation::gelu_tanh, Activation::gelu_erf}) {
      std::vector<float> y1(n), y2(n);
      ActivationArgs a;
      a.x = x.data(), a.dy = dy.data(), a.n = n, a.kind = kind;
      a.out = y1.data();
      k.naive.forward(a);
      a.out = y2.data();
      k.fast.forward(a);
      compare("activation", dims({n, (int64_t)kind}), y2, y1, 1e-5);
      a.out = y1.data();
      k.naive.backward(a);
      a.out = y2.data();
      k.fast.backward(a);
      compare("activation backward", dims({n, (int64_t)kind}), y2, y1, 1e-5);
    }
    std::vector<float> s1(n), s2(n), g1(n), g2(n), u1(n), u2(n);
    SwigluArgs w;
    w.gate = x.data(), w.up = up.data(), w.dy = dy.data(), w.n = n;
    w.out = s1.data(), w.dgate = g1.data(), w.dup = u1.data();
    k.naive.swiglu(w);
    k.naive.swiglu_backward(w);
    w.out = s2.data(), w.dgate = g2.data(), w.dup = u2.data();
    k.fast.swiglu(w);
    k.fast.swiglu_backward(w);
    compare("swiglu", dims({n}), s2, s1, 1e-5);
    compare("swiglu dgate", dims({n}), g2, g1, 1e-5);
    compare("swiglu dup", dims({n}), u2, u1, 1e-5);
  }
}

void check_rope() {
  const RopeKernels& k = KG_DISPATCH(rope_kernels);
  for (auto [n, t, d] : {std::tuple<int64_t, int64_t, int64_t>{1, 1, 2}, {3, 17, 64}, {2, 129, 96}})
    for (int interleaved = 0; interleaved < 2; ++interleaved) {
      auto x = randn(n * t * d);
      std::vector<float> y1(x.size()), y2(x.size());
      RopeArgs r;
      r.x = x.data(), r.n = n, r.t = t, r.d = d, r.rotary_dim = d, r.offset = 5;
      r.interleaved = interleaved;
      std::vector<float> table(rope_table_floats(r) + 1);
      std::vector<double> freq(d / 2 + 1);
      r.table = table.data(), r.freq = freq.data();
      r.out = y1.data();
      k.rope_naive(r);
      r.out = y2.data();
      k.rope_fast(r);
      compare("rope", dims({n, t, d, interleaved}), y2, y1, 1e-5);
    }
  std::vector<float> s1(37 * 64), s2(37 * 64);
  std::vector<double> freq(33);
  SinusoidalArgs sa;
  sa.t = 37, sa.c = 64, sa.freq = freq.data();
  sa.out = s1.data();
  k.sinusoidal_naive(sa);
  sa.out = s2.data();
  k.sinusoidal_fast(sa);
  compare("sinusoidal", dims({37, 64}), s2, s1, 1e-5);
}

void check_adamw() {
  const AdamwKernels& k = KG_DISPATCH(adamw_kernels);
  for (int64_t n : {1, 7, 1000, 4099}) {
    auto p0 = randn(n), g = randn(n), m0 = randn(n, 0.1f), v0 = randn(n, 0.1f);
    for (float& x : v0) x = std::fabs(x);
    std::vector<float> p1 = p0, p2 = p0, m1 = m0, m2 = m0, v1 = v0, v2 = v0;
    AdamwArgs a;
    a.grad = g.data(), a.n = n, a.step = 3, a.lr = 1e-2, a.weight_decay = 0.1;
    a.param = p1.data(), a.m = m1.data(), a.v = v1.data();
    k.adamw_naive(a);
    a.param = p2.data(), a.m = m2.data(), a.v = v2.data();
    k.adamw_fast(a);
    compare("adamw param", dims({n}), p2, p1, 1e-5);
    compare("adamw v", dims({n}), v2, v1, 1e-5);
  }
}

void check_quant() {
  const QuantKernels& k = KG_DISPATCH(quant_kernels);
  for (QuantType type : {QuantType::q8_0, QuantType::q4_1})
    for (auto [m, n, kk] : {std::tuple<int64_t, int64_t, int64_t>{1, 3, 32}, {2, 17, 64},
                            {3, 9, 96}, {4, 17, 64}, {6, 40, 256}, {7, 23, 128},
                            {33, 24, 576}}) {
      int64_t bytes = quant_block_bytes(type), rowb = kk / kQuantBlock * bytes;
      std::vector<uint8_t> w(n * rowb);
      for (int64_t r = 0; r < n; ++r)
        for (int64_t b = 0; b < kk / kQuantBlock; ++b) {
          uint8_t* blk = w.data() + r * rowb + b * bytes;
          for (int64_t i = 0; i < bytes; ++i) blk[i] = (uint8_t)(rng() & 0xff);
          uint16_t d = 0x2000 + (uint16_t)(rng() % 0x1000), mm = 0xa000 + (uint16_t)(rng() % 0x800);
          std::memcpy(blk, &d, 2);  // fp16 scales of moderate size (no inf / NaN)
          if (type == QuantType::q4_1) std::memcpy(blk + 2, &mm, 2);
        }
      auto x = randn(m * kk);
      std::vector<float> y1(m * n), y2(m * n);
      QuantMatmulArgs p;
      p.x = x.data(), p.w = w.data(), p.m = m, p.n = n, p.k = kk, p.type = type;
      p.y = y1.data();
      k.matmul_naive(p);
      const char* names[] = {"quant fused", "quant tiled"};
      QuantMatmulFn fns[] = {k.matmul_fused, k.matmul_tiled};
      for (int v = 0; v < 2; ++v) {
        p.y = y2.data();
        fns[v](p);
        compare(names[v], dims({(int64_t)type, m, n, kk}), y2, y1, 1e-4);
      }
      // version 4 quantizes x to 8 bits per block: its own (looser) bound, as tests/test_quant.py
      p.y = y2.data();
      k.matmul_vnni(p);
      std::string shape = dims({(int64_t)type, m, n, kk});
      // against the float product: rounding x to the int8 grid moves each x by at most
      // dx / 2 (dx = max|x| / 127 per block), a strict bound (tests/test_quant.py)
      std::vector<float> wf(n * kk);
      DequantizeArgs dq;
      dq.raw = w.data(), dq.out = wf.data(), dq.rows = n, dq.cols = kk, dq.type = type;
      k.dequantize_naive(dq);
      ++checks;
      bool ok = true;
      for (int64_t i = 0; i < m && ok; ++i)
        for (int64_t j = 0; j < n && ok; ++j) {
          double rounding = 0.0, bound = 0.0;
          for (int64_t b0 = 0; b0 < kk; b0 += kQuantBlock) {
            double xmax = 0.0, wsum = 0.0;
            for (int64_t t = b0; t < b0 + kQuantBlock; ++t) {
              xmax = std::fmax(xmax, std::fabs(x[i * kk + t]));
              wsum += std::fabs(wf[j * kk + t]);
              bound += std::fabs(x[i * kk + t]) * std::fabs(wf[j * kk + t]);
            }
            rounding += 0.5 * xmax / 127.0 * wsum;
          }
          double err = std::fabs((double)y2[i * n + j] - y1[i * n + j]);
          if (!(err <= rounding * (1 + 1e-4) + 1e-5 * bound)) {
            ok = false;
            ++failures;
            std::printf("  FAIL quant int8 %s: y[%lld, %lld] off by %.3g > bound %.3g\n",
                        shape.c_str(), (long long)i, (long long)j, err, rounding);
          }
        }
      // its integer dots are exact on every level (VNNI, SDOT, SMMLA, plain loops): the same
      // y as the generic copy's, up to the float sums' contraction into FMAs
      static std::map<std::string, std::vector<float>> generic_y;
      if (active_isa() == Isa::generic)
        generic_y[shape] = y2;
      else if (generic_y.count(shape))
        compare("quant int8 vs generic", shape, y2, generic_y[shape], 1e-5);
    }
}

void check_ssm() {
  const ScanKernels& k = KG_DISPATCH(scan_kernels);
  for (auto [B, T, E, N] : {std::tuple<int64_t, int64_t, int64_t, int64_t>{1, 1, 1, 1}, {2, 7, 3, 5},
                            {3, 37, 19, 16}, {1, 100, 33, 4}})
    for (int64_t chunk : {1, 5, 1000}) {
      auto u = randn(B * T * E), dl = randn(B * T * E), A = randn(E * N, 0.5f);
      auto Bm = randn(B * T * N), Cm = randn(B * T * N), D = randn(E), dy = randn(B * T * E);
      for (float& x : dl) x = std::log1p(std::exp(x));
      for (float& x : A) x = -std::exp(x);
      ScanArgs p;
      p.u = u.data(), p.delta = dl.data(), p.A = A.data(), p.B = Bm.data(), p.C = Cm.data();
      p.D = D.data(), p.batch = B, p.T = T, p.E = E, p.N = N;
      p.chunk = chunk < T ? chunk : T;
      std::vector<float> y1(u.size()), y2(u.size());
      std::vector<float> work(scan_work_floats(B, T, E, N, p.chunk, true) + 1);
      p.work = work.data();
      p.y = y1.data();
      k.naive(p);
      p.y = y2.data();
      k.chunked(p);
      compare("selective_scan", dims({B, T, E, N, chunk}), y2, y1, 1e-5);
      std::vector<float> g1[6], g2[6];
      size_t sizes[6] = {u.size(), u.size(), A.size(), Bm.size(), Cm.size(), D.size()};
      for (int i = 0; i < 6; ++i) g1[i].resize(sizes[i]), g2[i].resize(sizes[i]);
      ScanBackwardArgs q;
      q.dy = dy.data(), q.u = u.data(), q.delta = dl.data(), q.A = A.data(), q.B = Bm.data();
      q.C = Cm.data(), q.D = D.data(), q.batch = B, q.T = T, q.E = E, q.N = N;
      q.chunk = p.chunk, q.work = work.data();
      auto run = [&](std::vector<float>* g, ScanBackwardFn fn) {
        q.du = g[0].data(), q.d_delta = g[1].data(), q.dA = g[2].data(), q.dB = g[3].data();
        q.dC = g[4].data(), q.dD = g[5].data();
        fn(q);
      };
      run(g1, k.backward_naive);
      run(g2, k.backward_chunked);
      const char* names[] = {"scan du", "scan d_delta", "scan dA", "scan dB", "scan dC", "scan dD"};
      for (int i = 0; i < 6; ++i) compare(names[i], dims({B, T, E, N, chunk}), g2[i], g1[i], 1e-4);
    }
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<Isa> levels;
  Isa all[] = {Isa::generic, Isa::avx2, Isa::avx512, Isa::avx512bf16, Isa::dotprod, Isa::i8mm};
  for (Isa isa : all) {
    bool wanted = argc < 2;
    for (int i = 1; i < argc; ++i) wanted |= std::strcmp(argv[i], isa_name(isa)) == 0;
    if (wanted && isa_compiled(isa)) levels.push_back(isa);
  }
  const CpuFeatures& f = cpu_features();
  std::printf("%s, %d threads; best level %s\n", f.brand.c_str(), num_threads(),
              isa_name(best_isa()));
  for (Isa isa : levels) {
    try {
      set_active_isa(isa);
    } catch (const std::exception& e) {
      std::printf("%-10s skipped: %s\n", isa_name(isa), e.what());
      continue;
    }
    rng.seed(1234);  // every level sees the same inputs
    int before = failures, checks_before = checks;
    check_matmul();
    check_matmul_bf16();
    check_softmax();
    check_norms();
    check_cross_entropy();
    check_attention();
    check_activations();
    check_rope();
    check_adamw();
    check_quant();
    check_ssm();
    std::printf("%-10s %d of %d checks passed\n", isa_name(isa), checks - checks_before -
                (failures - before), checks - checks_before);
  }
  return failures;
}
