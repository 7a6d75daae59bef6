// _C.Transformer: the decode runner (csrc/model/transformer.h) bound to Python.
//
//   runner = _C.Transformer(config: dict, params: {name: float32 array}, k_cache: [array],
//                           v_cache: [array])
//   runner.decode(token, pos, logits)   # logits: float32 [V], written in place
//   batch = _C.Transformer(config, params, [[array], [array]...], [[array], [array]...])
//   batch.decode_batch(slots, tokens, positions, logits)   # logits [n, V]: n caches at once
//
// config is GPTConfig.to_dict(); params are the model's named views into its flat parameter
// buffer (GPT.params.views), k_cache / v_cache the KVCache's per-layer [1, Hkv, max_len, hd]
// buffers. A linear weight or wte may instead be (raw uint8 blocks, "q8_0" | "q4_1") or
// (uint16 bf16 bits [out, in], "bf16"). The runner keeps references to every array it reads or writes, so they stay alive
// as long as it does; it sees later in-place updates of the parameters (training, loading).
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "bindings/args.h"
#include "bindings/registry.h"
#include "kernels/quant.h"
#include "model/transformer.h"

namespace kg {
namespace bind {

namespace {

const char* kFn = "Transformer";

py::handle config_item(const py::dict& config, const char* key) {
  if (!config.contains(key))
    value_error(std::string(kFn) + ": config has no '" + key + "' (pass GPTConfig.to_dict())");
  return config[key];
}

int64_t config_int(const py::dict& config, const char* key) {
  py::handle v = config_item(config, key);
  if (PyBool_Check(v.ptr()) || !PyIndex_Check(v.ptr()))
    type_error(std::string(kFn) + ": config['" + key + "'] must be an int");
  py::object i = py::reinterpret_steal<py::object>(PyNumber_Index(v.ptr()));
  int overflow = 0;
  long long r = PyLong_AsLongLongAndOverflow(i.ptr(), &overflow);
  if (overflow || r > (int64_t(1) << 40))  // sizes beyond this cannot be allocated anyway
    value_error(std::string(kFn) + ": config['" + key + "'] is out of range");
  return r;
}

double config_float(const py::dict& config, const char* key) {
  py::handle v = config_item(config, key);
  if (PyBool_Check(v.ptr()) || !(PyFloat_Check(v.ptr()) || PyLong_Check(v.ptr())))
    type_error(std::string(kFn) + ": config['" + key + "'] must be a number");
  return py::cast<double>(v);
}

bool config_bool(const py::dict& config, const char* key) {
  py::handle v = config_item(config, key);
  if (!PyBool_Check(v.ptr())) type_error(std::string(kFn) + ": config['" + key + "'] must be a bool");
  return v.ptr() == Py_True;
}

// config[key] must be one of `names`; returns its index.
int config_choice(const py::dict& config, const char* key, std::initializer_list<const char*> names) {
  py::handle v = config_item(config, key);
  if (!py::isinstance<py::str>(v))
    type_error(std::string(kFn) + ": config['" + key + "'] must be a string");
  std::string s = py::cast<std::string>(v);
  int i = 0;
  for (const char* n : names) {
    if (s == n) return i;
    ++i;
  }
  value_error(std::string(kFn) + ": unknown " + key + " '" + s + "'");
}

// An index (Python int or numpy integer, not bool), for decode's token and pos.
int64_t index_arg(py::handle v, const char* name) {
  if (PyBool_Check(v.ptr()) || !PyIndex_Check(v.ptr()))
    type_error(std::string("Transformer.decode: ") + name + " must be an int, got " +
               std::string(py::str(py::type::handle_of(v).attr("__name__"))));
  py::object i = py::reinterpret_steal<py::object>(PyNumber_Index(v.ptr()));
  int overflow = 0;
  long long r = PyLong_AsLongLongAndOverflow(i.ptr(), &overflow);
  if (overflow) value_error(std::string("Transformer.decode: ") + name + " is out of range");
  return r;
}

class PyTransformer {
 public:
  PyTransformer(const py::dict& config, const py::dict& params, const py::sequence& k_cache,
                const py::sequence& v_cache) {
    model::TransformerConfig c;
    c.vocab_size = config_int(config, "vocab_size");
    c.block_size = config_int(config, "block_size");
    c.n_layer = config_int(config, "n_layer");
    c.n_head = config_int(config, "n_head");
    c.n_kv_head = config_int(config, "n_kv_head");
    c.n_embd = config_int(config, "n_embd");
    c.mlp_hidden = config_int(config, "mlp_hidden");
    c.norm = static_cast<model::NormKind>(config_choice(config, "norm", {"layernorm", "rmsnorm"}));
    double eps = config_float(config, "norm_eps");
    if (!(eps >= 0.0 && eps <= 3.4e38)) value_error(std::string(kFn) + ": norm_eps must be finite, >= 0");
    c.norm_eps = static_cast<float>(eps);
    c.activation = static_cast<model::ActivationKind>(
        config_choice(config, "activation", {"gelu", "swiglu", "relu"}));
    c.positions = static_cast<model::PositionsKind>(
        config_choice(config, "positions", {"learned", "sinusoidal", "rope"}));
    c.rope_base = config_float(config, "rope_base");
    if (!(c.rope_base > 0.0 && c.rope_base < 1e300))
      value_error(std::string(kFn) + ": rope_base must be a finite number > 0");
    c.rope_interleaved = config_choice(config, "rope_layout", {"half", "interleaved"}) == 1;
    const bool bias = config_bool(config, "bias"), tied = config_bool(config, "tied_head");
    if (c.vocab_size < 1 || c.block_size < 1 || c.n_layer < 1 || c.n_head < 1 || c.n_kv_head < 1 ||
        c.n_embd < 1 || c.mlp_hidden < 1)
      value_error(std::string(kFn) + ": every size in the config must be >= 1");
    if (c.n_embd % c.n_head || c.n_head % c.n_kv_head)
      value_error(std::string(kFn) + ": n_embd must be divisible by n_head and n_head by n_kv_head");

    const int64_t C = c.n_embd, V = c.vocab_size, hd = c.head_dim();
    auto param = [&](const std::string& name, const Shape& shape) -> const float* {
      if (!params.contains(name)) value_error(std::string(kFn) + ": params has no '" + name + "'");
      Array a = f32(params[name.c_str()], kFn, name.c_str());
      expect_shape(a, shape, kFn, name.c_str());
      keep(a);
      return a.cf32();
    };
    // A quantized weight comes as (raw uint8 [rows, in / 32 * block bytes], "q8_0" | "q4_1")
    // or (raw, qtype, panels, x_bits) with the int8 path's packed panels (ops.quant_pack), a bfloat16
    // one as (uint16 [rows, in], "bf16"); a plain array is float32 (returns null).
    auto quantized = [&](const std::string& name, int64_t rows, int64_t in,
                         model::WeightKind* kind, const uint8_t** panels, int* x_bits) -> const void* {
      *panels = nullptr;
      if (!params.contains(name)) value_error(std::string(kFn) + ": params has no '" + name + "'");
      py::handle obj = params[name.c_str()];
      if (!py::isinstance<py::tuple>(obj)) {
        *kind = model::WeightKind::f32;
        return nullptr;
      }
      py::tuple t = py::reinterpret_borrow<py::tuple>(obj);
      if ((t.size() != 2 && t.size() != 4) || !py::isinstance<py::str>(t[1]))
        type_error(std::string(kFn) + ": quantized '" + name +
                   "' must be (raw array, qtype) or (raw array, qtype, panels, x_bits)");
      std::string qtype = t[1].cast<std::string>();
      if (qtype != "q8_0" && qtype != "q4_1" && qtype != "bf16")
        value_error(std::string(kFn) + ": '" + name + "' has unknown qtype '" + qtype +
                    "' (expected 'q8_0', 'q4_1' or 'bf16')");
      const bool bf16 = qtype == "bf16";
      *kind = bf16 ? model::WeightKind::bf16
                   : qtype == "q8_0" ? model::WeightKind::q8_0 : model::WeightKind::q4_1;
      if (!bf16 && in % kQuantBlock)
        value_error(std::string(kFn) + ": '" + name + "' needs in features divisible by 32");
      const int64_t row_elems = bf16 ? in : in / kQuantBlock * quant_block_bytes(
          qtype == "q8_0" ? QuantType::q8_0 : QuantType::q4_1);
      if (!py::isinstance<py::array>(t[0]))
        type_error(std::string(kFn) + ": quantized '" + name + "' raw data must be a numpy array");
      py::array raw = py::reinterpret_borrow<py::array>(t[0]);
      const bool dtype_ok = bf16 ? raw.dtype().equal(py::dtype::of<uint16_t>())
                                 : raw.dtype().equal(py::dtype::of<uint8_t>());
      if (!dtype_ok || !(raw.flags() & py::array::c_style) || raw.ndim() != 2 ||
          raw.shape(0) != rows || raw.shape(1) != row_elems)
        value_error(std::string(kFn) + ": " + qtype + " '" + name + "' must be C-contiguous " +
                    (bf16 ? "uint16 [" : "uint8 [") + std::to_string(rows) + ", " +
                    std::to_string(row_elems) + "]");
      Array a;
      a.array = raw;
      a.present = true;
      a.shape = {rows, row_elems};
      a.size = rows * row_elems;
      keep(a);
      if (t.size() == 4) {
        if (bf16) value_error(std::string(kFn) + ": bf16 '" + name + "' takes no panels");
        *x_bits = index_arg(t[3], "x_bits");
        if (*x_bits != 8 && *x_bits != 16)
          value_error(std::string(kFn) + ": '" + name + "' x_bits must be 8 or 16");
        const int64_t bytes = quant_packed_bytes(
            qtype == "q8_0" ? QuantType::q8_0 : QuantType::q4_1, rows, in);
        if (!py::isinstance<py::array>(t[2]))
          type_error(std::string(kFn) + ": '" + name + "' panels must be a numpy array");
        py::array pk = py::reinterpret_borrow<py::array>(t[2]);
        if (!pk.dtype().equal(py::dtype::of<uint8_t>()) || !(pk.flags() & py::array::c_style) ||
            pk.ndim() != 1 || pk.shape(0) != bytes)
          value_error(std::string(kFn) + ": '" + name + "' panels must be C-contiguous uint8 [" +
                      std::to_string(bytes) + "] (ops.quant_pack of the raw blocks)");
        if (const char* why = quant_panels_mismatch(static_cast<const uint8_t*>(pk.data()),
                                                    qtype == "q8_0" ? QuantType::q8_0 : QuantType::q4_1,
                                                    rows, in))
          value_error(std::string(kFn) + ": '" + name + "' panels: " + why);
        Array p;
        p.array = pk;
        p.present = true;
        p.shape = {bytes};
        p.size = bytes;
        keep(p);
        *panels = static_cast<const uint8_t*>(pk.data()) + kPackHeader;
      }
      return raw.data();
    };
    auto linear = [&](const std::string& name, int64_t out, int64_t in) {
      model::Linear l;
      if (const void* q = quantized(name + ".weight", out, in, &l.kind, &l.panels, &l.x_bits)) {
        l.weight = q;
        l.bias = bias ? param(name + ".bias", {out}) : nullptr;
        l.in = in;
        l.out = out;
        return l;
      }
      l.weight = param(name + ".weight", {out, in});
      l.bias = bias ? param(name + ".bias", {out}) : nullptr;
      l.in = in;
      l.out = out;
      return l;
    };
    const bool norm_bias = bias && c.norm == model::NormKind::layernorm;
    model::TransformerWeights w;
    const uint8_t* wte_panels = nullptr;
    int wte_x_bits = 16;
    const void* wte_packed = quantized("wte", V, C, &w.wte_kind, &wte_panels, &wte_x_bits);
    if (w.wte_kind == model::WeightKind::bf16)
      w.wte_bf16 = static_cast<const uint16_t*>(wte_packed);
    else if (wte_packed)
      w.wte_quantized = static_cast<const uint8_t*>(wte_packed);
    else
      w.wte = param("wte", {V, C});
    if (c.positions == model::PositionsKind::learned) w.wpe = param("wpe", {c.block_size, C});
    for (int64_t i = 0; i < c.n_layer; ++i) {
      const std::string L = "h." + std::to_string(i) + ".";
      model::LayerWeights lw;
      lw.ln_1_weight = param(L + "ln_1.weight", {C});
      lw.ln_1_bias = norm_bias ? param(L + "ln_1.bias", {C}) : nullptr;
      lw.c_attn = linear(L + "attn.c_attn", c.qkv_dim(), C);
      lw.attn_proj = linear(L + "attn.c_proj", C, C);
      lw.ln_2_weight = param(L + "ln_2.weight", {C});
      lw.ln_2_bias = norm_bias ? param(L + "ln_2.bias", {C}) : nullptr;
      lw.c_fc = linear(L + "mlp.c_fc", c.fc_dim(), C);
      lw.mlp_proj = linear(L + "mlp.c_proj", C, c.mlp_hidden);
      w.layers.push_back(lw);
    }
    w.ln_f_weight = param("ln_f.weight", {C});
    w.ln_f_bias = norm_bias ? param("ln_f.bias", {C}) : nullptr;
    if (tied) {
      w.lm_head.kind = w.wte_kind;
      w.lm_head.weight = wte_packed ? wte_packed : static_cast<const void*>(w.wte);
      w.lm_head.panels = wte_panels;
      w.lm_head.x_bits = wte_x_bits;
      w.lm_head.in = C;
      w.lm_head.out = V;
    } else {  // its own matrix, no bias
      w.lm_head.in = C;
      w.lm_head.out = V;
      const void* q = quantized("lm_head.weight", V, C, &w.lm_head.kind, &w.lm_head.panels, &w.lm_head.x_bits);
      w.lm_head.weight = q ? q : static_cast<const void*>(param("lm_head.weight", {V, C}));
    }

    // one cache: k_cache = [array per layer]; several: k_cache = [[array per layer], ...]
    const bool several = k_cache.size() > 0 && !py::isinstance<py::array>(k_cache[0]);
    if (several && k_cache.size() != v_cache.size())
      value_error(std::string(kFn) + ": k_cache and v_cache must list the same number of caches");
    std::vector<model::KVCacheBuffers> caches;
    const size_t n_caches = several ? k_cache.size() : 1;
    for (size_t ci = 0; ci < n_caches; ++ci) {
      const std::string prefix = several ? "[" + std::to_string(ci) + "]" : "";
      py::sequence ks = several ? k_cache[ci].cast<py::sequence>() : k_cache;
      py::sequence vs = several ? v_cache[ci].cast<py::sequence>() : v_cache;
      model::KVCacheBuffers cache;
      if (static_cast<int64_t>(ks.size()) != c.n_layer || static_cast<int64_t>(vs.size()) != c.n_layer)
        value_error(std::string(kFn) + ": k_cache" + prefix + " and v_cache" + prefix +
                    " must hold one array per layer (" + std::to_string(c.n_layer) + "), got " +
                    std::to_string(ks.size()) + " and " + std::to_string(vs.size()));
      for (int64_t i = 0; i < c.n_layer; ++i) {
        for (int kv = 0; kv < 2; ++kv) {
          std::string name = std::string(kv ? "v_cache" : "k_cache") + prefix + "[" +
                             std::to_string(i) + "]";
          Array a = f32_or_f16((kv ? vs : ks)[i], kFn, name.c_str(), {4});
          if (i == 0 && kv == 0) {
            cache.max_len = a.dim(2);
            cache.half = a.half;
          } else if (a.half != cache.half) {
            type_error(std::string(kFn) + ": " + name + " is " +
                       std::string(py::str(a.array.dtype())) + " and k_cache" + prefix +
                       "[0] is not: one cache's buffers share one dtype");
          }
          expect_shape(a, {1, c.n_kv_head, cache.max_len, hd}, kFn, name.c_str());
          if (!a.array.writeable()) value_error(std::string(kFn) + ": " + name + " is read-only");
          for (const Array& other : kept_)
            if (overlaps(a, other))
              value_error(std::string(kFn) + ": " + name +
                          " overlaps a parameter or another cache buffer");
          keep(a);
          if (a.half)
            (kv ? cache.v16 : cache.k16).push_back(a.half_bits());
          else
            (kv ? cache.v : cache.k).push_back(a.f32());
        }
      }
      caches.push_back(std::move(cache));
    }
    vocab_ = V;
    py::gil_scoped_release release;  // the sinusoidal table may take a moment
    runner_ = std::make_unique<model::Transformer>(c, std::move(w), std::move(caches));
  }

