// The decode runner (see transformer.h). Every step calls the same dispatched kernel, with
// the same arguments, as the Python path (GPT.forward_cached through kernelgpt.ops) does for
// one token, so the two agree bit for bit on a given machine and thread count.
#include "model/transformer.h"

#include <chrono>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

#include "common/cpu.h"
#include "common/threading.h"
#include "kernels/activation.h"
#include "kernels/attention.h"
#include "kernels/bf16.h"
#include "kernels/matmul.h"
#include "kernels/norm.h"
#include "kernels/quant.h"
#include "kernels/rope.h"

namespace kg {
namespace model {

namespace {

// y [m, out] = x W^T + b for float32 W: the blocked matmul kernel (its matrix-vector path when
// m is 1, the packed GEMM above).
void f32_product(const Linear& l, const float* x, float* y, int64_t m) {
  MatmulArgs a;
  a.a = x;
  a.b = static_cast<const float*>(l.weight);
  a.bias = l.bias;
  a.c = y;
  a.m = m;
  a.n = l.out;
  a.k = l.in;
  a.batch_stride_c = m * l.out;
  a.trans_b = true;
  KG_DISPATCH(matmul_kernels).blocked(a);
}

// y [m, out] = x W^T (no bias) for W in GGUF blocks, by the quant_matmul version `fn`.
void quant_product(const Linear& l, const float* x, float* y, int64_t m, QuantMatmulFn fn) {
  QuantMatmulArgs a;
  a.x = x;
  a.w = static_cast<const uint8_t*>(l.weight);
  a.y = y;
  a.m = m;
  a.n = l.out;
  a.k = l.in;
  a.type = l.kind == WeightKind::q8_0 ? QuantType::q8_0 : QuantType::q4_1;
  fn(a);
}

}  // namespace

void Linear::forward(const float* x, float* y, int64_t m) const {
  switch (kind) {
    case WeightKind::f32:
      // row by row: a batch of rows would take the blocked GEMM, whose sums run in another order
      for (int64_t i = 0; i < m; ++i) f32_product(*this, x + i * in, y + i * out, 1);
      return;
    case WeightKind::q8_0:
    case WeightKind::q4_1:
      if (panels) {  // the int8 path, ops.quant_matmul_packed: every row of x in one pass
        PackedMatmulArgs a;
        a.x = x;
        a.w = panels;
        a.y = y;
        a.m = m;
        a.n = out;
        a.k = in;
        a.type = kind == WeightKind::q8_0 ? QuantType::q8_0 : QuantType::q4_1;
        a.x_bits = x_bits;
        KG_DISPATCH(quant_packed_kernels).matmul(a);
      } else {  // ops.quant_matmul's fused decode-and-dot (what backend="auto" runs for a row)
        quant_product(*this, x, y, m, KG_DISPATCH(quant_kernels).matmul_fused);
      }
      break;
    case WeightKind::bf16:
      // ops.bf16_matmul(backend="auto") for one row, row by row: widen in registers + FMA
      for (int64_t i = 0; i < m; ++i) {
        Bf16MatmulArgs a;
        a.x = x + i * in;
        a.w = static_cast<const uint16_t*>(weight);
        a.y = y + i * out;
        a.m = 1;
        a.n = out;
        a.k = in;
        KG_DISPATCH(bf16_kernels).matmul_auto(a);
      }
      break;
    default:
      throw std::invalid_argument("Linear: unknown weight kind");
  }
  add_bias(y, m);
}

void Linear::add_bias(float* y, int64_t m) const {
  if (bias)
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < out; ++j) y[i * out + j] += bias[j];
}

void Linear::forward_prompt(const float* x, float* y, int64_t m) const {
  if (kind == WeightKind::f32) {  // ops.linear: the blocked GEMM, m rows at once
    f32_product(*this, x, y, m);
  } else if (kind == WeightKind::bf16 || panels) {  // one call for m rows in any case
    forward(x, y, m);
  } else {  // ops.quant_matmul(backend="auto"): fused for few rows, tiled for more
    quant_product(*this, x, y, m, KG_DISPATCH(quant_kernels).matmul_auto);
    add_bias(y, m);
  }
}

static void require(bool ok, const std::string& msg) {
  if (!ok) throw std::invalid_argument("Transformer: " + msg);
}

Transformer::Transformer(const TransformerConfig& config, TransformerWeights weights,
                         std::vector<KVCacheBuffers> caches)
    : c_(config), w_(std::move(weights)), caches_(std::move(caches)) {
  require(c_.vocab_size >= 1 && c_.block_size >= 1 && c_.n_layer >= 1 && c_.mlp_hidden >= 1,
          "vocab_size, block_size, n_layer and mlp_hidden must be >= 1");
  require(c_.n_head >= 1 && c_.n_embd % c_.n_head == 0, "n_embd must be divisible by n_head");
  require(c_.n_kv_head >= 1 && c_.n_head % c_.n_kv_head == 0,
          "n_head must be divisible by n_kv_head");
  require(c_.positions != PositionsKind::rope || c_.head_dim() % 2 == 0,
          "RoPE needs an even head_dim");
  require(static_cast<int64_t>(w_.layers.size()) == c_.n_layer, "one LayerWeights per layer");
  require(!caches_.empty(), "at least one KV cache");
  for (const KVCacheBuffers& cache : caches_) {
    const size_t k_n = cache.half ? cache.k16.size() : cache.k.size();
    const size_t v_n = cache.half ? cache.v16.size() : cache.v.size();
    require(static_cast<int64_t>(k_n) == c_.n_layer && static_cast<int64_t>(v_n) == c_.n_layer,
            "one K and one V buffer per layer");
    require(cache.max_len >= 1, "the KV cache's max_len must be >= 1");
  }
  const int64_t C = c_.n_embd;
  if (c_.positions == PositionsKind::sinusoidal) {
    // the table the Python path caches: sinusoidal_positions(block_size, C), fast version
    sinusoidal_.resize(c_.block_size * C);
    std::vector<double> freq((C + 1) / 2);
    SinusoidalArgs s;
    s.out = sinusoidal_.data();
    s.t = c_.block_size;
    s.c = C;
    s.freq = freq.data();
    KG_DISPATCH(rope_kernels).sinusoidal_fast(s);
  }
  rope_table_floats_ = c_.rope_interleaved ? 2 * c_.head_dim() : c_.head_dim();  // T = 1
  reserve_rows(1);
}

void Transformer::reserve_rows(int64_t n) {
  if (n <= rows_) return;
  x_.resize(n * c_.n_embd);
  h_.resize(n * c_.n_embd);
  y_.resize(n * c_.n_embd);
  proj_.resize(n * c_.n_embd);
  qkv_.resize(n * c_.qkv_dim());
  fc_.resize(n * c_.fc_dim());
  act_.resize(n * c_.mlp_hidden);
  if (c_.positions == PositionsKind::rope) {  // RoPE's scratch, one per row (rows run in parallel)
    rope_table_.resize(n * rope_table_floats_);
    rope_freq_.resize(n * (c_.head_dim() / 2));
  }
  rows_ = n;
}

int64_t Transformer::max_positions(int64_t slot) const {
  const int64_t len = caches_.at(slot).max_len;
  return c_.block_size < len ? c_.block_size : len;
}

void Transformer::norm(const float* x, const float* weight, const float* bias, float* y,
                       int64_t rows) const {
  const NormVersion& k = KG_DISPATCH(norm_kernels).fast;
  if (c_.norm == NormKind::layernorm) {
    LayerNormArgs a;
    a.x = x;
    a.weight = weight;
    a.bias = bias;
    a.y = y;
    a.rows = rows;
    a.cols = c_.n_embd;
    a.eps = c_.norm_eps;
    k.layernorm(a);
  } else {
    RMSNormArgs a;
    a.x = x;
    a.weight = weight;
    a.y = y;
    a.rows = rows;
    a.cols = c_.n_embd;
    a.eps = c_.norm_eps;
    k.rmsnorm(a);
  }
}

namespace {

// Adds the time since the previous lap to a Profile bucket (nothing when profiling is off).
class Laps {
 public:
  explicit Laps(bool on) : on_(on) {
    if (on_) last_ = std::chrono::steady_clock::now();
  }
  void lap(double& bucket) {
    if (!on_) return;
    auto now = std::chrono::steady_clock::now();
    bucket += std::chrono::duration<double>(now - last_).count();
    last_ = now;
  }

