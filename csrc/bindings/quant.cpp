// Quantized weights (Q8_0, Q4_1): dequantize and quant_matmul. Shapes in kernels/quant.h.
#include "kernels/quant.h"

#include <pybind11/stl.h>

#include <string>

#include "bindings/args.h"
#include "bindings/registry.h"
#include "common/cpu.h"

namespace kg {
namespace bind {

static QuantType quant_type(const std::string& name, const char* fn) {
  if (name == "q8_0") return QuantType::q8_0;
  if (name == "q4_1") return QuantType::q4_1;
  value_error(std::string(fn) + ": unknown qtype '" + name + "', expected 'q8_0' or 'q4_1'");
}

// The quantized blocks: a C-contiguous, non-empty numpy uint8 array of exactly `expected`
// bytes (any shape: a flat byte string or GGUF's [rows, row_bytes]).
static Array raw_bytes(py::handle obj, const char* fn, int64_t expected, const std::string& what) {
  if (!py::isinstance<py::array>(obj))
    type_error(std::string(fn) + ": raw must be a numpy uint8 array, got " +
               std::string(py::str(py::type::handle_of(obj).attr("__name__"))));
  py::array a = py::reinterpret_borrow<py::array>(obj);
  // kind and size, not dtype identity: numpy.memmap views (gguf.GGUFReader's tensor.data)
  // carry their own uint8 dtype object.
  if (a.dtype().kind() != 'u' || a.dtype().itemsize() != 1)
    type_error(std::string(fn) + ": raw must be uint8 (the blocks' bytes), got " +
               std::string(py::str(a.dtype())));
  if (!(a.flags() & py::array::c_style))
    value_error(std::string(fn) + ": raw must be C-contiguous");
  if ((int64_t)a.nbytes() != expected)
    value_error(std::string(fn) + ": raw has " + std::to_string(a.nbytes()) + " bytes, expected " +
                std::to_string(expected) + " for " + what);
  Array r;
  r.array = a;
  r.present = true;
  r.size = a.size();
  for (py::ssize_t i = 0; i < a.ndim(); ++i) r.shape.push_back(a.shape(i));
  return r;
}

static void check_k(int64_t k, const char* fn, const char* what) {
  if (k <= 0 || k % kQuantBlock != 0)
    value_error(std::string(fn) + ": " + what + " must be a positive multiple of 32 (the block " +
                "size), got " + std::to_string(k));
}

// Bytes of rows x k weights; rejects sizes no machine could hold (and int64 overflow).
static int64_t quant_bytes(int64_t rows, int64_t k, QuantType t, const char* fn) {
  if (rows > ((int64_t)1 << 40) / k)
    value_error(std::string(fn) + ": " + std::to_string(rows) + " x " + std::to_string(k) +
                " weights is too large");
  return rows * (k / kQuantBlock) * quant_block_bytes(t);
}

static std::string describe(int64_t rows, int64_t k, const std::string& qtype) {
  return std::to_string(rows) + " rows of " + std::to_string(k) + " " + qtype + " weights";
}

static py::array dequantize(py::handle raw_obj, const std::string& qtype, const Shape& shape,
                            py::handle out_obj, int version) {
  const char* fn = "dequantize";
  int v = check_version(fn, version, {{1, "naive"}, {2, "fast"}});
  QuantType t = quant_type(qtype, fn);
  if (shape.empty()) value_error("dequantize: shape must have at least one dimension");
  int64_t rows = 1;
  for (size_t i = 0; i + 1 < shape.size(); ++i) {
    if (shape[i] <= 0)
      value_error("dequantize: shape " + shape_str(shape) + " has a dimension <= 0");
    if (rows > ((int64_t)1 << 40) / shape[i])
      value_error("dequantize: shape " + shape_str(shape) + " is too large");
    rows *= shape[i];
  }
  int64_t k = shape.back();
  check_k(k, fn, "the last dimension of shape");
  Array raw = raw_bytes(raw_obj, fn, quant_bytes(rows, k, t, fn),
                        "shape " + shape_str(shape) + " in " + qtype);
  Array out = output(out_obj, shape, fn, {&raw});
  DequantizeArgs args;
  args.raw = static_cast<const uint8_t*>(raw.array.data());
  args.out = out.f32();
  args.rows = rows;
  args.cols = k;
  args.type = t;
  const QuantKernels& kernels = KG_DISPATCH(quant_kernels);
  {
    py::gil_scoped_release release;
    (v == 1 ? kernels.dequantize_naive : kernels.dequantize_fast)(args);
  }
  return out.array;
}

static py::array quant_matmul(py::handle x_obj, py::handle raw_obj, const std::string& qtype,
                              int64_t n_rows, py::handle out_obj, int version) {
  const char* fn = "quant_matmul";
  // 0 is not a version of the table but "auto": the binding picks fused (few rows of x,
  // decode) or tiled (prefill) by shape, as the decode runner does (kernels/quant.cpp).
  int v = check_version(fn, version, {{0, "auto, by shape"}, {1, "naive"}, {2, "fused"},
                                      {3, "tiled"}, {4, "vnni"}});
  QuantType t = quant_type(qtype, fn);
  Array x = f32(x_obj, fn, "x", {1, 2});
  int64_t k = x.dim(-1), m = x.ndim() == 2 ? x.dim(0) : 1;
  check_k(k, fn, "K (x's last dimension)");
  if (n_rows <= 0) value_error("quant_matmul: n_rows must be positive, got " + std::to_string(n_rows));
  Array raw = raw_bytes(raw_obj, fn, quant_bytes(n_rows, k, t, fn),
                        describe(n_rows, k, qtype));
  Shape y_shape = x.ndim() == 2 ? Shape{m, n_rows} : Shape{n_rows};
  Array y = output(out_obj, y_shape, fn, {&x, &raw});
  QuantMatmulArgs args;
  args.x = x.cf32();
  args.w = static_cast<const uint8_t*>(raw.array.data());
  args.y = y.f32();
  args.m = m;
  args.n = n_rows;
  args.k = k;
  args.type = t;
  const QuantKernels& kr = KG_DISPATCH(quant_kernels);
  QuantMatmulFn f[] = {kr.matmul_auto, kr.matmul_naive, kr.matmul_fused, kr.matmul_tiled,
                       kr.matmul_vnni};  // indexed by version number
  {
    py::gil_scoped_release release;
    f[v](args);
  }
  return y.array;
}

// The int8 path's packed panels (kernels/quant_packed.cpp).
static py::array quant_pack(py::handle raw_obj, const std::string& qtype, int64_t n_rows, int64_t k,
                            py::handle out_obj) {
  const char* fn = "quant_pack";
  QuantType t = quant_type(qtype, fn);
  check_k(k, fn, "k");
  if (n_rows <= 0) value_error("quant_pack: n_rows must be positive, got " + std::to_string(n_rows));
  Array raw = raw_bytes(raw_obj, fn, quant_bytes(n_rows, k, t, fn), describe(n_rows, k, qtype));
  const int64_t bytes = quant_packed_bytes(t, n_rows, k);
  // numpy allocates out (np.empty asks the kernel for huge pages on large arrays: a decode
  // streams the panels, and 4 KiB pages cost it TLB misses and prefetcher restarts)
  py::array packed = out_obj.is_none() ? py::array(py::module_::import("numpy").attr("empty")(
                                             bytes, "uint8"))
                                       : py::reinterpret_borrow<py::array>(out_obj);
  Array out = raw_bytes(packed, fn, bytes, "the packed panels (out)");
  if (!packed.writeable()) value_error("quant_pack: out is read-only");
  if (overlaps(out, raw)) value_error("quant_pack: out overlaps raw");
  QuantPackArgs args;
  args.raw = static_cast<const uint8_t*>(raw.array.data());
  args.packed = static_cast<uint8_t*>(packed.mutable_data());
  args.n = n_rows;
  args.k = k;
  args.type = t;
  {
    py::gil_scoped_release release;
    KG_DISPATCH(quant_packed_kernels).pack(args);
  }
  return packed;
}

static py::array quant_matmul_packed(py::handle x_obj, py::handle packed_obj, const std::string& qtype,
                                     int64_t n_rows, py::handle out_obj, int x_bits) {
  const char* fn = "quant_matmul_packed";
  if (x_bits != 8 && x_bits != 16)
    value_error("quant_matmul_packed: x_bits must be 8 or 16, got " + std::to_string(x_bits));
  QuantType t = quant_type(qtype, fn);
  Array x = f32(x_obj, fn, "x", {1, 2});
  int64_t k = x.dim(-1), m = x.ndim() == 2 ? x.dim(0) : 1;
  check_k(k, fn, "K (x's last dimension)");
  if (n_rows <= 0)
    value_error("quant_matmul_packed: n_rows must be positive, got " + std::to_string(n_rows));
  quant_bytes(n_rows, k, t, fn);  // the size check
  Array w = raw_bytes(packed_obj, fn, quant_packed_bytes(t, n_rows, k),
                      "the packed panels of " + describe(n_rows, k, qtype) + " (ops.quant_pack)");
  if (const char* why = quant_panels_mismatch(static_cast<const uint8_t*>(w.array.data()), t, n_rows, k))
    value_error(std::string(fn) + ": " + why + ", expected " + describe(n_rows, k, qtype));
  Shape y_shape = x.ndim() == 2 ? Shape{m, n_rows} : Shape{n_rows};
  Array y = output(out_obj, y_shape, fn, {&x, &w});
  PackedMatmulArgs args;
  args.x = x.cf32();
  args.w = static_cast<const uint8_t*>(w.array.data()) + kPackHeader;
  args.y = y.f32();
  args.m = m;
  args.n = n_rows;
  args.k = k;
  args.type = t;
  args.x_bits = x_bits;
  {
    py::gil_scoped_release release;
    KG_DISPATCH(quant_packed_kernels).matmul(args);
  }
  return y.array;
}

void register_quant(py::module_& m) {
  m.def("dequantize", &dequantize, py::arg("raw"), py::arg("qtype"), py::arg("shape"),
        py::arg("out") = py::none(), py::arg("version") = 2);
  m.def("quant_matmul", &quant_matmul, py::arg("x"), py::arg("raw"), py::arg("qtype"),
        py::arg("n_rows"), py::arg("out") = py::none(), py::arg("version") = 0);
  m.def("quant_path", [] { return std::string(KG_DISPATCH(quant_kernels).description); });
  m.def("quant_pack", &quant_pack, py::arg("raw"), py::arg("qtype"), py::arg("n_rows"), py::arg("k"),
        py::arg("out") = py::none(),
        "GGUF Q8_0 / Q4_1 blocks [n_rows, k] -> the int8 path's packed panels (kernels/quant.h).");
  m.def("quant_matmul_packed", &quant_matmul_packed, py::arg("x"), py::arg("packed"),
        py::arg("qtype"), py::arg("n_rows"), py::arg("out") = py::none(), py::arg("x_bits") = 16,
        "y = x @ W^T, W as packed panels, x quantized per block of 32 in one (x_bits 8) or two "
        "(x_bits 16) int8 passes (VPDPBUSD).");
  m.def("quant_packed_path", [] {
    const QuantPackedKernels& k = KG_DISPATCH(quant_packed_kernels);
    return py::make_tuple(k.native, std::string(k.description));
  }, "(native, description) of the packed int8 kernels: native means VPDPBUSD.");
}

}  // namespace bind
}  // namespace kg