  void decode(py::handle token_obj, py::handle pos_obj, py::handle logits_obj) {
    int64_t token = index_arg(token_obj, "token");
    int64_t pos = index_arg(pos_obj, "pos");
    Array logits = logits_out(logits_obj, {vocab_}, "Transformer.decode");
    py::gil_scoped_release release;
    runner_->decode(token, pos, logits.f32());
  }

  void decode_batch(const py::sequence& slots, const py::sequence& tokens,
                    const py::sequence& positions, py::handle logits_obj) {
    const char* fn = "Transformer.decode_batch";
    const size_t n = slots.size();
    if (tokens.size() != n || positions.size() != n)
      value_error(std::string(fn) + ": slots, tokens and positions must have the same length");
    std::vector<int64_t> sl(n), tk(n), ps(n);
    for (size_t i = 0; i < n; ++i) {
      sl[i] = index_arg(slots[i], "slot");
      tk[i] = index_arg(tokens[i], "token");
      ps[i] = index_arg(positions[i], "pos");
    }
    Array logits = logits_out(logits_obj, {static_cast<int64_t>(n), vocab_}, fn);
    py::gil_scoped_release release;
    runner_->decode_batch(sl.data(), tk.data(), ps.data(), static_cast<int64_t>(n), logits.f32());
  }

