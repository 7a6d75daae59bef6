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

void Linear::forward(const float* x, float* y) const {
  switch (kind) {
    case WeightKind::f32: {
      // x [1, in] @ W^T: the matmul kernel takes its matrix-vector path for one row
      MatmulArgs a;
      a.a = x;
      a.b = static_cast<const float*>(weight);
      a.bias = bias;
      a.c = y;
      a.m = 1;
      a.n = out;
      a.k = in;
      a.batch_stride_c = out;
      a.trans_b = true;
      KG_DISPATCH(matmul_kernels).blocked(a);
      return;
    }
    case WeightKind::q8_0:
    case WeightKind::q4_1: {
      if (panels) {  // the int8 path: what ops.quant_matmul_packed runs for one row
        PackedMatmulArgs a;
        a.x = x;
        a.w = panels;
        a.y = y;
        a.m = 1;
        a.n = out;
        a.k = in;
        a.type = kind == WeightKind::q8_0 ? QuantType::q8_0 : QuantType::q4_1;
        a.x_bits = x_bits;
        KG_DISPATCH(quant_packed_kernels).matmul(a);
        if (bias)
          for (int64_t i = 0; i < out; ++i) y[i] += bias[i];
        return;
      }
      // the kernel ops.quant_matmul(backend="auto") runs for one row: fused decode-and-dot
      QuantMatmulArgs a;
      a.x = x;
      a.w = static_cast<const uint8_t*>(weight);
      a.y = y;
      a.m = 1;
      a.n = out;
      a.k = in;
      a.type = kind == WeightKind::q8_0 ? QuantType::q8_0 : QuantType::q4_1;
      KG_DISPATCH(quant_kernels).matmul_auto(a);
      if (bias)
        for (int64_t i = 0; i < out; ++i) y[i] += bias[i];
      return;
    }
    case WeightKind::bf16: {
      // the kernel ops.bf16_matmul(backend="auto") runs for one row: widen in registers + FMA
      Bf16MatmulArgs a;
      a.x = x;
      a.w = static_cast<const uint16_t*>(weight);
      a.y = y;
      a.m = 1;
      a.n = out;
      a.k = in;
      KG_DISPATCH(bf16_kernels).matmul_auto(a);
      if (bias)
        for (int64_t i = 0; i < out; ++i) y[i] += bias[i];
      return;
    }
  }
  throw std::invalid_argument("Linear: unknown weight kind");
}

static void require(bool ok, const std::string& msg) {
  if (!ok) throw std::invalid_argument("Transformer: " + msg);
}

Transformer::Transformer(const TransformerConfig& config, TransformerWeights weights,
                         KVCacheBuffers cache)
    : c_(config), w_(std::move(weights)), cache_(std::move(cache)) {
  require(c_.vocab_size >= 1 && c_.block_size >= 1 && c_.n_layer >= 1 && c_.mlp_hidden >= 1,
          "vocab_size, block_size, n_layer and mlp_hidden must be >= 1");
  require(c_.n_head >= 1 && c_.n_embd % c_.n_head == 0, "n_embd must be divisible by n_head");
  require(c_.n_kv_head >= 1 && c_.n_head % c_.n_kv_head == 0,
          "n_head must be divisible by n_kv_head");
  require(c_.positions != PositionsKind::rope || c_.head_dim() % 2 == 0,
          "RoPE needs an even head_dim");
  require(static_cast<int64_t>(w_.layers.size()) == c_.n_layer, "one LayerWeights per layer");
  require(static_cast<int64_t>(cache_.k.size()) == c_.n_layer &&
              static_cast<int64_t>(cache_.v.size()) == c_.n_layer,
          "one K and one V buffer per layer");
  require(cache_.max_len >= 1, "the KV cache's max_len must be >= 1");
  const int64_t C = c_.n_embd;
  x_.resize(C);
  h_.resize(C);
  y_.resize(C);
  proj_.resize(C);
  qkv_.resize(c_.qkv_dim());
  fc_.resize(c_.fc_dim());
  act_.resize(c_.mlp_hidden);
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
  if (c_.positions == PositionsKind::rope) {
    const int64_t rd = c_.head_dim();
    rope_table_.resize(c_.rope_interleaved ? 2 * rd : rd);  // rope_table_floats for T = 1
    rope_freq_.resize(rd / 2);
  }
}

