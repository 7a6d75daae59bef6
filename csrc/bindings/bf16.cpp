// bfloat16 weights: to_bf16, from_bf16, bf16_matmul. Shapes in kernels/bf16.h.
#include "kernels/bf16.h"
#include "kernels/matmul_bf16.h"

#include <string>

#include "bindings/activation.h"
#include "bindings/args.h"
#include "bindings/registry.h"
#include "common/cpu.h"

namespace kg {
namespace bind {

static std::string type_name(py::handle obj) {
  return std::string(py::str(py::type::handle_of(obj).attr("__name__")));
}

// A C-contiguous, non-empty numpy uint16 array (bf16 bit patterns) whose rank is in `ranks`.
static Array bf16_array(py::handle obj, const char* fn, const char* name,
                        std::initializer_list<int> ranks = {}) {
  if (!py::isinstance<py::array>(obj))
    type_error(std::string(fn) + ": " + name + " must be a numpy uint16 array (bf16 bits), got " +
               type_name(obj));
  py::array a = py::reinterpret_borrow<py::array>(obj);
  if (!a.dtype().equal(py::dtype::of<uint16_t>()))
    type_error(std::string(fn) + ": " + name + " must be uint16 (bf16 bit patterns), got " +
               std::string(py::str(a.dtype())));
  if (ranks.size()) {
    bool ok = false;
    for (int r : ranks) ok = ok || a.ndim() == r;
    if (!ok)
      value_error(std::string(fn) + ": " + name + " has rank " + std::to_string(a.ndim()) +
                  ", which is not accepted here");
  }
  if (!(a.flags() & py::array::c_style))
    value_error(std::string(fn) + ": " + name + " must be C-contiguous");
  if (a.size() == 0) value_error(std::string(fn) + ": " + name + " must not be empty");
  Array r;
  r.array = a;
  r.present = true;
  r.size = a.size();
  for (py::ssize_t i = 0; i < a.ndim(); ++i) r.shape.push_back(a.shape(i));
  return r;
}

static py::array to_bf16(py::handle x_obj, py::handle out_obj) {
  const char* fn = "to_bf16";
  Array x = f32(x_obj, fn, "x");
  Array out;
  if (out_obj.is_none()) {
    out.array = py::array_t<uint16_t>(x.shape);
    out.present = true;
    out.shape = x.shape;
    out.size = x.size;
  } else {
    out = bf16_array(out_obj, fn, "out");
    expect_shape(out, x.shape, fn, "out");
    if (!out.array.writeable()) value_error("to_bf16: out is read-only");
    if (overlaps(out, x)) value_error("to_bf16: out must not overlap x");
  }
  Bf16ConvertArgs a;
  a.x = x.cf32();
  a.bits = static_cast<uint16_t*>(out.array.mutable_data());
  a.n = x.size;
  {
    py::gil_scoped_release release;
    KG_DISPATCH(bf16_kernels).to_bf16(a);
  }
  return out.array;
}

static py::array from_bf16(py::handle bits_obj, py::handle out_obj) {
  const char* fn = "from_bf16";
  Array bits = bf16_array(bits_obj, fn, "bits");
  Array out = output(out_obj, bits.shape, fn, {&bits});
  Bf16WidenArgs a;
  a.bits = static_cast<const uint16_t*>(bits.array.data());
  a.out = out.f32();
  a.n = bits.size;
  {
    py::gil_scoped_release release;
    KG_DISPATCH(bf16_kernels).from_bf16(a);
  }
  return out.array;
}

static py::array bf16_matmul(py::handle x_obj, py::handle w_obj, py::handle out_obj,
                             int version) {
  const char* fn = "bf16_matmul";
  // 0 is not a version of the table but "auto": the binding picks widen (few rows of x,
  // decode) or tiled (prefill) by shape, as the decode runner does (kernels/bf16.cpp).
  int v = check_version(fn, version, {{0, "auto, by shape"}, {1, "naive"}, {2, "widen"},
                                      {3, "tiled"}, {4, "dpbf16"}});
  Array x = f32(x_obj, fn, "x", {1, 2});
  Array w = bf16_array(w_obj, fn, "w", {2});
  int64_t k = x.dim(-1), m = x.ndim() == 2 ? x.dim(0) : 1, n = w.dim(0);
  if (w.dim(1) != k)
    value_error("bf16_matmul: w has shape " + shape_str(w.shape) + " but x has K = " +
                std::to_string(k) + " (w must be [N, K], nn.Linear's layout)");
  Shape y_shape = x.ndim() == 2 ? Shape{m, n} : Shape{n};
  Array y = output(out_obj, y_shape, fn, {&x, &w});
  Bf16MatmulArgs a;
  a.x = x.cf32();
  a.w = static_cast<const uint16_t*>(w.array.data());
  a.y = y.f32();
  a.m = m;
  a.n = n;
  a.k = k;
  const Bf16Kernels& kr = KG_DISPATCH(bf16_kernels);
  Bf16MatmulFn f[] = {kr.matmul_auto, kr.matmul_naive, kr.matmul_widen, kr.matmul_tiled,
                      kr.matmul_dpbf16};  // indexed by version number
  {
    py::gil_scoped_release release;
    f[v](a);
  }
  return y.array;
}

// c = op(a) @ op(b) (+ bias) (+ c): a, b bf16 bits (2-D), float32 bias / out.
// A matmul_bf16 operand: bf16 bits (uint16) or float32 that the kernel rounds as it packs.
static Array bf16_or_f32(py::handle obj, const char* fn, const char* name) {
  if (py::isinstance<py::array>(obj) &&
      py::reinterpret_borrow<py::array>(obj).dtype().equal(py::dtype::of<float>()))
    return f32(obj, fn, name, {2});
  if (py::isinstance<py::array>(obj) &&
      !py::reinterpret_borrow<py::array>(obj).dtype().equal(py::dtype::of<uint16_t>()))
    type_error(std::string(fn) + ": " + name +
               " must be uint16 (bf16 bit patterns) or float32 (rounded to bf16), got " +
               std::string(py::str(py::reinterpret_borrow<py::array>(obj).dtype())));
  return bf16_array(obj, fn, name, {2});
}

static bool is_f32(const Array& a) { return a.array.dtype().equal(py::dtype::of<float>()); }

static py::array matmul_bf16(py::handle a_obj, py::handle b_obj, py::handle bias_obj,
                             py::handle out_obj, bool trans_a, bool trans_b, bool accumulate,
                             int version, const std::string& activation,
                             const std::string& approximate, py::handle act_out_obj,
                             py::handle act_x_obj) {
  const char* fn = "matmul_bf16";
  int v = check_version(fn, version, {{1, "naive"}, {6, "packed"}});
  Array a = bf16_or_f32(a_obj, fn, "a");
  Array b = bf16_or_f32(b_obj, fn, "b");
  int64_t m = trans_a ? a.dim(1) : a.dim(0), ka = trans_a ? a.dim(0) : a.dim(1);
  int64_t kb = trans_b ? b.dim(1) : b.dim(0), n = trans_b ? b.dim(0) : b.dim(1);
  if (ka != kb)
    value_error(std::string(fn) + ": inner dimensions differ: a " + shape_str(a.shape) +
                (trans_a ? " (transposed)" : "") + ", b " + shape_str(b.shape) +
                (trans_b ? " (transposed)" : ""));
  Array bias;
  if (!bias_obj.is_none()) {
    bias = f32(bias_obj, fn, "bias", {1});
    expect_shape(bias, {n}, fn, "bias");
  }
  if (accumulate && out_obj.is_none())
    value_error(std::string(fn) + ": accumulate=True needs out= (the array to add to)");
  MatmulBf16Args args;
  Array act_out, act_x;
  if (!activation.empty()) {
    args.activation = parse_activation(activation, approximate, fn);
    if (act_out_obj.is_none() == act_x_obj.is_none())
      value_error(std::string(fn) + ": activation= needs exactly one of act_out= (forward: "
                  "act_out = f(c)) and act_x= (backward: c *= f'(act_x))");
    if (!act_x_obj.is_none()) {
      act_x = f32(act_x_obj, fn, "act_x", {2});
      expect_shape(act_x, {m, n}, fn, "act_x");
    }
  } else if (!act_out_obj.is_none() || !act_x_obj.is_none()) {
    value_error(std::string(fn) + ": act_out= and act_x= need activation=");
  }
  Array c = output(out_obj, {m, n}, fn, {&a, &b, bias ? &bias : nullptr, act_x ? &act_x : nullptr});
  if (!activation.empty() && !act_out_obj.is_none()) {
    act_out = output(act_out_obj, {m, n}, fn, {&a, &b, bias ? &bias : nullptr, &c}, "act_out");
    if (act_out_obj.is(out_obj))
      value_error(std::string(fn) + ": act_out must not be out (c keeps the pre-activation)");
  }
  (is_f32(a) ? (void)(args.a_f32 = a.cf32()) : (void)(args.a = static_cast<const uint16_t*>(a.array.data())));
  (is_f32(b) ? (void)(args.b_f32 = b.cf32()) : (void)(args.b = static_cast<const uint16_t*>(b.array.data())));
  args.bias = bias ? bias.cf32() : nullptr;
  args.c = c.f32();
  args.m = m;
  args.n = n;
  args.k = ka;
  args.trans_a = trans_a;
  args.trans_b = trans_b;
  args.accumulate = accumulate;
  args.act_out = act_out ? act_out.f32() : nullptr;
  args.act_x = act_x ? act_x.cf32() : nullptr;
  const MatmulBf16Kernels& kr = KG_DISPATCH(matmul_bf16_kernels);
  {
    py::gil_scoped_release release;
    (v == 1 ? kr.naive : kr.packed)(args);
  }
  return c.array;
}

void register_bf16(py::module_& m) {
  m.def("matmul_bf16", &matmul_bf16, py::arg("a"), py::arg("b"), py::arg("bias") = py::none(),
        py::arg("out") = py::none(), py::arg("trans_a") = false, py::arg("trans_b") = false,
        py::arg("accumulate") = false, py::arg("version") = 6, py::arg("activation") = "",
        py::arg("approximate") = "tanh", py::arg("act_out") = py::none(),
        py::arg("act_x") = py::none());
  m.def("matmul_bf16_path",
        [] { return std::string(KG_DISPATCH(matmul_bf16_kernels).description); });
  m.def("to_bf16", &to_bf16, py::arg("x"), py::arg("out") = py::none());
  m.def("from_bf16", &from_bf16, py::arg("bits"), py::arg("out") = py::none());
  m.def("bf16_matmul", &bf16_matmul, py::arg("x"), py::arg("w"), py::arg("out") = py::none(),
        py::arg("version") = 0);
  m.def("bf16_path", [] { return std::string(KG_DISPATCH(bf16_kernels).description); });
}

}  // namespace bind
}  // namespace kg
