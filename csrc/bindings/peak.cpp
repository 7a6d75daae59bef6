#include "kernels/peak.h"

#include <chrono>

#include "bindings/args.h"
#include "bindings/registry.h"
#include "common/cpu.h"
#include "common/threading.h"

namespace kg {
namespace bind {
namespace {

// GFLOP/s of `run` (iterations, threads) -> flops, doubling iterations until a call lasts
// `seconds`.
double measure_gflops(double (*run)(int64_t, int), int threads, double seconds) {
  run(1000, threads);  // warm up (clocks, thread pool)
  int64_t iters = 1 << 16;
  for (;;) {
    auto t0 = std::chrono::steady_clock::now();
    double flops = run(iters, threads);
    double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (dt >= seconds || iters > (int64_t(1) << 40)) return flops / dt / 1e9;
    iters *= 2;
  }
}

}  // namespace


void register_peak(py::module_& m) {
  m.def(
      "measure_fma_gflops",
      [](int threads, double seconds) {
        if (threads < 1) value_error("measure_fma_gflops: threads must be >= 1");
        const PeakKernels& k = KG_DISPATCH(peak_kernels);
        py::gil_scoped_release release;
        return measure_gflops(k.fma_flops, threads, seconds);
      },
      py::arg("threads"), py::arg("seconds") = 0.2,
      "Measured fp32 FMA throughput in GFLOP/s on `threads` threads (registers only).");
  m.def(
      "measure_bf16_gflops",
      [](int threads, double seconds) {
        if (threads < 1) value_error("measure_bf16_gflops: threads must be >= 1");
        const PeakKernels& k = KG_DISPATCH(peak_kernels);
        py::gil_scoped_release release;
        return measure_gflops(k.bf16_dot_flops, threads, seconds);
      },
      py::arg("threads"), py::arg("seconds") = 0.2,
      "Measured bf16 dot-product throughput (VDPBF16PS, fp32 accumulation) in GFLOP/s on "
      "`threads` threads; the fp32 FMA rate on CPUs without AVX512-BF16.");
  m.def(
      "stream_scale",
      [](py::handle src_obj, py::handle dst_obj, float s) {
        Array src = f32(src_obj, "stream_scale", "src");
        Array dst = output(dst_obj, src.shape, "stream_scale", {&src}, "dst");
        const PeakKernels& k = KG_DISPATCH(peak_kernels);
        py::gil_scoped_release release;
        k.scale_copy(src.cf32(), dst.f32(), src.size, s);
      },
      py::arg("src"), py::arg("dst"), py::arg("scale") = 1.0f,
      "dst = src * scale, streaming (for measuring DRAM bandwidth).");
  m.def(
      "stream_sum",
      [](py::handle src_obj) {
        Array src = f32(src_obj, "stream_sum", "src");
        const PeakKernels& k = KG_DISPATCH(peak_kernels);
        py::gil_scoped_release release;
        return k.sum(src.cf32(), src.size);
      },
      py::arg("src"), "Sum of src, streaming (for measuring read bandwidth).");
}

}  // namespace bind
}  // namespace kg