  void prefill(py::handle tokens_obj, int64_t pos0, py::handle logits_obj, int64_t slot) {
    const char* fn = "Transformer.prefill";
    if (!py::isinstance<py::array>(tokens_obj))
      type_error(std::string(fn) + ": tokens must be a numpy int64 array");
    py::array tokens = py::reinterpret_borrow<py::array>(tokens_obj);
    if (!tokens.dtype().equal(py::dtype::of<int64_t>()) || tokens.ndim() != 1 ||
        !(tokens.flags() & py::array::c_style))
      type_error(std::string(fn) + ": tokens must be a C-contiguous 1-D int64 array");
    Array logits = logits_out(logits_obj, {vocab_}, fn);
    const int64_t* ids = static_cast<const int64_t*>(tokens.data());
    const int64_t T = tokens.shape(0);
    py::gil_scoped_release release;
    runner_->prefill(slot, ids, T, pos0, logits.f32());
  }

  int64_t max_positions() const { return runner_->max_positions(); }
  int64_t slot_positions(int64_t slot) const {
    if (slot < 0 || slot >= runner_->slots())
      value_error("Transformer.slot_positions: slot must be in [0, " +
                  std::to_string(runner_->slots()) + ")");
    return runner_->max_positions(slot);
  }

  void set_profiling(bool on) { runner_->set_profiling(on); }
  model::Transformer* runner() const { return runner_.get(); }

