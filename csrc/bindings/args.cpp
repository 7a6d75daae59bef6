#include "bindings/args.h"

namespace kg {
namespace bind {

std::string shape_str(const Shape& shape) {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  if (shape.size() == 1) s += ",";
  return s + ")";
}

void value_error(const std::string& msg) { throw py::value_error(msg); }
void type_error(const std::string& msg) { throw py::type_error(msg); }

static Shape shape_of(const py::array& a) {
  Shape s(a.ndim());
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s[i] = a.shape(i);
  return s;
}

static std::string ranks_str(std::initializer_list<int> ranks) {
  std::string s;
  size_t i = 0;
  for (int r : ranks) {
    if (i) s += i + 1 == ranks.size() ? " or " : ", ";
    s += std::to_string(r) + "-D";
    ++i;
  }
  return s;
}

static py::array as_ndarray(py::handle obj, const char* fn, const char* name) {
  if (obj.is_none()) type_error(std::string(fn) + ": " + name + " must be a numpy array, got None");
  if (!py::isinstance<py::array>(obj))
    type_error(std::string(fn) + ": " + name + " must be a numpy array, got " +
               std::string(py::str(py::type::handle_of(obj).attr("__name__"))));
  return py::reinterpret_borrow<py::array>(obj);
}

static void check_layout(const py::array& a, const char* fn, const char* name,
                         std::initializer_list<int> ranks) {
  if (ranks.size()) {
    bool ok = false;
    for (int r : ranks) ok |= a.ndim() == r;
    if (!ok)
      value_error(std::string(fn) + ": " + name + " must be " + ranks_str(ranks) +
                  ", got shape " + shape_str(shape_of(a)));
  }
  if (!(a.flags() & py::array::c_style))
    value_error(std::string(fn) + ": " + name +
                " must be C-contiguous (np.ascontiguousarray makes a contiguous copy)");
  for (py::ssize_t i = 0; i < a.ndim(); ++i)
    if (a.shape(i) == 0)
      value_error(std::string(fn) + ": " + name + " has a zero-size dimension, shape " +
                  shape_str(shape_of(a)));
}

// A float32 array, or (allow_half) a float16 one: dtype, layout and rank checked.
static Array float_array(py::handle obj, const char* fn, const char* name,
                         std::initializer_list<int> ranks, bool allow_half) {
  py::array a = as_ndarray(obj, fn, name);
  const bool half = allow_half && a.dtype().kind() == 'f' && a.dtype().itemsize() == 2;
  if (!half && !a.dtype().equal(py::dtype::of<float>()))
    type_error(std::string(fn) + ": " + name + (allow_half ? " must be float32 or float16, got "
                                                           : " must be float32, got ") +
               std::string(py::str(a.dtype())));
  check_layout(a, fn, name, ranks);
  Array r;
  r.array = a;
  r.present = true;
  r.half = half;
  r.shape = shape_of(a);
  r.size = a.size();
  return r;
}

Array f32(py::handle obj, const char* fn, const char* name, std::initializer_list<int> ranks) {
  return float_array(obj, fn, name, ranks, false);
}

Array f32_or_f16(py::handle obj, const char* fn, const char* name,
                 std::initializer_list<int> ranks) {
  return float_array(obj, fn, name, ranks, true);
}

Array ids(py::handle obj, const char* fn, const char* name, int64_t limit,
          const int64_t* allowed_extra) {
  py::array a = as_ndarray(obj, fn, name);
  char kind = a.dtype().kind();
  if (kind != 'i' && kind != 'u')
    type_error(std::string(fn) + ": " + name + " must be an integer array, got " +
               std::string(py::str(a.dtype())));
  if (!a.dtype().equal(py::dtype::of<int64_t>()) || !(a.flags() & py::array::c_style))
    a = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(a);
  check_layout(a, fn, name, {});
  Array r;
  r.array = a;
  r.present = true;
  r.shape = shape_of(a);
  r.size = a.size();
  const int64_t* v = r.ids();
  for (int64_t i = 0; i < r.size; ++i) {
    if ((v[i] < 0 || v[i] >= limit) && !(allowed_extra && v[i] == *allowed_extra))
      value_error(std::string(fn) + ": " + name + "[" + std::to_string(i) +
                  "] = " + std::to_string(v[i]) + " is out of range [0, " +
                  std::to_string(limit) + ")");
  }
  return r;
}

void expect_shape(const Array& a, const Shape& shape, const char* fn, const char* name) {
  if (a.shape != shape)
    value_error(std::string(fn) + ": " + name + " has shape " + shape_str(a.shape) +
                ", expected " + shape_str(shape));
}

bool overlaps(const Array& a, const Array& b) {
  return a.bytes_begin() < b.bytes_end() && b.bytes_begin() < a.bytes_end();
}

Array output(py::handle out, const Shape& shape, const char* fn,
             std::initializer_list<const Array*> inputs, const char* name) {
  if (out.is_none()) {
    Array r;
    r.array = py::array_t<float>(shape);
    r.present = true;
    r.shape = shape;
    r.size = r.array.size();
    return r;
  }
  Array r = f32(out, fn, name);
  expect_shape(r, shape, fn, name);
  if (!r.array.writeable()) value_error(std::string(fn) + ": " + name + " is read-only");
  for (const Array* in : inputs)
    if (in && overlaps(r, *in))
      value_error(std::string(fn) + ": " + name + " must not overlap an input array");
  return r;
}

}  // namespace bind
}  // namespace kg
