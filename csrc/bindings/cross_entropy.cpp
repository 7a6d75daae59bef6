#include "kernels/cross_entropy.h"

#include <vector>

#include "bindings/args.h"
#include "bindings/registry.h"
#include "common/cpu.h"

namespace kg {
namespace bind {

enum class Reduction { mean, sum, none };

static Reduction parse_reduction(const std::string& r, const char* fn) {
  if (r == "mean") return Reduction::mean;
  if (r == "sum") return Reduction::sum;
  if (r == "none") return Reduction::none;
  value_error(std::string(fn) + ": reduction must be 'mean', 'sum' or 'none', got '" + r + "'");
}

struct CeInputs {
  Array logits, targets;
  int64_t n = 0, v = 0, count = 0;  // count: rows whose target is not ignore_index
};

static CeInputs ce_inputs(py::handle logits_obj, py::handle targets_obj, int64_t ignore_index,
                          const char* fn) {
  CeInputs in;
  in.logits = f32(logits_obj, fn, "logits", {2});
  in.n = in.logits.dim(0);
  in.v = in.logits.dim(1);
  in.targets = ids(targets_obj, fn, "targets", in.v, &ignore_index);
  expect_shape(in.targets, {in.n}, fn, "targets");
  const int64_t* t = in.targets.ids();
  for (int64_t i = 0; i < in.n; ++i) in.count += t[i] != ignore_index;
  return in;
}

static CrossEntropyFn pick(int version, const char* fn) {
  int v = check_version(fn, version, {{1, "naive"}, {2, "online"}});
  const CrossEntropyKernels& k = KG_DISPATCH(cross_entropy_kernels);
  return v == 1 ? k.naive : k.online;
}

// loss (a float for mean/sum, float32 [N] for none), or (loss, dlogits) with return_grad.
static py::object cross_entropy(py::handle logits_obj, py::handle targets_obj,
                                int64_t ignore_index, const std::string& reduction,
                                bool return_grad, py::handle out_obj,
                                int version) {
  const char* fn = "cross_entropy";
  CrossEntropyFn kernel = pick(version, fn);
  Reduction red = parse_reduction(reduction, fn);
  CeInputs in = ce_inputs(logits_obj, targets_obj, ignore_index, fn);
  py::array_t<float> losses_array;
  std::vector<float> losses_buffer;
  float* losses;
  if (red == Reduction::none) {
    losses_array = py::array_t<float>(in.n);
    losses = losses_array.mutable_data();
  } else {
    losses_buffer.resize(in.n);
    losses = losses_buffer.data();
  }
  Array grad;
  if (!return_grad && !out_obj.is_none())
    value_error(std::string(fn) + ": out= receives the gradient, so it needs return_grad=True");
  if (return_grad) grad = output(out_obj, {in.n, in.v}, fn, {&in.logits, &in.targets});
  CrossEntropyArgs args;
  args.logits = in.logits.cf32();
  args.targets = in.targets.ids();
  args.n = in.n;
  args.v = in.v;
  args.ignore_index = ignore_index;
  args.losses = losses;
  args.dlogits = return_grad ? grad.f32() : nullptr;
  args.grad_scale = red == Reduction::mean ? (in.count ? (float)(1.0 / in.count) : 0.0f) : 1.0f;
  double total = 0.0;
  {
    py::gil_scoped_release release;
    kernel(args);
    if (red != Reduction::none)
      for (int64_t i = 0; i < in.n; ++i) total += losses[i];  // fixed order, in double
  }
  py::object loss;
  if (red == Reduction::none)
    loss = losses_array;
  else if (red == Reduction::sum)
    loss = py::float_(total);
  else  // mean over the rows that count; 0.0 (not NaN) when every row is ignored
    loss = py::float_(in.count ? total / in.count : 0.0);
  if (return_grad) return py::make_tuple(loss, grad.array);
  return loss;
}

static py::array cross_entropy_backward(py::handle logits_obj, py::handle targets_obj,
                                        py::handle dloss_obj, int64_t ignore_index,
                                        const std::string& reduction, py::handle out_obj,
                                        int version) {
  const char* fn = "cross_entropy_backward";
  CrossEntropyFn kernel = pick(version, fn);
  Reduction red = parse_reduction(reduction, fn);
  CeInputs in = ce_inputs(logits_obj, targets_obj, ignore_index, fn);
  // dloss: a number (mean, sum, or none: the same for every row) or a float32 array [N] (none).
  Array dloss_rows;
  double dloss = 1.0;
  py::object dl = py::reinterpret_borrow<py::object>(dloss_obj);
  if (py::isinstance<py::array>(dl) && py::reinterpret_borrow<py::array>(dl).ndim() > 0) {
    if (red != Reduction::none)
      value_error(std::string(fn) + ": dloss must be a scalar for reduction='" + reduction +
                  "' (the loss is a scalar), got an array of shape " +
                  std::string(py::str(dl.attr("shape"))));
    dloss_rows = f32(dl, fn, "dloss", {1});
    expect_shape(dloss_rows, {in.n}, fn, "dloss");
  } else {
    if (dl.is_none() || py::isinstance<py::str>(dl) || !py::hasattr(dl, "__float__"))
      type_error(std::string(fn) + ": dloss must be a number" +
                 (red == Reduction::none ? " or a float32 array [N]" : "") + ", got " +
                 std::string(py::str(py::type::handle_of(dl).attr("__name__"))));
    dloss = py::cast<double>(py::float_(dl));
  }
  Array dx = output(out_obj, {in.n, in.v}, fn,
                    {&in.logits, &in.targets, dloss_rows ? &dloss_rows : nullptr});
  CrossEntropyArgs args;
  args.logits = in.logits.cf32();
  args.targets = in.targets.ids();
  args.n = in.n;
  args.v = in.v;
  args.ignore_index = ignore_index;
  args.dlogits = dx.f32();
  double w = red == Reduction::mean ? (in.count ? dloss / in.count : 0.0) : dloss;
  args.grad_scale = (float)w;
  args.grad_scale_rows = dloss_rows ? dloss_rows.cf32() : nullptr;
  {
    py::gil_scoped_release release;
    kernel(args);
  }
  return dx.array;
}

void register_cross_entropy(py::module_& m) {
  m.def("cross_entropy", &cross_entropy, py::arg("logits"), py::arg("targets"),
        py::arg("ignore_index") = -100, py::arg("reduction") = "mean",
        py::arg("return_grad") = false, py::arg("out") = py::none(),
        py::arg("version") = 2);
  m.def("cross_entropy_backward", &cross_entropy_backward, py::arg("logits"),
        py::arg("targets"), py::arg("dloss") = 1.0, py::arg("ignore_index") = -100,
        py::arg("reduction") = "mean", py::arg("out") = py::none(),
        py::arg("version") = 2);
  m.def("cross_entropy_path",
        [] { return std::string(KG_DISPATCH(cross_entropy_kernels).online_description); });
}

}  // namespace bind
}  // namespace kg