  py::dict profile() const {
    model::Transformer::Profile p = runner_->profile();
    ChunkPool::Stats s = runner_->pool_stats();
    py::dict d;
    d["matvec_s"] = p.matvec;
    d["attention_s"] = p.attention;
    d["other_s"] = p.other;
    d["tokens"] = p.tokens;
    d["solo_steps"] = p.solo_steps;
    d["switches"] = p.switches;
    d["loops"] = s.loops;
    d["solo_loops"] = s.solo_loops;
    d["lag_events"] = s.lag_events;
    d["worker_chunks"] = s.worker_chunks;
    d["caller_chunks"] = s.caller_chunks;
    d["wait_s"] = s.wait_s;
    return d;
  }

 private:
  void keep(const Array& a) { kept_.push_back(a); }

  // The logits output: writable float32 of `shape`, overlapping nothing the runner holds.
  Array logits_out(py::handle obj, const Shape& shape, const char* fn) const {
    Array logits = f32(obj, fn, "logits", {static_cast<int>(shape.size())});
    expect_shape(logits, shape, fn, "logits");
    if (!logits.array.writeable()) value_error(std::string(fn) + ": logits is read-only");
    for (const Array& a : kept_)
      if (overlaps(logits, a))
        value_error(std::string(fn) + ": logits must not overlap a parameter or the KV cache");
    return logits;
  }