 private:
  bool on_;
  std::chrono::steady_clock::time_point last_;
};

}  // namespace

void Transformer::set_profiling(bool on) {
  std::lock_guard<std::mutex> lock(mutex_);
  profiling_ = on;
  profile_ = Profile();
}

Transformer::Profile Transformer::profile() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return profile_;
}

ChunkPool::Stats Transformer::pool_stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return pool_ ? pool_->stats() : ChunkPool::Stats();
}

void Transformer::rope_heads(float* x, int64_t heads, int64_t t, int64_t offset, float* table,
                             double* freq) const {
  RopeArgs r;
  r.x = x;
  r.out = x;  // in place: each row is read before it is written
  r.n = heads;
  r.t = t;
  r.d = c_.head_dim();
  r.rotary_dim = c_.head_dim();
  r.offset = offset;
  r.base = c_.rope_base;
  r.interleaved = c_.rope_interleaved;
  r.table = table;
  r.freq = freq;
  KG_DISPATCH(rope_kernels).rope_fast(r);
}

void Transformer::store_kv(const KVCacheBuffers& cache, int64_t l, const float* k, const float* v,
                           int64_t t, int64_t pos) const {
  const int64_t hd = c_.head_dim(), row = t * hd;
  const HalfStoreFn to_half = KG_DISPATCH(attention_kernels).to_half;
  for (int64_t g = 0; g < c_.n_kv_head; ++g) {
    const int64_t at = (g * cache.max_len + pos) * hd;
    if (cache.half) {  // KVCache.write's numpy cast, bit for bit
      to_half(k + g * row, cache.k16[l] + at, row);
      to_half(v + g * row, cache.v16[l] + at, row);
    } else {
      std::memcpy(cache.k[l] + at, k + g * row, row * sizeof(float));
      std::memcpy(cache.v[l] + at, v + g * row, row * sizeof(float));
    }
  }
}

