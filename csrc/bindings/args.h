// Argument checking for the bindings: every array that reaches a kernel went through here.
//
// The rules (ops.py documents them for users):
//   - float arrays must be numpy float32 (TypeError otherwise; nothing is cast silently),
//   - C-contiguous (ValueError; np.ascontiguousarray makes a copy if you want one),
//   - no zero-size dimension, the expected rank and shapes (ValueError naming the argument),
//   - `out=` arrays must be writeable, have the exact output shape and not overlap inputs.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

namespace kg {
namespace bind {

namespace py = pybind11;

using Shape = std::vector<int64_t>;

std::string shape_str(const Shape& shape);

struct Array {
  py::array array;  // only meaningful when present (a default py::array is not null)
  bool present = false;
  bool half = false;  // float16 (from f32_or_f16)
  Shape shape;
  int64_t size = 0;
  explicit operator bool() const { return present; }
  int ndim() const { return static_cast<int>(shape.size()); }
  int64_t dim(int i) const { return shape[i < 0 ? shape.size() + i : i]; }
  float* f32() const { return static_cast<float*>(const_cast<void*>(array.data())); }
  const float* cf32() const { return static_cast<const float*>(array.data()); }
  const uint16_t* chalf() const { return static_cast<const uint16_t*>(array.data()); }
  uint16_t* half_bits() const { return static_cast<uint16_t*>(const_cast<void*>(array.data())); }
  const int64_t* ids() const { return static_cast<const int64_t*>(array.data()); }
  const char* bytes_begin() const { return static_cast<const char*>(array.data()); }
  const char* bytes_end() const { return bytes_begin() + array.nbytes(); }
};

// A float32, C-contiguous, non-empty array whose rank is one of `ranks` (empty = any).
Array f32(py::handle obj, const char* fn, const char* name, std::initializer_list<int> ranks = {});
// The same, float32 or float16 (a half-precision KV cache); .half says which.
Array f32_or_f16(py::handle obj, const char* fn, const char* name,
                 std::initializer_list<int> ranks = {});

// An integer array of ids; int64 is used as is, other integer dtypes are converted (a copy).
// Every value must lie in [0, limit) unless it equals `allowed_extra` (e.g. ignore_index).
Array ids(py::handle obj, const char* fn, const char* name, int64_t limit,
          const int64_t* allowed_extra = nullptr);

// Checks that a has exactly `shape`.
void expect_shape(const Array& a, const Shape& shape, const char* fn, const char* name);

// Returns `out` checked against `shape` and against overlap with `inputs`, or a new array.
Array output(py::handle out, const Shape& shape, const char* fn,
             std::initializer_list<const Array*> inputs, const char* name = "out");

[[noreturn]] void value_error(const std::string& msg);
[[noreturn]] void type_error(const std::string& msg);

bool overlaps(const Array& a, const Array& b);

}  // namespace bind
}  // namespace kg
