#include "kernels/matmul.h"

#include "bindings/args.h"
#include "bindings/registry.h"
#include "common/cpu.h"

namespace kg {
namespace bind {

static py::array matmul(py::handle a_obj, py::handle b_obj, py::handle bias_obj,
                        py::handle out_obj, bool trans_a, bool trans_b, bool accumulate,
                        int version) {
  const char* fn = "matmul";
  int v = check_version(fn, version, {{1, "naive"}, {5, "blocked"}});
  Array a = f32(a_obj, fn, "a", {2, 3});
  Array b = f32(b_obj, fn, "b", {2, 3});
  // op(A) is [M, K] and op(B) is [K, N] for the last two dimensions.
  int64_t m = trans_a ? a.dim(-1) : a.dim(-2);
  int64_t ka = trans_a ? a.dim(-2) : a.dim(-1);
  int64_t kb = trans_b ? b.dim(-1) : b.dim(-2);
  int64_t n = trans_b ? b.dim(-2) : b.dim(-1);
  if (ka != kb)
    value_error(std::string(fn) + ": inner dimensions differ: op(a) is " +
                shape_str({m, ka}) + " (a " + shape_str(a.shape) + (trans_a ? ", transposed" : "") +
                "), op(b) is " + shape_str({kb, n}) + " (b " + shape_str(b.shape) +
                (trans_b ? ", transposed" : "") + ")");
  int64_t batch = 1;
  if (a.ndim() == 3 && b.ndim() == 3 && a.dim(0) != b.dim(0))
    value_error(std::string(fn) + ": batch sizes differ: a " + shape_str(a.shape) + ", b " +
                shape_str(b.shape));
  if (a.ndim() == 3) batch = a.dim(0);
  if (b.ndim() == 3) batch = b.dim(0);
  Array bias;
  if (!bias_obj.is_none()) {
    bias = f32(bias_obj, fn, "bias", {1});
    expect_shape(bias, {n}, fn, "bias");
  }
  if (accumulate && out_obj.is_none())
    value_error(std::string(fn) + ": accumulate=True needs out= (the array to add to)");
  Shape out_shape = (a.ndim() == 3 || b.ndim() == 3) ? Shape{batch, m, n} : Shape{m, n};
  Array c = output(out_obj, out_shape, fn, {&a, &b, bias ? &bias : nullptr});

  MatmulArgs args;
  args.a = a.cf32();
  args.b = b.cf32();
  args.bias = bias ? bias.cf32() : nullptr;
  args.c = c.f32();
  args.batch = batch;
  args.m = m;
  args.n = n;
  args.k = ka;
  args.batch_stride_a = a.ndim() == 3 ? m * ka : 0;
  args.batch_stride_b = b.ndim() == 3 ? kb * n : 0;
  args.batch_stride_c = m * n;
  args.trans_a = trans_a;
  args.trans_b = trans_b;
  args.accumulate = accumulate;
  if (a.ndim() == 3 && b.ndim() == 2 && !trans_a) {
    // One weight for every batch entry: the same as one tall matrix [batch*M, K].
    args.m = batch * m;
    args.batch = 1;
  }
  const MatmulKernels& kernels = KG_DISPATCH(matmul_kernels);
  {
    py::gil_scoped_release release;
    (v == 1 ? kernels.naive : kernels.blocked)(args);
  }
  return c.array;
}

static py::array lowrank_add(py::handle base_obj, py::handle b_obj, py::handle a_obj,
                             py::handle out_obj) {
  const char* fn = "lowrank_add";
  Array base = f32(base_obj, fn, "base", {2});
  Array b = f32(b_obj, fn, "b", {2});
  Array a = f32(a_obj, fn, "a", {2});
  int64_t m = base.dim(0), n = base.dim(1), r = b.dim(1);
  expect_shape(b, {m, r}, fn, "b");
  expect_shape(a, {r, n}, fn, "a");
  Array out = output(out_obj, base.shape, fn, {&base, &b, &a});
  LowrankArgs args;
  args.base = base.cf32();
  args.b = b.cf32();
  args.a = a.cf32();
  args.out = out.f32();
  args.m = m;
  args.n = n;
  args.r = r;
  {
    py::gil_scoped_release release;
    KG_DISPATCH(matmul_kernels).lowrank_add(args);
  }
  return out.array;
}

void register_matmul(py::module_& m) {
  m.def("lowrank_add", &lowrank_add, py::arg("base"), py::arg("b"), py::arg("a"),
        py::arg("out") = py::none(),
        "out = base + b @ a for a small inner dimension (LoRA's merged weight), one pass.");
  m.def("matmul", &matmul, py::arg("a"), py::arg("b"), py::arg("bias") = py::none(),
        py::arg("out") = py::none(), py::arg("trans_a") = false, py::arg("trans_b") = false,
        py::arg("accumulate") = false, py::arg("version") = 5);
  m.def("matmul_path", [] { return std::string(KG_DISPATCH(matmul_kernels).blocked_description); });
}

}  // namespace bind
}  // namespace kg