void Transformer::attend_cache(const KVCacheBuffers& cache, int64_t l, const float* q, float* out,
                               int64_t t, int64_t s) const {
  const int64_t hd = c_.head_dim();
  AttentionArgs a;
  a.q = q;
  if (cache.half) {
    a.k16 = cache.k16[l];
    a.v16 = cache.v16[l];
  } else {
    a.k = cache.k[l];
    a.v = cache.v[l];
  }
  a.out = out;
  a.heads = c_.n_head;
  a.kv_heads = c_.n_kv_head;
  a.t = t;
  a.s = s;
  a.d = hd;
  a.kv_capacity = cache.max_len;
  a.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(hd)));
  a.causal = true;
  // ops.attention(backend="auto"): decode up to 16 queries per head, flash above
  const AttentionKernels& attention = KG_DISPATCH(attention_kernels);
  (t <= 16 ? attention.decode : attention.flash)(a);
}

void Transformer::embed(const int64_t* tokens, const int64_t* positions, int64_t n) {
  const int64_t C = c_.n_embd;
  float* x = x_.data();
  // token embeddings (+ absolute positions), row i for tokens[i]
  for (int64_t i = 0; i < n; ++i) {
    const int64_t token = tokens[i], pos = positions[i];
    float* xi = x + i * C;
    if (w_.wte_kind == WeightKind::f32) {
      std::memcpy(xi, w_.wte + token * C, C * sizeof(float));
    } else if (w_.wte_kind == WeightKind::bf16) {  // one bf16 row widened, as ops.from_bf16 does
      Bf16WidenArgs d;
      d.bits = w_.wte_bf16 + token * C;
      d.out = xi;
      d.n = C;
      KG_DISPATCH(bf16_kernels).from_bf16(d);
    } else {  // one row of the quantized table, as ops.dequantize does it
      DequantizeArgs d;
      d.type = w_.wte_kind == WeightKind::q8_0 ? QuantType::q8_0 : QuantType::q4_1;
      d.raw = w_.wte_quantized + token * (C / kQuantBlock) * quant_block_bytes(d.type);
      d.out = xi;
      d.rows = 1;
      d.cols = C;
      KG_DISPATCH(quant_kernels).dequantize_fast(d);
    }
    const float* pe = c_.positions == PositionsKind::learned      ? w_.wpe + pos * C
                      : c_.positions == PositionsKind::sinusoidal ? sinusoidal_.data() + pos * C
                                                                  : nullptr;
    if (pe)
      for (int64_t j = 0; j < C; ++j) xi[j] += pe[j];
  }

}

