// The decode runner: one token through the whole transformer in one native call.
//
// Python's GPT.forward_cached makes ~10 kernel calls per layer, each paying for argument
// checks, array allocation and the GIL; for one token of a small model that overhead is larger
// than the arithmetic. Transformer::decode runs the same steps, with the same dispatched
// kernels in the same order, on preallocated scratch:
//
//     x = wte[token] (+ wpe[pos] | + sinusoidal[pos])                      x [C]
//     per layer:  h = norm(x);  qkv = W_qkv h (+ b)                         qkv [(H + 2 Hkv) hd]
//                 RoPE(q, k) at pos;  K[l][:, pos] = k;  V[l][:, pos] = v
//                 y = attention(q, K[l][:, 0..pos], V[l][:, 0..pos])        y [H hd] = [C]
//                 x += W_o y (+ b)
//                 h = norm(x);  x += W_down act(W_up h (+ b)) (+ b)         act: gelu | relu | swiglu
//     logits = W_head norm(x)                                               logits [V]
//
// so its logits equal forward_cached's for the same token and cache. Parameters and the KV
// cache are borrowed pointers (the Python object keeps their arrays alive). The class does no
// Python work and allocates nothing per token.
#pragma once
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "common/pool.h"

namespace kg {
namespace model {

enum class NormKind { layernorm, rmsnorm };
enum class ActivationKind { gelu, swiglu, relu };
enum class PositionsKind { learned, sinusoidal, rope };

// GPTConfig (python/kernelgpt/model.py), with mlp_hidden and n_kv_head resolved.
struct TransformerConfig {
  int64_t vocab_size = 0, block_size = 0, n_layer = 0, n_head = 0, n_kv_head = 0, n_embd = 0;
  int64_t mlp_hidden = 0;
  NormKind norm = NormKind::layernorm;
  float norm_eps = 1e-5f;
  ActivationKind activation = ActivationKind::gelu;
  PositionsKind positions = PositionsKind::learned;
  double rope_base = 10000.0;
  bool rope_interleaved = false;  // "interleaved" (GPT-J / llama.cpp) or "half" (HF / NeoX)

  int64_t head_dim() const { return n_embd / n_head; }
  int64_t qkv_dim() const { return (n_head + 2 * n_kv_head) * head_dim(); }
  int64_t fc_dim() const { return activation == ActivationKind::swiglu ? 2 * mlp_hidden : mlp_hidden; }
};

// How a linear layer's weight is stored: float32, or ggml's Q8_0 / Q4_1 blocks (GGUF models;
// rows of in / 32 blocks, see kernels/quant.h) multiplied by the fused dequantize-and-dot kernel,
// or bfloat16 bit patterns (uint16 [out, in], kernels/bf16.h) widened in registers.
enum class WeightKind { f32, q8_0, q4_1, bf16 };

// y [m, out] = x W^T + b for m tokens' x [m, in]; W in nn.Linear's [out, in] layout. Each row
// of y is computed exactly as for m = 1 (quantized weights: one pass over W for all rows;
// float32 and bf16 weights: row by row), so a batch changes no result.
struct Linear {
  WeightKind kind = WeightKind::f32;
  const void* weight = nullptr;
  const float* bias = nullptr;  // null: no bias
  // q8_0 / q4_1 only, may be null: the same weights as packed panels (kernels/quant.h); then
  // x is quantized to int8 per block and the product runs on VPDPBUSD (the int8 path)
  const uint8_t* panels = nullptr;
  int x_bits = 16;  // with panels: x in one int8 pass (8) or two (16), see kernels/quant.h
  int64_t in = 0, out = 0;
  void forward(const float* x, float* y, int64_t m = 1) const;
  // The same product as the Python path computes it for a prompt of m tokens (prefill): float32
  // and bf16 weights as one matrix product, quantized ones as ops.quant_matmul / the packed
  // kernel do for m rows.
  void forward_prompt(const float* x, float* y, int64_t m) const;
  void add_bias(float* y, int64_t m) const;  // y [m, out] += b
};

struct LayerWeights {
  const float* ln_1_weight = nullptr;
  const float* ln_1_bias = nullptr;  // null: none (rmsnorm, or bias=False)
  Linear c_attn, attn_proj;
  const float* ln_2_weight = nullptr;
  const float* ln_2_bias = nullptr;
  Linear c_fc, mlp_proj;
};

struct TransformerWeights {
  const float* wte = nullptr;  // [V, C] float32 (wte_kind f32) ...
  const uint8_t* wte_quantized = nullptr;  // ... or V rows of Q8_0 / Q4_1 blocks
  const uint16_t* wte_bf16 = nullptr;      // ... or [V, C] bf16 (wte_kind bf16)
  WeightKind wte_kind = WeightKind::f32;
  const float* wpe = nullptr;  // [block_size, C] for learned positions, else null
  std::vector<LayerWeights> layers;
  const float* ln_f_weight = nullptr;
  const float* ln_f_bias = nullptr;
  Linear lm_head;  // [V, C]: wte itself when the head is tied
};

// One KV cache's buffers, per layer [1, Hkv, max_len, hd] (batch 1): float32 (k, v) or, for a
// half-precision cache, fp16 bits (k16, v16; stored rounded to nearest even, widened on read).
struct KVCacheBuffers {
  std::vector<float*> k, v;
  std::vector<uint16_t*> k16, v16;
  bool half = false;
  int64_t max_len = 0;
};

class Transformer {
 public:
  // Checks the config's consistency (std::invalid_argument); shapes are the caller's job.
  // `caches`: one or more sequences' KV caches (slots 0, 1, ...).
  Transformer(const TransformerConfig& config, TransformerWeights weights,
              std::vector<KVCacheBuffers> caches);

