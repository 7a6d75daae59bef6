#include "kernels/norm.h"

#include <cfloat>
#include <cmath>
#include <sstream>
#include <vector>

#include "bindings/args.h"
#include "bindings/registry.h"
#include "common/cpu.h"
#include "common/threading.h"

namespace kg {
namespace bind {

// eps must be a finite float32 >= 0 (0 is allowed: a constant row then gives NaN).
static float check_eps(double eps, const char* fn) {
  if (!(eps >= 0.0 && eps <= FLT_MAX)) {
    std::ostringstream msg;
    msg << fn << ": eps must be a finite number >= 0, got " << eps;
    value_error(msg.str());
  }
  return (float)eps;
}

// x [..., C] (at least 1-D); returns C and sets rows, stats_shape = x.shape[:-1].
static int64_t norm_dims(const Array& x, const char* fn, int64_t& rows, Shape& stats_shape) {
  if (x.ndim() < 1)
    value_error(std::string(fn) + ": x must be at least 1-D ([..., C]), got a 0-d array");
  int64_t C = x.dim(-1);
  rows = x.size / C;
  stats_shape.assign(x.shape.begin(), x.shape.end() - 1);
  return C;
}

static Array weight_arg(py::handle obj, int64_t C, const char* fn, const char* name) {
  Array w = f32(obj, fn, name, {1});
  expect_shape(w, {C}, fn, name);
  return w;
}

static Array new_array(const Shape& shape) {
  Array r;
  r.array = py::array_t<float>(shape);
  r.present = true;
  r.shape = shape;
  r.size = r.array.size();
  return r;
}

static const NormVersion& norm_version(int version, const char* fn) {
  int v = check_version(fn, version, {{1, "naive"}, {2, "fast"}});
  const NormKernels& k = KG_DISPATCH(norm_kernels);
  return v == 1 ? k.naive : k.fast;
}

static py::object layernorm(py::handle x_obj, py::handle w_obj, py::handle b_obj, double eps,
                            py::handle out_obj, bool return_stats, int version) {
  const char* fn = "layernorm";
  const NormVersion& kernels = norm_version(version, fn);
  Array x = f32(x_obj, fn, "x");
  int64_t rows;
  Shape stats_shape;
  int64_t C = norm_dims(x, fn, rows, stats_shape);
  Array w = weight_arg(w_obj, C, fn, "weight");
  Array b;
  if (!b_obj.is_none()) b = weight_arg(b_obj, C, fn, "bias");
  float e = check_eps(eps, fn);
  Array y = output(out_obj, x.shape, fn, {&x, &w, b ? &b : nullptr});
  Array mean, rstd;
  if (return_stats) {
    mean = new_array(stats_shape);
    rstd = new_array(stats_shape);
  }
  LayerNormArgs args;
  args.x = x.cf32();
  args.weight = w.cf32();
  args.bias = b ? b.cf32() : nullptr;
  args.y = y.f32();
  args.mean = return_stats ? mean.f32() : nullptr;
  args.rstd = return_stats ? rstd.f32() : nullptr;
  args.rows = rows;
  args.cols = C;
  args.eps = e;
  {
    py::gil_scoped_release release;
    kernels.layernorm(args);
  }
  if (return_stats) return py::make_tuple(y.array, mean.array, rstd.array);
  return y.array;
}

static py::tuple layernorm_backward(py::handle dy_obj, py::handle x_obj, py::handle w_obj,
                                    py::handle mean_obj, py::handle rstd_obj,
                                    int version) {
  const char* fn = "layernorm_backward";
  const NormVersion& kernels = norm_version(version, fn);
  Array x = f32(x_obj, fn, "x");
  int64_t rows;
  Shape stats_shape;
  int64_t C = norm_dims(x, fn, rows, stats_shape);
  Array dy = f32(dy_obj, fn, "dy");
  expect_shape(dy, x.shape, fn, "dy");
  Array w = weight_arg(w_obj, C, fn, "weight");
  Array mean = f32(mean_obj, fn, "mean");
  expect_shape(mean, stats_shape, fn, "mean");
  Array rstd = f32(rstd_obj, fn, "rstd");
  expect_shape(rstd, stats_shape, fn, "rstd");
  Array dx = new_array(x.shape), dw = new_array({C}), db = new_array({C});
  int threads = num_threads();
  std::vector<double> partials((norm_partials_bytes(C, threads) + 7) / 8);
  LayerNormBackwardArgs args;
  args.dy = dy.cf32();
  args.x = x.cf32();
  args.weight = w.cf32();
  args.mean = mean.cf32();
  args.rstd = rstd.cf32();
  args.dx = dx.f32();
  args.dweight = dw.f32();
  args.dbias = db.f32();
  args.rows = rows;
  args.cols = C;
  args.partials = partials.data();
  args.max_threads = threads;
  {
    py::gil_scoped_release release;
    kernels.layernorm_backward(args);
  }
  return py::make_tuple(dx.array, dw.array, db.array);
}

static py::object rmsnorm(py::handle x_obj, py::handle w_obj, double eps, py::handle out_obj,
                          bool return_stats, int version) {
  const char* fn = "rmsnorm";
  const NormVersion& kernels = norm_version(version, fn);
  Array x = f32(x_obj, fn, "x");
  int64_t rows;
  Shape stats_shape;
  int64_t C = norm_dims(x, fn, rows, stats_shape);
  Array w = weight_arg(w_obj, C, fn, "weight");
  float e = check_eps(eps, fn);
  Array y = output(out_obj, x.shape, fn, {&x, &w});
  Array rstd;
  if (return_stats) rstd = new_array(stats_shape);
  RMSNormArgs args;
  args.x = x.cf32();
  args.weight = w.cf32();
  args.y = y.f32();
  args.rstd = return_stats ? rstd.f32() : nullptr;
  args.rows = rows;
  args.cols = C;
  args.eps = e;
  {
    py::gil_scoped_release release;
    kernels.rmsnorm(args);
  }
  if (return_stats) return py::make_tuple(y.array, rstd.array);
  return y.array;
}

static py::tuple rmsnorm_backward(py::handle dy_obj, py::handle x_obj, py::handle w_obj,
                                  py::handle rstd_obj, int version) {
  const char* fn = "rmsnorm_backward";
  const NormVersion& kernels = norm_version(version, fn);
  Array x = f32(x_obj, fn, "x");
  int64_t rows;
  Shape stats_shape;
  int64_t C = norm_dims(x, fn, rows, stats_shape);
  Array dy = f32(dy_obj, fn, "dy");
  expect_shape(dy, x.shape, fn, "dy");
  Array w = weight_arg(w_obj, C, fn, "weight");
  Array rstd = f32(rstd_obj, fn, "rstd");
  expect_shape(rstd, stats_shape, fn, "rstd");
  Array dx = new_array(x.shape), dw = new_array({C});
  int threads = num_threads();
  std::vector<double> partials((norm_partials_bytes(C, threads) + 7) / 8);
  RMSNormBackwardArgs args;
  args.dy = dy.cf32();
  args.x = x.cf32();
  args.weight = w.cf32();
  args.rstd = rstd.cf32();
  args.dx = dx.f32();
  args.dweight = dw.f32();
  args.rows = rows;
  args.cols = C;
  args.partials = partials.data();
  args.max_threads = threads;
  {
    py::gil_scoped_release release;
    kernels.rmsnorm_backward(args);
  }
  return py::make_tuple(dx.array, dw.array);
}

void register_norm(py::module_& m) {
  m.def("layernorm", &layernorm, py::arg("x"), py::arg("weight"), py::arg("bias") = py::none(),
        py::arg("eps") = 1e-5, py::arg("out") = py::none(), py::arg("return_stats") = false,
        py::arg("version") = 2);
  m.def("layernorm_backward", &layernorm_backward, py::arg("dy"), py::arg("x"),
        py::arg("weight"), py::arg("mean"), py::arg("rstd"), py::arg("version") = 2);
  m.def("rmsnorm", &rmsnorm, py::arg("x"), py::arg("weight"), py::arg("eps") = 1e-6,
        py::arg("out") = py::none(), py::arg("return_stats") = false,
        py::arg("version") = 2);
  m.def("rmsnorm_backward", &rmsnorm_backward, py::arg("dy"), py::arg("x"), py::arg("weight"),
        py::arg("rstd"), py::arg("version") = 2);
  m.def("norm_path", [] { return std::string(KG_DISPATCH(norm_kernels).fast_description); });
}

}  // namespace bind
}  // namespace kg
