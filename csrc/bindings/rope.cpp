#include "kernels/rope.h"

#include <cmath>
#include <memory>
#include <vector>

#include "bindings/args.h"
#include "bindings/registry.h"
#include "common/cpu.h"

namespace kg {
namespace bind {

// Positions are integers in [0, 2^31): far beyond any context length, and exact in float64.
constexpr int64_t kMaxPosition = int64_t(1) << 31;

static void check_base(double base, const char* fn) {
  if (!(std::isfinite(base) && base > 0.0))
    value_error(std::string(fn) + ": base must be a finite number > 0, got " + std::to_string(base));
}

static void check_offset(int64_t offset, int64_t t, const char* fn) {
  if (offset < 0 || offset > kMaxPosition - t)
    value_error(std::string(fn) + ": offset must be >= 0 with offset + T <= 2^31, got offset " +
                std::to_string(offset) + " for T = " + std::to_string(t));
}

static py::array sinusoidal_positions(int64_t t, int64_t c, double base, int64_t offset,
                                      int version) {
  const char* fn = "sinusoidal_positions";
  int v = check_version(fn, version, {{1, "naive"}, {2, "fast"}});
  if (t < 1) value_error(std::string(fn) + ": T must be >= 1, got " + std::to_string(t));
  if (c < 1) value_error(std::string(fn) + ": C must be >= 1, got " + std::to_string(c));
  check_base(base, fn);
  check_offset(offset, t, fn);
  py::array_t<float> out({t, c});
  std::vector<double> freq((c + 1) / 2);
  SinusoidalArgs args;
  args.out = out.mutable_data();
  args.t = t;
  args.c = c;
  args.offset = offset;
  args.base = base;
  args.freq = freq.data();
  const RopeKernels& kernels = KG_DISPATCH(rope_kernels);
  {
    py::gil_scoped_release release;
    (v == 1 ? kernels.sinusoidal_naive : kernels.sinusoidal_fast)(args);
  }
  return out;
}

static py::array rope(py::handle x_obj, py::handle positions_obj, int64_t offset, double base,
                      const std::string& layout, py::handle rotary_dim_obj, bool inverse,
                      py::handle out_obj, int version) {
  const char* fn = "rope";
  int v = check_version(fn, version, {{1, "naive"}, {2, "fast"}});
  Array x = f32(x_obj, fn, "x");
  if (x.ndim() < 2)
    value_error(std::string(fn) + ": x must be [..., T, D] (at least 2-D), got shape " +
                shape_str(x.shape));
  const int64_t t = x.dim(-2), d = x.dim(-1);
  if (layout != "half" && layout != "interleaved")
    value_error(std::string(fn) + ": layout must be 'half' or 'interleaved', got '" + layout + "'");
  int64_t rd = d;
  if (rotary_dim_obj.is_none()) {
    if (d % 2)
      value_error(std::string(fn) + ": the last dimension of x (D = " + std::to_string(d) +
                  ") must be even, x has shape " + shape_str(x.shape));
  } else {
    rd = rotary_dim_obj.cast<int64_t>();
    if (rd < 2 || rd > d || rd % 2)
      value_error(std::string(fn) + ": rotary_dim must be even and in [2, D = " +
                  std::to_string(d) + "], got " + std::to_string(rd));
  }
  check_base(base, fn);
  Array positions;
  if (!positions_obj.is_none()) {
    if (offset != 0)
      value_error(std::string(fn) + ": give positions or offset, not both (offset = " +
                  std::to_string(offset) + ")");
    positions = ids(positions_obj, fn, "positions", kMaxPosition);
    expect_shape(positions, {t}, fn, "positions");
  } else {
    check_offset(offset, t, fn);
  }
  Array out = output(out_obj, x.shape, fn, {&x, positions ? &positions : nullptr});

  RopeArgs args;
  args.x = x.cf32();
  args.out = out.f32();
  args.positions = positions ? positions.ids() : nullptr;
  args.n = x.size / (t * d);
  args.t = t;
  args.d = d;
  args.rotary_dim = rd;
  args.offset = offset;
  args.base = base;
  args.interleaved = layout == "interleaved";
  args.inverse = inverse;
  std::unique_ptr<float[]> table;  // the fast version's workspace (uninitialised)
  std::unique_ptr<double[]> freq;
  if (v == 2) {
    table.reset(new float[rope_table_floats(args)]);
    freq.reset(new double[rd / 2]);
    args.table = table.get();
    args.freq = freq.get();
  }
  const RopeKernels& kernels = KG_DISPATCH(rope_kernels);
  {
    py::gil_scoped_release release;
    (v == 1 ? kernels.rope_naive : kernels.rope_fast)(args);
  }
  return out.array;
}

void register_rope(py::module_& m) {
  m.def("sinusoidal_positions", &sinusoidal_positions, py::arg("T"), py::arg("C"),
        py::arg("base") = 10000.0, py::arg("offset") = 0, py::arg("version") = 2);
  m.def("rope", &rope, py::arg("x"), py::arg("positions") = py::none(), py::arg("offset") = 0,
        py::arg("base") = 10000.0, py::arg("layout") = "half",
        py::arg("rotary_dim") = py::none(), py::arg("inverse") = false,
        py::arg("out") = py::none(), py::arg("version") = 2);
  m.def("rope_path", [] { return std::string(KG_DISPATCH(rope_kernels).description); });
}

}  // namespace bind
}  // namespace kg