  std::vector<Array> kept_;  // every array the runner reads or writes (keeps them alive)
  std::unique_ptr<model::Transformer> runner_;
  int64_t vocab_ = 0;
};

}  // namespace

void register_model(py::module_& m) {
  py::class_<PyTransformer>(m, "Transformer",
                            "Decode runner: one token through the whole model per native call.")
      .def(py::init<const py::dict&, const py::dict&, const py::sequence&, const py::sequence&>(),
           py::arg("config"), py::arg("params"), py::arg("k_cache"), py::arg("v_cache"))
      .def("decode", &PyTransformer::decode, py::arg("token"), py::arg("pos"), py::arg("logits"),
           "Runs token at position pos (the cache holds 0..pos-1), writes its K/V into the "
           "cache and the next-token logits [V] into logits. GIL released.")
      .def("decode_batch", &PyTransformer::decode_batch, py::arg("slots"), py::arg("tokens"),
           py::arg("positions"), py::arg("logits"),
           "Row i runs tokens[i] at positions[i] in cache slots[i] (distinct): logits [n, V]. "
           "One pass over the (quantized) weights for all rows; each row equals decode's. "
           "GIL released.")
      .def("prefill", &PyTransformer::prefill, py::arg("tokens"), py::arg("pos0"),
           py::arg("logits"), py::arg("slot") = 0,
           "Runs a prompt (int64 [T]) at positions pos0.. in cache slot: K/V into the cache, the "
           "last position's logits [V] into logits. forward_cached's kernels and order for "
           "batch 1, natively. GIL released.")
      .def("slot_positions", &PyTransformer::slot_positions, py::arg("slot"),
           "min(block_size, cache slot's max_len)")
      .def_property(
          "solo", [](const PyTransformer& t) { return t.runner()->solo(); },
          [](PyTransformer& t, bool solo) { t.runner()->set_solo(solo); },
          "Whether steps run on one thread: the runner's own choice from timing both ways "
          "every few dozen steps (another process may hold a core); settable as a start.")
      .def("set_profiling", &PyTransformer::set_profiling, py::arg("on"),
           "Start (True) or stop timing decode's phases; either way clears the sums.")
      .def("profile", &PyTransformer::profile,
           "Seconds in matvec / attention / other phases over the profiled tokens, and the work "
           "pool's counters (loops, solo_loops, lag_events, worker_chunks, caller_chunks).")
      .def_property_readonly("max_positions", &PyTransformer::max_positions,
                             "min(block_size, the cache's max_len): positions decode accepts");
}

}  // namespace bind
}  // namespace kg
