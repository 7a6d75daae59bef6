#include "kernels/attention.h"

#include <cmath>

#include "bindings/args.h"
#include "bindings/registry.h"
#include "common/cpu.h"

namespace kg {
namespace bind {

namespace {

struct AttentionShape {
  int64_t batch, heads, kv_heads, t, s, d;
  float scale;
};

// Checks q [B, H, T, D], k and v [B, Hkv, S, D], the head grouping, the causal condition and
// the scale; returns the sizes.
AttentionShape check_qkv(const char* fn, const Array& q, const Array& k, const Array& v,
                         bool causal, py::handle scale_obj) {
  if (k.shape != v.shape)
    value_error(std::string(fn) + ": k and v must have the same shape [B, Hkv, S, D], got k " +
                shape_str(k.shape) + " and v " + shape_str(v.shape));
  AttentionShape a;
  a.batch = q.dim(0);
  a.heads = q.dim(1);
  a.t = q.dim(2);
  a.d = q.dim(3);
  a.kv_heads = k.dim(1);
  a.s = k.dim(2);
  if (k.dim(0) != a.batch || k.dim(3) != a.d)
    value_error(std::string(fn) + ": k and v must have shape [B, Hkv, S, D] = [" +
                std::to_string(a.batch) + ", Hkv, S, " + std::to_string(a.d) +
                "] to match q " + shape_str(q.shape) + ", got " + shape_str(k.shape));
  if (a.heads % a.kv_heads != 0)
    value_error(std::string(fn) + ": the number of query heads (q.shape[1] = " +
                std::to_string(a.heads) + ") must be a multiple of the number of kv heads " +
                "(k.shape[1] = " + std::to_string(a.kv_heads) + ")");
  if (causal && a.s < a.t)
    value_error(std::string(fn) + ": causal attention needs at least as many keys as queries " +
                "(the queries are the last T positions), got T = " + std::to_string(a.t) +
                " (q.shape[2]) and S = " + std::to_string(a.s) + " (k.shape[2])");
  double scale = 1.0 / std::sqrt(static_cast<double>(a.d));
  if (!scale_obj.is_none()) {
    if (PyBool_Check(scale_obj.ptr()) || !PyNumber_Check(scale_obj.ptr()) ||
        PyComplex_Check(scale_obj.ptr()))
      type_error(std::string(fn) + ": scale must be a real number or None, got " +
                 std::string(py::str(py::type::handle_of(scale_obj).attr("__name__"))));
    scale = py::float_(py::reinterpret_borrow<py::object>(scale_obj));
    float as_float = static_cast<float>(scale);
    if (!(as_float > 0.0f) || !std::isfinite(as_float))  // also rejects NaN and float32 0/inf
      value_error(std::string(fn) + ": scale must be finite and > 0, got " +
                  std::string(py::str(scale_obj)));
  }
  a.scale = static_cast<float>(scale);
  return a;
}

py::object attention(py::handle q_obj, py::handle k_obj, py::handle v_obj, py::handle out_obj,
                     bool causal, py::handle scale_obj, bool return_lse,
                     int version, py::handle kv_length_obj) {
  const char* fn = "attention";
  int ver = check_version(fn, version, {{1, "naive"}, {2, "flash"}, {3, "decode"}});
  Array q = f32(q_obj, fn, "q", {4});
  // k and v: float32, or both float16 (a half-precision KV cache, widened as it is read)
  Array k = f32_or_f16(k_obj, fn, "k", {4});
  Array v = f32_or_f16(v_obj, fn, "v", {4});
  if (k.half != v.half)
    type_error(std::string(fn) + ": k and v must have the same dtype, got k " +
               std::string(py::str(k.array.dtype())) + " and v " +
               std::string(py::str(v.array.dtype())));
  if (k.shape != v.shape)
    value_error(std::string(fn) + ": k and v must have the same shape [B, Hkv, S, D], got k " +
                shape_str(k.shape) + " and v " + shape_str(v.shape));
  // kv_length: only the first kv_length of the S rows of k and v are keys (a KV cache)
  int64_t capacity = k.dim(2), kv_length = capacity;
  if (!kv_length_obj.is_none()) {
    if (PyBool_Check(kv_length_obj.ptr()) || !PyLong_Check(kv_length_obj.ptr()))
      type_error(std::string(fn) + ": kv_length must be an int or None");
    kv_length = py::cast<int64_t>(kv_length_obj);
    if (kv_length < 1 || kv_length > capacity)
      value_error(std::string(fn) + ": kv_length must be in [1, " + std::to_string(capacity) +
                  "] (k.shape[2]), got " + std::to_string(kv_length));
  }
  Array k_used = k, v_used = v;
  k_used.shape[2] = v_used.shape[2] = kv_length;
  AttentionShape sh = check_qkv(fn, q, k_used, v_used, causal, scale_obj);
  Array out = output(out_obj, q.shape, fn, {&q, &k, &v});
  Array lse;
  if (return_lse) lse = output(py::none(), {sh.batch, sh.heads, sh.t}, fn, {});

  AttentionArgs args;
  args.q = q.cf32();
  if (k.half) {
    args.k16 = k.chalf();
    args.v16 = v.chalf();
  } else {
    args.k = k.cf32();
    args.v = v.cf32();
  }
  args.out = out.f32();
  args.lse = return_lse ? lse.f32() : nullptr;
  args.batch = sh.batch;
  args.heads = sh.heads;
  args.kv_heads = sh.kv_heads;
  args.t = sh.t;
  args.s = sh.s;
  args.d = sh.d;
  args.scale = sh.scale;
  args.causal = causal;
  args.kv_capacity = capacity;
  const AttentionKernels& kernels = KG_DISPATCH(attention_kernels);
  AttentionFn kernel = ver == 1 ? kernels.naive : ver == 2 ? kernels.flash : kernels.decode;
  {
    py::gil_scoped_release release;
    kernel(args);
  }
  if (return_lse) return py::make_tuple(out.array, lse.array);
  return out.array;
}

py::tuple attention_backward(py::handle dout_obj, py::handle q_obj, py::handle k_obj,
                             py::handle v_obj, py::handle out_obj, py::handle lse_obj,
                             bool causal, py::handle scale_obj, int version) {
  const char* fn = "attention_backward";
  int ver = check_version(fn, version, {{1, "naive"}, {2, "flash"}});
  Array dout = f32(dout_obj, fn, "dout", {4});
  Array q = f32(q_obj, fn, "q", {4});
  Array k = f32(k_obj, fn, "k", {4});
  Array v = f32(v_obj, fn, "v", {4});
  Array out = f32(out_obj, fn, "out", {4});
  Array lse = f32(lse_obj, fn, "lse", {3});
  AttentionShape sh = check_qkv(fn, q, k, v, causal, scale_obj);
  expect_shape(dout, q.shape, fn, "dout");
  expect_shape(out, q.shape, fn, "out");
  expect_shape(lse, {sh.batch, sh.heads, sh.t}, fn, "lse");
  Array dq = output(py::none(), q.shape, fn, {});
  Array dk = output(py::none(), k.shape, fn, {});
  Array dv = output(py::none(), v.shape, fn, {});

  AttentionBackwardArgs args;
  args.dout = dout.cf32();
  args.q = q.cf32();
  args.k = k.cf32();
  args.v = v.cf32();
  args.out = out.cf32();
  args.lse = lse.cf32();
  args.dq = dq.f32();
  args.dk = dk.f32();
  args.dv = dv.f32();
  args.batch = sh.batch;
  args.heads = sh.heads;
  args.kv_heads = sh.kv_heads;
  args.t = sh.t;
  args.s = sh.s;
  args.d = sh.d;
  args.scale = sh.scale;
  args.causal = causal;
  const AttentionKernels& kernels = KG_DISPATCH(attention_kernels);
  AttentionBackwardFn kernel = ver == 1 ? kernels.naive_backward : kernels.flash_backward;
  {
    py::gil_scoped_release release;
    kernel(args);
  }
  return py::make_tuple(dq.array, dk.array, dv.array);
}

// x (float32) rounded to fp16 bits as a half KV cache stores it (the runner's KV write):
// numpy's x.astype(np.float16).view(np.uint16) for every non-NaN x.
py::array to_half(py::handle x_obj) {
  Array x = f32(x_obj, "to_half", "x");
  py::array_t<uint16_t> out(x.shape);
  uint16_t* bits = out.mutable_data();
  const float* src = x.cf32();
  const int64_t n = x.size;
  py::gil_scoped_release release;
  KG_DISPATCH(attention_kernels).to_half(src, bits, n);
  return out;
}

}  // namespace

void register_attention(py::module_& m) {
  m.def("attention", &attention, py::arg("q"), py::arg("k"), py::arg("v"),
        py::arg("out") = py::none(), py::arg("causal") = true, py::arg("scale") = py::none(),
        py::arg("return_lse") = false, py::arg("version") = 2,
        py::arg("kv_length") = py::none());
  m.def("attention_backward", &attention_backward, py::arg("dout"), py::arg("q"), py::arg("k"),
        py::arg("v"), py::arg("out"), py::arg("lse"), py::arg("causal") = true,
        py::arg("scale") = py::none(), py::arg("version") = 2);
  m.def("to_half", &to_half, py::arg("x"));
  m.def("attention_path",
        [] { return std::string(KG_DISPATCH(attention_kernels).flash_description); });
}

}  // namespace bind
}  // namespace kg
