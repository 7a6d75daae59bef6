#include "bindings/activation.h"

#include "bindings/args.h"
#include "bindings/registry.h"
#include "common/cpu.h"

namespace kg {
namespace bind {

Activation parse_activation(const std::string& name, const std::string& approximate,
                            const std::string& fn) {
  if (name == "relu") return Activation::relu;
  if (name == "sigmoid") return Activation::sigmoid;
  if (name == "tanh") return Activation::tanh;
  if (name == "silu") return Activation::silu;
  if (name == "gelu") {
    if (approximate == "tanh") return Activation::gelu_tanh;
    if (approximate == "none") return Activation::gelu_erf;
    value_error(fn + ": approximate must be 'tanh' or 'none', got '" + approximate + "'");
  }
  value_error(fn + ": unknown activation '" + name +
              "', expected 'relu', 'sigmoid', 'tanh', 'silu' or 'gelu'");
}

static const ActivationVersion& activation_version(int version, const std::string& fn) {
  int v = check_version(fn.c_str(), version, {{1, "naive"}, {2, "fast"}});
  const ActivationKernels& k = KG_DISPATCH(activation_kernels);
  return v == 1 ? k.naive : k.fast;
}

static py::array activation(py::handle x_obj, const std::string& name,
                            const std::string& approximate, py::handle out_obj,
                            int version) {
  const std::string fn = name;
  Activation kind = parse_activation(name, approximate, fn);
  const ActivationVersion& kernels = activation_version(version, fn);
  Array x = f32(x_obj, fn.c_str(), "x");
  Array y = output(out_obj, x.shape, fn.c_str(), {&x});
  ActivationArgs args;
  args.x = x.cf32();
  args.out = y.f32();
  args.n = x.size;
  args.kind = kind;
  {
    py::gil_scoped_release release;
    kernels.forward(args);
  }
  return y.array;
}

static py::array activation_backward(py::handle dy_obj, py::handle x_obj, const std::string& name,
                                     const std::string& approximate, py::handle out_obj,
                                     int version) {
  const std::string fn = name + "_backward";
  Activation kind = parse_activation(name, approximate, fn);
  const ActivationVersion& kernels = activation_version(version, fn);
  Array dy = f32(dy_obj, fn.c_str(), "dy");
  Array x = f32(x_obj, fn.c_str(), "x");
  expect_shape(dy, x.shape, fn.c_str(), "dy");
  Array dx = output(out_obj, x.shape, fn.c_str(), {&dy, &x});
  ActivationArgs args;
  args.x = x.cf32();
  args.dy = dy.cf32();
  args.out = dx.f32();
  args.n = x.size;
  args.kind = kind;
  {
    py::gil_scoped_release release;
    kernels.backward(args);
  }
  return dx.array;
}

static py::array swiglu(py::handle gate_obj, py::handle up_obj, py::handle out_obj,
                        int version) {
  const std::string fn = "swiglu";
  const ActivationVersion& kernels = activation_version(version, fn);
  Array gate = f32(gate_obj, fn.c_str(), "gate");
  Array up = f32(up_obj, fn.c_str(), "up");
  expect_shape(up, gate.shape, fn.c_str(), "up");
  Array y = output(out_obj, gate.shape, fn.c_str(), {&gate, &up});
  SwigluArgs args;
  args.gate = gate.cf32();
  args.up = up.cf32();
  args.out = y.f32();
  args.n = gate.size;
  {
    py::gil_scoped_release release;
    kernels.swiglu(args);
  }
  return y.array;
}

static py::tuple swiglu_backward(py::handle dy_obj, py::handle gate_obj, py::handle up_obj,
                                 int version) {
  const std::string fn = "swiglu_backward";
  const ActivationVersion& kernels = activation_version(version, fn);
  Array dy = f32(dy_obj, fn.c_str(), "dy");
  Array gate = f32(gate_obj, fn.c_str(), "gate");
  Array up = f32(up_obj, fn.c_str(), "up");
  expect_shape(up, gate.shape, fn.c_str(), "up");
  expect_shape(dy, gate.shape, fn.c_str(), "dy");
  Array dgate = output(py::none(), gate.shape, fn.c_str(), {});
  Array dup = output(py::none(), gate.shape, fn.c_str(), {});
  SwigluArgs args;
  args.dy = dy.cf32();
  args.gate = gate.cf32();
  args.up = up.cf32();
  args.dgate = dgate.f32();
  args.dup = dup.f32();
  args.n = gate.size;
  {
    py::gil_scoped_release release;
    kernels.swiglu_backward(args);
  }
  return py::make_tuple(dgate.array, dup.array);
}

// h [..., 2n] = [gate | up] (Llama's fused gate/up projection): rows of 2n values.
static Shape packed_shape(const Array& h, const char* fn) {
  if (h.ndim() < 1 || h.shape.back() % 2 != 0)
    value_error(std::string(fn) + ": h must have an even last dimension ([gate | up]), got " +
                shape_str(h.shape));
  Shape half = h.shape;
  half.back() /= 2;
  return half;
}

static py::array swiglu_packed(py::handle h_obj, py::handle out_obj, int version) {
  const char* fn = "swiglu_packed";
  const ActivationVersion& kernels = activation_version(version, fn);
  Array h = f32(h_obj, fn, "h");
  Shape half = packed_shape(h, fn);
  Array y = output(out_obj, half, fn, {&h});
  SwigluArgs args;
  args.n = half.back();
  args.rows = args.n > 0 ? h.size / (2 * args.n) : 0;
  args.gate = h.cf32();
  args.up = h.cf32() + args.n;
  args.ld_in = 2 * args.n;
  args.out = y.f32();
  if (args.rows > 0) {
    py::gil_scoped_release release;
    kernels.swiglu(args);
  }
  return y.array;
}

static py::array swiglu_packed_backward(py::handle dy_obj, py::handle h_obj, py::handle out_obj,
                                        int version) {
  const char* fn = "swiglu_packed_backward";
  const ActivationVersion& kernels = activation_version(version, fn);
  Array dy = f32(dy_obj, fn, "dy");
  Array h = f32(h_obj, fn, "h");
  Shape half = packed_shape(h, fn);
  expect_shape(dy, half, fn, "dy");
  Array dh = output(out_obj, h.shape, fn, {&dy, &h});
  SwigluArgs args;
  args.n = half.back();
  args.rows = args.n > 0 ? h.size / (2 * args.n) : 0;
  args.dy = dy.cf32();
  args.gate = h.cf32();
  args.up = h.cf32() + args.n;
  args.ld_in = 2 * args.n;
  args.dgate = dh.f32();
  args.dup = dh.f32() + args.n;
  args.ld_grad = 2 * args.n;
  if (args.rows > 0) {
    py::gil_scoped_release release;
    kernels.swiglu_backward(args);
  }
  return dh.array;
}

static py::array simd_math(const std::string& name, py::handle x_obj) {
  const char* fn = "simd_math";
  SimdMath which;
  if (name == "exp")
    which = SimdMath::exp;
  else if (name == "tanh")
    which = SimdMath::tanh;
  else if (name == "sigmoid")
    which = SimdMath::sigmoid;
  else
    value_error(std::string(fn) + ": name must be 'exp', 'tanh' or 'sigmoid', got '" + name + "'");
  Array x = f32(x_obj, fn, "x");
  Array y = output(py::none(), x.shape, fn, {});
  const ActivationKernels& k = KG_DISPATCH(activation_kernels);
  {
    py::gil_scoped_release release;
    k.simd_math(which, x.cf32(), y.f32(), x.size);
  }
  return y.array;
}

void register_activation(py::module_& m) {
  m.def("activation", &activation, py::arg("x"), py::arg("name"),
        py::arg("approximate") = "tanh", py::arg("out") = py::none(),
        py::arg("version") = 2);
  m.def("activation_backward", &activation_backward, py::arg("dy"), py::arg("x"),
        py::arg("name"), py::arg("approximate") = "tanh", py::arg("out") = py::none(),
        py::arg("version") = 2);
  m.def("swiglu", &swiglu, py::arg("gate"), py::arg("up"), py::arg("out") = py::none(),
        py::arg("version") = 2);
  m.def("swiglu_backward", &swiglu_backward, py::arg("dy"), py::arg("gate"), py::arg("up"),
        py::arg("version") = 2);
  m.def("swiglu_packed", &swiglu_packed, py::arg("h"), py::arg("out") = py::none(),
        py::arg("version") = 2);
  m.def("swiglu_packed_backward", &swiglu_packed_backward, py::arg("dy"), py::arg("h"),
        py::arg("out") = py::none(), py::arg("version") = 2);
  m.def("simd_math", &simd_math, py::arg("name"), py::arg("x"),
        "exp, tanh or sigmoid from common/simd.h applied to x, one thread (accuracy tests).");
  m.def("activation_path",
        [] { return std::string(KG_DISPATCH(activation_kernels).fast_description); });
}

}  // namespace bind
}  // namespace kg
