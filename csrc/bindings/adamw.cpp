#include "kernels/adamw.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "bindings/args.h"
#include "bindings/registry.h"
#include "common/cpu.h"

namespace kg {
namespace bind {

static std::string num(double x) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.17g", x);
  return buf;
}

static void check_writeable(const Array& a, const char* fn, const std::string& name) {
  if (!a.array.writeable())
    value_error(std::string(fn) + ": " + name + " is read-only (it is updated in place)");
}

static void adamw_step(py::handle param_obj, py::handle grad_obj, py::handle m_obj,
                       py::handle v_obj, int64_t step, double lr, double beta1, double beta2,
                       double eps, double weight_decay, int version) {
  const char* fn = "adamw_step";
  int ver = check_version(fn, version, {{1, "naive"}, {2, "fast"}});
  Array param = f32(param_obj, fn, "param");
  Array grad = f32(grad_obj, fn, "grad");
  Array m = f32(m_obj, fn, "m");
  Array v = f32(v_obj, fn, "v");
  expect_shape(grad, param.shape, fn, "grad");
  expect_shape(m, param.shape, fn, "m");
  expect_shape(v, param.shape, fn, "v");
  check_writeable(param, fn, "param");
  check_writeable(m, fn, "m");
  check_writeable(v, fn, "v");
  const Array* arrays[4] = {&param, &grad, &m, &v};
  const char* names[4] = {"param", "grad", "m", "v"};
  for (int i = 0; i < 4; ++i)
    for (int j = i + 1; j < 4; ++j)
      if (overlaps(*arrays[i], *arrays[j]))
        value_error(std::string(fn) + ": " + names[i] + " and " + names[j] +
                    " overlap; param, grad, m and v must be separate arrays");
  if (step < 1) value_error(std::string(fn) + ": step must be >= 1, got " + std::to_string(step));
  auto finite_in = [&](double x, const char* name, double lo, bool lo_open, double hi,
                       bool hi_open, const char* expected) {
    bool ok = std::isfinite(x) && (lo_open ? x > lo : x >= lo) && (hi_open ? x < hi : x <= hi);
    if (!ok) value_error(std::string(fn) + ": " + name + " must be " + expected + ", got " + num(x));
  };
  const double inf = INFINITY;
  finite_in(lr, "lr", 0.0, false, inf, true, "a finite number >= 0");
  finite_in(beta1, "beta1", 0.0, false, 1.0, true, "in [0, 1)");
  finite_in(beta2, "beta2", 0.0, false, 1.0, true, "in [0, 1)");
  finite_in(eps, "eps", 0.0, true, inf, true, "a finite number > 0");
  finite_in(weight_decay, "weight_decay", 0.0, false, inf, true, "a finite number >= 0");

  AdamwArgs args;
  args.param = param.f32();
  args.grad = grad.cf32();
  args.m = m.f32();
  args.v = v.f32();
  args.n = param.size;
  args.step = step;
  args.lr = lr;
  args.beta1 = beta1;
  args.beta2 = beta2;
  args.eps = eps;
  args.weight_decay = weight_decay;
  const AdamwKernels& kernels = KG_DISPATCH(adamw_kernels);
  py::gil_scoped_release release;
  (ver == 1 ? kernels.adamw_naive : kernels.adamw_fast)(args);
}

// One float32 array, or a list / tuple of them, as an ArrayListArgs (kept alive by `arrays`).
struct GradList {
  std::vector<Array> arrays;
  std::vector<float*> data;
  std::vector<int64_t> sizes;
  ArrayListArgs args() const { return {data.data(), sizes.data(), (int64_t)data.size()}; }
};

static GradList grad_list(py::handle obj, const char* fn, bool writeable) {
  GradList g;
  auto add = [&](py::handle a, const std::string& name) {
    g.arrays.push_back(f32(a, fn, name.c_str()));
    if (writeable) check_writeable(g.arrays.back(), fn, name);
    g.data.push_back(g.arrays.back().f32());
    g.sizes.push_back(g.arrays.back().size);
  };
  if (py::isinstance<py::list>(obj) || py::isinstance<py::tuple>(obj)) {
    py::sequence seq = py::reinterpret_borrow<py::sequence>(obj);
    if (seq.size() == 0)
      value_error(std::string(fn) + ": grads is an empty " +
                  (py::isinstance<py::list>(obj) ? "list" : "tuple"));
    for (size_t i = 0; i < seq.size(); ++i) add(seq[i], "grads[" + std::to_string(i) + "]");
  } else if (py::isinstance<py::array>(obj)) {
    add(obj, "grads");
  } else {
    type_error(std::string(fn) + ": grads must be a float32 numpy array or a list/tuple of them, got " +
               std::string(py::str(py::type::handle_of(obj).attr("__name__"))));
  }
  if (writeable) {  // scaling in place twice through two views would scale twice
    std::vector<size_t> order(g.arrays.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
      return g.arrays[a].bytes_begin() < g.arrays[b].bytes_begin();
    });
    for (size_t i = 1; i < order.size(); ++i)
      if (overlaps(g.arrays[order[i - 1]], g.arrays[order[i]]))
        value_error(std::string(fn) + ": grads[" + std::to_string(std::min(order[i - 1], order[i])) +
                    "] and grads[" + std::to_string(std::max(order[i - 1], order[i])) +
                    "] overlap; each array must appear once");
  }
  return g;
}