void Transformer::decode(int64_t token, int64_t pos, float* logits) {
  const int64_t slot = 0;
  decode_batch(&slot, &token, &pos, 1, logits);
}

void Transformer::decode_batch(const int64_t* slots, const int64_t* tokens,
                               const int64_t* positions, int64_t n, float* logits) {
  const int64_t S = static_cast<int64_t>(caches_.size());
  if (n < 1 || n > S)
    throw std::invalid_argument("Transformer.decode_batch: between 1 and " + std::to_string(S) +
                                " rows (one per cache), got " + std::to_string(n));
  for (int64_t i = 0; i < n; ++i) {
    const int64_t slot = slots[i], token = tokens[i], pos = positions[i];
    if (slot < 0 || slot >= S)
      throw std::invalid_argument("Transformer.decode_batch: slot must be in [0, " +
                                  std::to_string(S) + "), got " + std::to_string(slot));
    for (int64_t j = 0; j < i; ++j)
      if (slots[j] == slot)
        throw std::invalid_argument("Transformer.decode_batch: cache " + std::to_string(slot) +
                                    " appears twice in one batch");
    if (token < 0 || token >= c_.vocab_size)
      throw std::invalid_argument("Transformer.decode: token must be in [0, " +
                                  std::to_string(c_.vocab_size) + "), got " + std::to_string(token));
    if (pos < 0 || pos >= max_positions(slot))
      throw std::invalid_argument(
          "Transformer.decode: pos must be in [0, " + std::to_string(max_positions(slot)) +
          ") (min of block_size " + std::to_string(c_.block_size) + " and the cache's max_len " +
          std::to_string(caches_[slot].max_len) + "), got " + std::to_string(pos));
  }
  std::lock_guard<std::mutex> lock(mutex_);
  reserve_rows(n);
  const int threads = num_threads();
  if (!pool_ || pool_->threads() != threads) pool_ = std::make_unique<ChunkPool>(threads);
  ScopedPool on_pool(pool_.get());  // this step's parallel loops run on the pool
  // the last 2 kProbeSteps steps of a period: reference steps in the current way, then probe
  // steps in the other
  // (a fresh runner probes every kFirstPeriod steps at first, so that a generation under load
  // settles within a few tokens)
  const int64_t period = steps_ < 4 * kFirstPeriod ? kFirstPeriod : kProbePeriod;
  const int64_t phase = steps_++ % period;
  const bool probing = threads > 1 && phase >= period - kProbeSteps;
  pool_->set_solo(probing ? !solo_ : solo_);
  const auto step_start = std::chrono::steady_clock::now();
  Laps t(profiling_);
  double &t_matvec = profile_.matvec, &t_attention = profile_.attention, &t_other = profile_.other;
  const int64_t C = c_.n_embd, H = c_.n_head, Hkv = c_.n_kv_head, hd = c_.head_dim();
  const int64_t F = c_.mlp_hidden, QKV = c_.qkv_dim(), FC = c_.fc_dim();
  float *x = x_.data(), *h = h_.data(), *qkv = qkv_.data(), *y = y_.data(), *proj = proj_.data();

  embed(tokens, positions, n);

  const ActivationVersion& act = KG_DISPATCH(activation_kernels).fast;
  for (int64_t l = 0; l < c_.n_layer; ++l) {
    const LayerWeights& L = w_.layers[l];
    // attention: each row of qkv holds q [H, hd], k [Hkv, hd], v [Hkv, hd] back to back
    norm(x, L.ln_1_weight, L.ln_1_bias, h, n);
    t.lap(t_other);
    L.c_attn.forward(h, qkv, n);
    t.lap(t_matvec);
    // per row: RoPE at its position, K and V into its cache, attention over its cache. One
    // row splits its heads and keys between the threads; several rows go to the threads whole.
    auto attend = [&](int64_t i) {
      const int64_t pos = positions[i];
      const KVCacheBuffers& cache = caches_[slots[i]];
      float* qkv_i = qkv + i * QKV;  // q [H, 1, hd], k [Hkv, 1, hd], v [Hkv, 1, hd]
      if (c_.positions == PositionsKind::rope)  // q and k heads together
        rope_heads(qkv_i, H + Hkv, 1, pos, rope_table_.data() + i * rope_table_floats_,
                   rope_freq_.data() + i * (hd / 2));
      store_kv(cache, l, qkv_i + H * hd, qkv_i + (H + Hkv) * hd, 1, pos);
      attend_cache(cache, l, qkv_i, y + i * C, 1, pos + 1);  // [H, 1, hd] is the merged [C]
    };
    if (n == 1)
      attend(0);
    else
      parallel_for(n, 1, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) attend(i);
      });
    t.lap(t_attention);
    L.attn_proj.forward(y, proj, n);
    t.lap(t_matvec);
    for (int64_t j = 0; j < n * C; ++j) x[j] += proj[j];

    // MLP
    norm(x, L.ln_2_weight, L.ln_2_bias, h, n);
    t.lap(t_other);
    L.c_fc.forward(h, fc_.data(), n);
    t.lap(t_matvec);
    for (int64_t i = 0; i < n; ++i) {
      float* fc = fc_.data() + i * FC;
      if (c_.activation == ActivationKind::swiglu) {
        SwigluArgs s;  // fc holds gate [F] then up [F]
        s.gate = fc;
        s.up = fc + F;
        s.out = act_.data() + i * F;
        s.n = F;
        act.swiglu(s);
      } else {
        ActivationArgs s;
        s.x = fc;
        s.out = act_.data() + i * F;
        s.n = F;
        s.kind = c_.activation == ActivationKind::gelu ? Activation::gelu_tanh : Activation::relu;
        act.forward(s);
      }
    }
    t.lap(t_other);
    L.mlp_proj.forward(act_.data(), proj, n);
    t.lap(t_matvec);
    for (int64_t j = 0; j < n * C; ++j) x[j] += proj[j];
  }
  norm(x, w_.ln_f_weight, w_.ln_f_bias, h, n);
  t.lap(t_other);
  w_.lm_head.forward(h, logits, n);
  t.lap(t_matvec);
  if (profiling_) profile_.tokens += n;
  if (threads > 1 && phase >= period - 2 * kProbeSteps) {
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - step_start).count();
    (probing ? probe_alt_ : probe_ref_) += dt;
    if (phase == period - 1) {
      if (probe_alt_ < kProbeMargin * probe_ref_) {
        solo_ = !solo_;
        ++profile_.switches;
      }
      probe_ref_ = probe_alt_ = 0.0;
    }
  }
  if (solo_) ++profile_.solo_steps;
}

}  // namespace model
}  // namespace kg

