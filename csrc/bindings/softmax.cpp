#include "kernels/softmax.h"

#include <cmath>

#include "bindings/args.h"
#include "bindings/registry.h"
#include "common/cpu.h"

namespace kg {
namespace bind {

static float finite_scale(double scale, const char* fn) {
  if (!std::isfinite(scale) || !std::isfinite((float)scale))
    value_error(std::string(fn) + ": scale must be a finite float32 value, got " +
                std::to_string(scale));
  return (float)scale;
}

// softmax / log-softmax over the last axis of x [..., S]; causal views x as [..., T, S].
static py::array softmax_forward(py::handle x_obj, py::handle out_obj, double scale, bool causal,
                                 bool log, int version) {
  const char* fn = log ? "log_softmax" : "softmax";
  int v = check_version(fn, version, {{1, "naive"}, {2, "online"}});
  Array x = f32(x_obj, fn, "x");
  if (x.ndim() < 1) value_error(std::string(fn) + ": x must have at least 1 dimension [..., S], got a 0-d array");
  SoftmaxArgs args;
  args.cols = x.dim(-1);
  args.rows = x.size / args.cols;
  args.scale = finite_scale(scale, fn);
  args.causal = causal;
  args.log = log;
  if (causal) {
    if (x.ndim() < 2)
      value_error(std::string(fn) + ": causal=True needs x of rank >= 2 ([..., T, S]), got shape " +
                  shape_str(x.shape));
    args.t = x.dim(-2);
    if (args.cols < args.t)
      value_error(std::string(fn) + ": causal=True needs S >= T (row i keeps columns j <= i + S - T; "
                  "with S < T the first rows would keep none), got x shape " + shape_str(x.shape));
  }
  Array y = output(out_obj, x.shape, fn, {&x});
  args.x = x.cf32();
  args.y = y.f32();
  const SoftmaxKernels& kernels = KG_DISPATCH(softmax_kernels);
  {
    py::gil_scoped_release release;
    (v == 1 ? kernels.naive : kernels.online)(args);
  }
  return y.array;
}

static py::array softmax_backward(py::handle dy_obj, py::handle y_obj, py::handle out_obj,
                                  double scale, bool log, int version) {
  const char* fn = log ? "log_softmax_backward" : "softmax_backward";
  int v = check_version(fn, version, {{1, "naive"}, {2, "fused"}});
  Array dy = f32(dy_obj, fn, "dy");
  Array y = f32(y_obj, fn, "y");
  if (y.ndim() < 1) value_error(std::string(fn) + ": y must have at least 1 dimension [..., S], got a 0-d array");
  expect_shape(dy, y.shape, fn, "dy");
  Array dx = output(out_obj, y.shape, fn, {&dy, &y});
  SoftmaxBackwardArgs args;
  args.dy = dy.cf32();
  args.y = y.cf32();
  args.dx = dx.f32();
  args.cols = y.dim(-1);
  args.rows = y.size / args.cols;
  args.scale = finite_scale(scale, fn);
  args.log = log;
  const SoftmaxKernels& kernels = KG_DISPATCH(softmax_kernels);
  {
    py::gil_scoped_release release;
    (v == 1 ? kernels.backward_naive : kernels.backward_fused)(args);
  }
  return dx.array;
}

void register_softmax(py::module_& m) {
  m.def("softmax", &softmax_forward, py::arg("x"), py::arg("out") = py::none(),
        py::arg("scale") = 1.0, py::arg("causal") = false, py::arg("log") = false,
        py::arg("version") = 2);
  m.def("softmax_backward", &softmax_backward, py::arg("dy"), py::arg("y"),
        py::arg("out") = py::none(), py::arg("scale") = 1.0, py::arg("log") = false,
        py::arg("version") = 2);
  m.def("softmax_path",
        [] { return std::string(KG_DISPATCH(softmax_kernels).online_description); });
}

}  // namespace bind
}  // namespace kg
