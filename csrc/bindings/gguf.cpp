// kernelgpt._C GGUF functions: python/kernelgpt/io/gguf.py memory-maps the file and passes
// the mapping (any read-only buffer) here. gguf_parse validates the header with the GIL
// released and returns plain Python objects: scalars decoded, strings decoded, arrays as
// (element type, count, offset, end) descriptors that gguf.py materializes on first use.
#include <pybind11/pybind11.h>

#include <cstring>
#include <string>

#include "bindings/args.h"
#include "bindings/registry.h"
#include "gguf/gguf.h"

namespace kg {
namespace bind {

namespace {

struct Bytes {
  py::buffer_info info;  // holds the buffer export: the mapping cannot close under us
  const uint8_t* data;
  uint64_t size;
};

Bytes bytes_of(const py::buffer& buffer) {
  Bytes b{buffer.request(), nullptr, 0};
  if (b.info.ndim != 1 || b.info.itemsize != 1 || b.info.strides[0] != 1)
    type_error("gguf: expected a contiguous bytes-like object (bytes, mmap.mmap, ...)");
  b.data = static_cast<const uint8_t*>(b.info.ptr);
  b.size = static_cast<uint64_t>(b.info.size);
  return b;
}

py::str utf8(const Bytes& b, uint64_t offset, uint64_t length) {
  // parse() / array_items() validated the bytes; decoding strictly anyway costs nothing extra
  PyObject* s = PyUnicode_DecodeUTF8(reinterpret_cast<const char*>(b.data + offset),
                                     static_cast<Py_ssize_t>(length), "strict");
  if (!s) throw py::error_already_set();
  return py::reinterpret_steal<py::str>(s);
}

template <class T>
T as(uint64_t bits) {
  T v;
  std::memcpy(&v, &bits, sizeof(T));  // the low bytes, on a little-endian host
  return v;
}

py::object value_object(const Bytes& b, const gguf::Value& v) {
  using namespace gguf;
  switch (v.type) {
    case kUint8: return py::int_(as<uint8_t>(v.bits));
    case kInt8: return py::int_(as<int8_t>(v.bits));
    case kUint16: return py::int_(as<uint16_t>(v.bits));
    case kInt16: return py::int_(as<int16_t>(v.bits));
    case kUint32: return py::int_(as<uint32_t>(v.bits));
    case kInt32: return py::int_(as<int32_t>(v.bits));
    case kUint64: return py::int_(as<uint64_t>(v.bits));
    case kInt64: return py::int_(as<int64_t>(v.bits));
    case kFloat32: return py::float_(as<float>(v.bits));
    case kFloat64: return py::float_(as<double>(v.bits));
    case kBool: return py::bool_(v.bits != 0);
    case kString: return utf8(b, v.offset, v.length);
    case kArray: return py::make_tuple(v.elem_type, v.length, v.offset, v.end);
  }
  throw gguf::FormatError("unknown value type " + std::to_string(v.type));
}

py::dict parse(const py::buffer& buffer) {
  Bytes b = bytes_of(buffer);
  gguf::File f;
  {
    py::gil_scoped_release release;
    f = gguf::parse(b.data, b.size);
  }
  py::list metadata;
  for (const gguf::KeyValue& kv : f.metadata)
    metadata.append(py::make_tuple(py::str(kv.key), kv.value.type, value_object(b, kv.value)));
  py::list tensors;
  for (const gguf::Tensor& t : f.tensors) {
    py::tuple ne(t.n_dims);
    for (uint32_t d = 0; d < t.n_dims; ++d) ne[d] = py::int_(t.ne[d]);
    tensors.append(py::make_tuple(py::str(t.name), t.type, ne, t.offset, t.nbytes, t.n_elements));
  }
  py::dict out;
  out["version"] = f.version;
  out["alignment"] = f.alignment;
  out["data_offset"] = f.data_offset;
  out["metadata"] = metadata;
  out["tensors"] = tensors;
  return out;
}

py::list array_items(const py::buffer& buffer, uint32_t elem_type, uint64_t count,
                     uint64_t offset) {
  Bytes b = bytes_of(buffer);
  std::vector<gguf::Value> items;
  {
    py::gil_scoped_release release;
    items = gguf::array_items(b.data, b.size, elem_type, count, offset);
  }
  py::list out(items.size());
  for (size_t i = 0; i < items.size(); ++i) {
    PyObject* o = value_object(b, items[i]).release().ptr();
    PyList_SET_ITEM(out.ptr(), static_cast<Py_ssize_t>(i), o);  // steals the reference
  }
  return out;
}

py::list ggml_types() {
  py::list out;
  for (const gguf::GgmlType& t : gguf::ggml_types())
    out.append(py::make_tuple(t.id, t.name, t.block_size, t.type_size));
  return out;
}

}  // namespace

void register_gguf(py::module_& m) {
  py::register_exception<gguf::FormatError>(m, "GGUFFormatError", PyExc_ValueError);
  m.def("gguf_parse", &parse, py::arg("buffer"),
        "Validates a GGUF file held in a bytes-like object; returns {version, alignment, "
        "data_offset, metadata: [(key, type, value)], tensors: [(name, ggml_type, ne, offset, "
        "nbytes, n_elements)]}. Arrays are (elem_type, count, offset, end) descriptors.");
  m.def("gguf_array_items", &array_items, py::arg("buffer"), py::arg("elem_type"),
        py::arg("count"), py::arg("offset"),
        "The elements of a GGUF array of strings (str) or of arrays (descriptors).");
  m.def("gguf_ggml_types", &ggml_types, "[(id, name, block_size, type_size)] of ggml types");
  m.attr("GGUF_MAX_DIMS") = gguf::kMaxDims;
}

}  // namespace bind
}  // namespace kg