namespace kg {
namespace model {

void Transformer::prefill(int64_t slot, const int64_t* tokens, int64_t T, int64_t pos0,
                          float* logits) {
  const int64_t S = static_cast<int64_t>(caches_.size());
  if (slot < 0 || slot >= S)
    throw std::invalid_argument("Transformer.prefill: slot must be in [0, " + std::to_string(S) +
                                "), got " + std::to_string(slot));
  if (T < 1) throw std::invalid_argument("Transformer.prefill: give at least one token");
  if (pos0 < 0 || pos0 + T > max_positions(slot))
    throw std::invalid_argument(
        "Transformer.prefill: positions " + std::to_string(pos0) + ".." +
        std::to_string(pos0 + T - 1) + " do not fit in [0, " + std::to_string(max_positions(slot)) +
        ") (min of block_size and the cache's max_len)");
  for (int64_t i = 0; i < T; ++i)
    if (tokens[i] < 0 || tokens[i] >= c_.vocab_size)
      throw std::invalid_argument("Transformer.prefill: token must be in [0, " +
                                  std::to_string(c_.vocab_size) + "), got " +
                                  std::to_string(tokens[i]));
  std::lock_guard<std::mutex> lock(mutex_);
  // A prompt's products are large: they run on OpenMP's threads as the Python path's do.
  reserve_rows(T);
  const int64_t C = c_.n_embd, H = c_.n_head, Hkv = c_.n_kv_head, hd = c_.head_dim();
  const int64_t F = c_.mlp_hidden, QKV = c_.qkv_dim(), FC = c_.fc_dim(), NH = H + 2 * Hkv;
  heads_.resize(NH * T * hd);
  heads_out_.resize(H * T * hd);
  std::vector<int64_t> positions(T);
  for (int64_t i = 0; i < T; ++i) positions[i] = pos0 + i;
  const KVCacheBuffers& cache = caches_[slot];
  float *x = x_.data(), *h = h_.data(), *qkv = qkv_.data(), *y = y_.data(), *proj = proj_.data();
  float *heads = heads_.data(), *out = heads_out_.data();
  embed(tokens, positions.data(), T);

  const ActivationVersion& act = KG_DISPATCH(activation_kernels).fast;
  std::vector<float> rope_table;
  std::vector<double> rope_freq;
  if (c_.positions == PositionsKind::rope) {
    rope_table.resize(T * rope_table_floats_);
    rope_freq.resize(hd / 2);
  }
  for (int64_t l = 0; l < c_.n_layer; ++l) {
    const LayerWeights& L = w_.layers[l];
    norm(x, L.ln_1_weight, L.ln_1_bias, h, T);
    L.c_attn.forward_prompt(h, qkv, T);
    // [T, heads, hd] -> [heads, T, hd]: q, then k, then v (forward_cached's _split_heads)
    for (int64_t i = 0; i < T; ++i)
      for (int64_t n = 0; n < NH; ++n)
        std::memcpy(heads + (n * T + i) * hd, qkv + i * QKV + n * hd, hd * sizeof(float));
    if (c_.positions == PositionsKind::rope)  // q and k heads: forward_cached's two calls in one
      rope_heads(heads, H + Hkv, T, pos0, rope_table.data(), rope_freq.data());
    store_kv(cache, l, heads + H * T * hd, heads + (H + Hkv) * T * hd, T, pos0);
    attend_cache(cache, l, heads, out, T, pos0 + T);
    for (int64_t i = 0; i < T; ++i)  // [H, T, hd] -> [T, C] (_merge_heads)
      for (int64_t n = 0; n < H; ++n)
        std::memcpy(y + i * C + n * hd, out + (n * T + i) * hd, hd * sizeof(float));
    L.attn_proj.forward_prompt(y, proj, T);
    for (int64_t j = 0; j < T * C; ++j) x[j] += proj[j];

    norm(x, L.ln_2_weight, L.ln_2_bias, h, T);
    L.c_fc.forward_prompt(h, fc_.data(), T);
    if (c_.activation == ActivationKind::swiglu) {
      for (int64_t i = 0; i < T; ++i) {  // fc rows hold gate [F] then up [F]
        SwigluArgs s;
        s.gate = fc_.data() + i * FC;
        s.up = s.gate + F;
        s.out = act_.data() + i * F;
        s.n = F;
        act.swiglu(s);
      }
    } else {
      ActivationArgs s;
      s.x = fc_.data();
      s.out = act_.data();
      s.n = T * F;
      s.kind = c_.activation == ActivationKind::gelu ? Activation::gelu_tanh : Activation::relu;
      act.forward(s);
    }
    L.mlp_proj.forward_prompt(act_.data(), proj, T);
    for (int64_t j = 0; j < T * C; ++j) x[j] += proj[j];
  }
  norm(x + (T - 1) * C, w_.ln_f_weight, w_.ln_f_bias, h, 1);  // the last position only
  w_.lm_head.forward_prompt(h, logits, 1);
}

}  // namespace model
}  // namespace kg