static double grad_norm(py::handle grads, int version) {
  const char* fn = "grad_norm";
  int ver = check_version(fn, version, {{1, "naive"}, {2, "fast"}});
  GradList g = grad_list(grads, fn, false);
  const AdamwKernels& kernels = KG_DISPATCH(adamw_kernels);
  py::gil_scoped_release release;
  return std::sqrt((ver == 1 ? kernels.sum_squares_naive : kernels.sum_squares_fast)(g.args()));
}

static double clip_grad_norm(py::handle grads, double max_norm, double eps,
                             int version) {
  const char* fn = "clip_grad_norm";
  int ver = check_version(fn, version, {{1, "naive"}, {2, "fast"}});
  if (!(std::isfinite(max_norm) && max_norm >= 0.0))
    value_error(std::string(fn) + ": max_norm must be a finite number >= 0, got " + num(max_norm));
  if (!(std::isfinite(eps) && eps >= 0.0))
    value_error(std::string(fn) + ": eps must be a finite number >= 0, got " + num(eps));
  GradList g = grad_list(grads, fn, true);
  const AdamwKernels& kernels = KG_DISPATCH(adamw_kernels);
  py::gil_scoped_release release;
  double norm = std::sqrt((ver == 1 ? kernels.sum_squares_naive : kernels.sum_squares_fast)(g.args()));
  if (!std::isfinite(norm)) return norm;  // NaN / inf: report it, leave the gradients alone
  // PyTorch: clip_coef = max_norm / (norm + eps), clamped to at most 1.
  if (norm + eps > 0.0) {
    double coef = max_norm / (norm + eps);
    if (coef < 1.0)
      (ver == 1 ? kernels.scale_naive : kernels.scale_fast)(g.args(), static_cast<float>(coef));
  }
  return norm;
}

void register_adamw(py::module_& m) {
  m.def("adamw_step", &adamw_step, py::arg("param"), py::arg("grad"), py::arg("m"), py::arg("v"),
        py::arg("step"), py::arg("lr"), py::arg("beta1") = 0.9, py::arg("beta2") = 0.999,
        py::arg("eps") = 1e-8, py::arg("weight_decay") = 0.0, py::arg("version") = 2);
  m.def("grad_norm", &grad_norm, py::arg("grads"), py::arg("version") = 2);
  m.def("clip_grad_norm", &clip_grad_norm, py::arg("grads"), py::arg("max_norm"),
        py::arg("eps") = 1e-6, py::arg("version") = 2);
  m.def("adamw_path", [] { return std::string(KG_DISPATCH(adamw_kernels).description); });
}

}  // namespace bind
}  // namespace kg