void Transformer::norm(const float* x, const float* weight, const float* bias, float* y) const {
  const NormVersion& k = KG_DISPATCH(norm_kernels).fast;
  if (c_.norm == NormKind::layernorm) {
    LayerNormArgs a;
    a.x = x;
    a.weight = weight;
    a.bias = bias;
    a.y = y;
    a.rows = 1;
    a.cols = c_.n_embd;
    a.eps = c_.norm_eps;
    k.layernorm(a);
  } else {
    RMSNormArgs a;
    a.x = x;
    a.weight = weight;
    a.y = y;
    a.rows = 1;
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

void Transformer::decode(int64_t token, int64_t pos, float* logits) {
  if (token < 0 || token >= c_.vocab_size)
    throw std::invalid_argument("Transformer.decode: token must be in [0, " +
                                std::to_string(c_.vocab_size) + "), got " + std::to_string(token));
  if (pos < 0 || pos >= max_positions())
    throw std::invalid_argument(
        "Transformer.decode: pos must be in [0, " + std::to_string(max_positions()) +
        ") (min of block_size " + std::to_string(c_.block_size) + " and the cache's max_len " +
        std::to_string(cache_.max_len) + "), got " + std::to_string(pos));
  std::lock_guard<std::mutex> lock(mutex_);
  const int threads = num_threads();
  if (!pool_ || pool_->threads() != threads) pool_ = std::make_unique<ChunkPool>(threads);
  ScopedPool on_pool(pool_.get());  // this token's parallel loops run on the pool
  Laps t(profiling_);
  double &t_matvec = profile_.matvec, &t_attention = profile_.attention, &t_other = profile_.other;
  const int64_t C = c_.n_embd, H = c_.n_head, Hkv = c_.n_kv_head, hd = c_.head_dim();
  const int64_t F = c_.mlp_hidden;
  float *x = x_.data(), *h = h_.data(), *qkv = qkv_.data(), *y = y_.data(), *proj = proj_.data();

  // token embedding (+ absolute positions)
  if (w_.wte_kind == WeightKind::f32) {
    std::memcpy(x, w_.wte + token * C, C * sizeof(float));
  } else if (w_.wte_kind == WeightKind::bf16) {  // one bf16 row widened, as ops.from_bf16 does
    Bf16WidenArgs d;
    d.bits = w_.wte_bf16 + token * C;
    d.out = x;
    d.n = C;
    KG_DISPATCH(bf16_kernels).from_bf16(d);
  } else {  // one row of the quantized table, as ops.dequantize does it
    DequantizeArgs d;
    d.type = w_.wte_kind == WeightKind::q8_0 ? QuantType::q8_0 : QuantType::q4_1;
    d.raw = w_.wte_quantized + token * (C / kQuantBlock) * quant_block_bytes(d.type);
    d.out = x;
    d.rows = 1;
    d.cols = C;
    KG_DISPATCH(quant_kernels).dequantize_fast(d);
  }
  const float* pe = c_.positions == PositionsKind::learned      ? w_.wpe + pos * C
                    : c_.positions == PositionsKind::sinusoidal ? sinusoidal_.data() + pos * C
                                                                : nullptr;
  if (pe)
    for (int64_t i = 0; i < C; ++i) x[i] += pe[i];

  const AttentionKernels& attention = KG_DISPATCH(attention_kernels);
  const ActivationVersion& act = KG_DISPATCH(activation_kernels).fast;
  const RopeKernels& rope = KG_DISPATCH(rope_kernels);
  for (int64_t l = 0; l < c_.n_layer; ++l) {
    const LayerWeights& L = w_.layers[l];
    // attention: qkv holds q [H, hd], k [Hkv, hd], v [Hkv, hd] back to back
    norm(x, L.ln_1_weight, L.ln_1_bias, h);
    t.lap(t_other);
    L.c_attn.forward(h, qkv);
    t.lap(t_matvec);
    if (c_.positions == PositionsKind::rope) {
      RopeArgs r;  // q and k rows together: the same rotation as two calls at offset pos
      r.x = qkv;
      r.out = qkv;  // in place: each row is read before it is written
      r.n = H + Hkv;
      r.t = 1;
      r.d = hd;
      r.rotary_dim = hd;
      r.offset = pos;
      r.base = c_.rope_base;
      r.interleaved = c_.rope_interleaved;
      r.table = rope_table_.data();
      r.freq = rope_freq_.data();
      rope.rope_fast(r);
    }
    t.lap(t_other);
    const float* k_new = qkv + H * hd;
    const float* v_new = k_new + Hkv * hd;
    for (int64_t g = 0; g < Hkv; ++g) {
      std::memcpy(cache_.k[l] + (g * cache_.max_len + pos) * hd, k_new + g * hd, hd * sizeof(float));
      std::memcpy(cache_.v[l] + (g * cache_.max_len + pos) * hd, v_new + g * hd, hd * sizeof(float));
    }
    AttentionArgs a;
    a.q = qkv;
    a.k = cache_.k[l];
    a.v = cache_.v[l];
    a.out = y;  // [H, 1, hd] is already the merged [C]
    a.heads = H;
    a.kv_heads = Hkv;
    a.t = 1;
    a.s = pos + 1;
    a.d = hd;
    a.kv_capacity = cache_.max_len;
    a.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(hd)));
    a.causal = true;
    attention.decode(a);
    t.lap(t_attention);
    L.attn_proj.forward(y, proj);
    t.lap(t_matvec);
    for (int64_t i = 0; i < C; ++i) x[i] += proj[i];

    // MLP
    norm(x, L.ln_2_weight, L.ln_2_bias, h);
    t.lap(t_other);
    L.c_fc.forward(h, fc_.data());
    t.lap(t_matvec);
    if (c_.activation == ActivationKind::swiglu) {
      SwigluArgs s;  // fc holds gate [F] then up [F]
      s.gate = fc_.data();
      s.up = fc_.data() + F;
      s.out = act_.data();
      s.n = F;
      act.swiglu(s);
    } else {
      ActivationArgs s;
      s.x = fc_.data();
      s.out = act_.data();
      s.n = F;
      s.kind = c_.activation == ActivationKind::gelu ? Activation::gelu_tanh : Activation::relu;
      act.forward(s);
    }
    t.lap(t_other);
    L.mlp_proj.forward(act_.data(), proj);
    t.lap(t_matvec);
    for (int64_t i = 0; i < C; ++i) x[i] += proj[i];
  }
  norm(x, w_.ln_f_weight, w_.ln_f_bias, h);
  t.lap(t_other);
  w_.lm_head.forward(h, logits);
  t.lap(t_matvec);
  if (profiling_) ++profile_.tokens;
}

}  // namespace model
}  // namespace kg