  // Runs `token` at position `pos` in cache slot 0 (which must hold positions 0..pos-1),
  // writes its K, V into the cache at pos and the next-token logits [V] into `logits`. Throws
  // std::invalid_argument for a token or position out of range. Thread-safe (serialised).
  void decode(int64_t token, int64_t pos, float* logits);

  // The same for n sequences at once: row i runs tokens[i] at positions[i] in cache slots[i]
  // (distinct slots), logits [n, V]. Each weight matrix is read once for the whole batch
  // (quantized weights), and row i's logits equal decode's for that sequence alone.
  void decode_batch(const int64_t* slots, const int64_t* tokens, const int64_t* positions,
                    int64_t n, float* logits);

  // Where decode's time goes, summed over tokens while profiling is on (a clock read at each
  // phase boundary, ~10 per layer): the matrix-vector products (QKV, output, MLP, LM head),
  // attention over the cache (with the K/V write), and the rest (embedding, norms, RoPE,
  // activation, residual adds).
  struct Profile {
    double matvec = 0.0, attention = 0.0, other = 0.0;
    int64_t tokens = 0;
    int64_t solo_steps = 0, switches = 0;  // steps run on one thread; switches between ways
  };
  void set_profiling(bool on);  // also clears the sums
  Profile profile() const;
  // Whether steps run on one thread (the probes' current choice); a new runner of the same
  // model may start from an older one's (set_solo).
  bool solo() const { return solo_; }
  void set_solo(bool solo) {
    std::lock_guard<std::mutex> lock(mutex_);
    solo_ = solo;
  }
  // The work pool's counters (solo loops, lag events...): see common/pool.h.
  ChunkPool::Stats pool_stats() const;

  const TransformerConfig& config() const { return c_; }
  // A prompt: tokens[0..T) at positions pos0.. in cache `slot` (which holds 0..pos0-1), their K
  // and V into the cache, the logits of the last one into `logits` [V]. The kernels and the
  // order of forward_cached (python/kernelgpt/model.py) for batch 1, with its ~15 Python-level
  // calls per layer and their copies gone; the same logits within float rounding (bit for bit
  // where the weights are int8 panels).
  void prefill(int64_t slot, const int64_t* tokens, int64_t T, int64_t pos0, float* logits);

  // min(block_size, the max_len of cache `slot`): the positions decode accepts there
  int64_t max_positions(int64_t slot = 0) const;
  int64_t slots() const { return static_cast<int64_t>(caches_.size()); }

 private:
  void norm(const float* x, const float* weight, const float* bias, float* y, int64_t rows) const;
  void reserve_rows(int64_t n);  // scratch for n rows

  TransformerConfig c_;
  TransformerWeights w_;
  std::vector<KVCacheBuffers> caches_;
  mutable std::mutex mutex_;  // decode uses the scratch below: one call at a time
  // decode's threads (num_threads() in all; rebuilt when that changes): every parallel loop of
  // a token runs on it in dynamic chunks, see common/pool.h
  std::unique_ptr<ChunkPool> pool_;
  // Two threads or one: which is faster right now (another process may hold a core). Every
  // kProbePeriod steps, kProbeSteps steps are timed in the current way and as many in the
  // other; the runner switches when the other took less than kProbeMargin of the time.
  static constexpr int64_t kProbePeriod = 48, kFirstPeriod = 12, kProbeSteps = 3;
  static constexpr double kProbeMargin = 0.95;
  bool solo_ = false;
  int64_t steps_ = 0;
  double probe_ref_ = 0.0, probe_alt_ = 0.0;
  bool profiling_ = false;
  Profile profile_;
  // scratch for rows_ rows, grown when a larger batch comes
  int64_t rows_ = 0;
  std::vector<float> x_, h_, qkv_, y_, proj_, fc_, act_;
  std::vector<float> heads_, heads_out_;  // prefill: q, k, v as [heads, T, hd]; attention's out
  void embed(const int64_t* tokens, const int64_t* positions, int64_t n);
  // RoPE in place on x [heads, t, hd] at positions offset.. (table, freq: the kernel's scratch)
  void rope_heads(float* x, int64_t heads, int64_t t, int64_t offset, float* table,
                  double* freq) const;
  // k, v [Hkv, t, hd] into layer l of cache at positions pos..
  void store_kv(const KVCacheBuffers& cache, int64_t l, const float* k, const float* v,
                int64_t t, int64_t pos) const;
  // q [H, t, hd] (the last t of s positions) against layer l's positions 0..s-1: out [H, t, hd]
  void attend_cache(const KVCacheBuffers& cache, int64_t l, const float* q, float* out,
                    int64_t t, int64_t s) const;
  std::vector<float> sinusoidal_;  // [block_size, C] for sinusoidal positions
  int64_t rope_table_floats_ = 0;  // RoPE's table scratch per row
  std::vector<float> rope_table_;
  std::vector<double> rope_freq_;
};

}  // namespace model
}  // namespace kg
