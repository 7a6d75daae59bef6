#include "kernels/ssm.h"

#include "bindings/args.h"
#include "bindings/registry.h"
#include "common/cpu.h"
#include "common/threading.h"

namespace kg {
namespace bind {

namespace {

struct ScanInputs {
  Array u, delta, A, B, C, D;
  int64_t batch, T, E, N;
};

// u, delta [batch, T, E], A [E, N], B, C [batch, T, N], D [E], checked against each other.
ScanInputs scan_inputs(py::handle u, py::handle delta, py::handle A, py::handle B, py::handle C,
                       py::handle D, const char* fn) {
  ScanInputs s;
  s.u = f32(u, fn, "u", {3});
  s.batch = s.u.dim(0), s.T = s.u.dim(1), s.E = s.u.dim(2);
  s.delta = f32(delta, fn, "delta", {3});
  expect_shape(s.delta, s.u.shape, fn, "delta");
  s.A = f32(A, fn, "A", {2});
  s.N = s.A.dim(1);
  expect_shape(s.A, {s.E, s.N}, fn, "A");
  if (s.N > kScanMaxState)
    value_error(std::string(fn) + ": the state size N (A.shape[1] = " + std::to_string(s.N) +
                ") must be <= " + std::to_string(kScanMaxState));
  s.B = f32(B, fn, "B", {3});
  expect_shape(s.B, {s.batch, s.T, s.N}, fn, "B");
  s.C = f32(C, fn, "C", {3});
  expect_shape(s.C, {s.batch, s.T, s.N}, fn, "C");
  s.D = f32(D, fn, "D", {1});
  expect_shape(s.D, {s.E}, fn, "D");
  return s;
}

// The inputs and sizes ScanArgs and ScanBackwardArgs share.
template <class Args>
void fill_inputs(Args& args, const ScanInputs& s) {
  args.u = s.u.cf32(), args.delta = s.delta.cf32(), args.A = s.A.cf32();
  args.B = s.B.cf32(), args.C = s.C.cf32(), args.D = s.D.cf32();
  args.batch = s.batch, args.T = s.T, args.E = s.E, args.N = s.N;
}

py::object scan_forward(py::handle u, py::handle delta, py::handle A, py::handle B, py::handle C,
                        py::handle D, py::handle h0_obj, bool return_state, int64_t chunk,
                        int version) {
  const char* fn = "selective_scan";
  int v = check_version(fn, version, {{1, "naive"}, {2, "chunked"}});
  if (chunk < 0) value_error("selective_scan: chunk must be >= 0 (0: automatic), got " +
                             std::to_string(chunk));
  ScanInputs s = scan_inputs(u, delta, A, B, C, D, fn);
  Array h0;
  if (!h0_obj.is_none()) {
    h0 = f32(h0_obj, fn, "h0", {3});
    expect_shape(h0, {s.batch, s.E, s.N}, fn, "h0");
  }
  Array y = output(py::none(), s.u.shape, fn, {});
  Array h_out;
  if (return_state) h_out = output(py::none(), {s.batch, s.E, s.N}, fn, {});
  ScanArgs args;
  fill_inputs(args, s);
  args.h0 = h0 ? h0.cf32() : nullptr;
  args.y = y.f32();
  args.h_out = h_out ? h_out.f32() : nullptr;
  args.chunk = scan_plan(s.batch, s.T, s.E, num_threads(), chunk, false);
  py::array_t<float> work(v == 2 ? scan_work_floats(s.batch, s.T, s.E, s.N, args.chunk, false) : 0);
  args.work = work.mutable_data();
  const ScanKernels& kernels = KG_DISPATCH(scan_kernels);
  {
    py::gil_scoped_release release;
    (v == 1 ? kernels.naive : kernels.chunked)(args);
  }
  if (return_state) return py::make_tuple(y.array, h_out.array);
  return y.array;
}

py::tuple scan_backward(py::handle dy_obj, py::handle u, py::handle delta, py::handle A,
                        py::handle B, py::handle C, py::handle D, int64_t chunk, int version) {
  const char* fn = "selective_scan_backward";
  int v = check_version(fn, version, {{1, "naive"}, {2, "chunked"}});
  if (chunk < 0) value_error("selective_scan_backward: chunk must be >= 0 (0: automatic), got " +
                             std::to_string(chunk));
  ScanInputs s = scan_inputs(u, delta, A, B, C, D, fn);
  Array dy = f32(dy_obj, fn, "dy", {3});
  expect_shape(dy, s.u.shape, fn, "dy");
  Array du = output(py::none(), s.u.shape, fn, {});
  Array dd = output(py::none(), s.u.shape, fn, {});
  Array dA = output(py::none(), s.A.shape, fn, {});
  Array dB = output(py::none(), s.B.shape, fn, {});
  Array dC = output(py::none(), s.C.shape, fn, {});
  Array dD = output(py::none(), s.D.shape, fn, {});
  ScanBackwardArgs args;
  fill_inputs(args, s);
  args.dy = dy.cf32();
  args.du = du.f32(), args.d_delta = dd.f32(), args.dA = dA.f32();
  args.dB = dB.f32(), args.dC = dC.f32(), args.dD = dD.f32();
  args.chunk = scan_plan(s.batch, s.T, s.E, num_threads(), chunk, true);
  py::array_t<float> work(v == 2 ? scan_work_floats(s.batch, s.T, s.E, s.N, args.chunk, true) : 0);
  args.work = work.mutable_data();
  const ScanKernels& kernels = KG_DISPATCH(scan_kernels);
  {
    py::gil_scoped_release release;
    (v == 1 ? kernels.backward_naive : kernels.backward_chunked)(args);
  }
  return py::make_tuple(du.array, dd.array, dA.array, dB.array, dC.array, dD.array);
}

}  // namespace

void register_ssm(py::module_& m) {
  m.def("selective_scan", &scan_forward, py::arg("u"), py::arg("delta"), py::arg("A"),
        py::arg("B"), py::arg("C"), py::arg("D"), py::arg("h0") = py::none(),
        py::arg("return_state") = false, py::arg("chunk") = 0, py::arg("version") = 2);
  m.def("selective_scan_backward", &scan_backward, py::arg("dy"), py::arg("u"),
        py::arg("delta"), py::arg("A"), py::arg("B"), py::arg("C"), py::arg("D"),
        py::arg("chunk") = 0, py::arg("version") = 2);
  m.def("ssm_path", [] {
    return "chunked scan (chunks of time in parallel when sequences x channel groups are too "
           "few for the threads), SIMD over groups of " +
           std::to_string(KG_DISPATCH(scan_kernels).width) +
           " channels, threads over (sequence, channel group, chunk)";
  });
  m.def("selective_scan_plan", [](int64_t batch, int64_t T, int64_t E, int64_t chunk,
                                  bool backward) {
    return scan_plan(batch, T, E, num_threads(), chunk, backward);
  }, py::arg("batch"), py::arg("T"), py::arg("E"), py::arg("chunk") = 0,
     py::arg("backward") = false);
}

}  // namespace bind
}  // namespace kg
