// GGUF (llama.cpp's model file format, versions 2 and 3): a parser that trusts nothing.
//
//   magic "GGUF" | u32 version | u64 tensor_count | u64 kv_count
//   kv_count  x  { string key | u32 value_type | value }
//   tensor_count x { string name | u32 n_dims | u64 ne[n_dims] | u32 ggml_type | u64 offset }
//   padding to `general.alignment` (default 32) | tensor data (offsets are relative to here)
// A string is u64 length + UTF-8 bytes (no terminator); an array is u32 element type + u64
// count + elements. Everything is little-endian.
//
// parse() reads a file already in memory (the caller memory-maps it) and returns only
// offsets and decoded scalars: strings and arrays stay in the file, so opening a file with a
// 49k-token vocabulary touches each byte once and allocates almost nothing. Every count,
// length, offset, type and dimension is checked against the bytes that remain before it is
// used, with overflow-safe arithmetic and the caps below; any violation throws FormatError
// naming what was being read and where. docs/gguf.md lists what is validated.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace kg {
namespace gguf {

// Every malformed-file condition; the binding turns it into GGUFError (a ValueError).
struct FormatError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

enum ValueType : uint32_t {
  kUint8 = 0, kInt8 = 1, kUint16 = 2, kInt16 = 3, kUint32 = 4, kInt32 = 5, kFloat32 = 6,
  kBool = 7, kString = 8, kArray = 9, kUint64 = 10, kInt64 = 11, kFloat64 = 12,
  kNumValueTypes = 13
};

const char* value_type_name(uint32_t type);  // "uint8", ..., "?" for unknown ids
uint64_t value_type_size(uint32_t type);     // bytes of a fixed-size scalar; 0 for string/array

// A ggml tensor type: `block_size` elements are stored in `type_size` bytes.
struct GgmlType {
  uint32_t id;
  const char* name;
  uint32_t block_size;
  uint32_t type_size;
};
const std::vector<GgmlType>& ggml_types();
const GgmlType* find_ggml_type(uint32_t id);  // nullptr for unknown and removed ids

// Caps. The file size bounds everything as well: a count is rejected before anything is
// allocated for it when its elements cannot fit in the bytes that remain.
constexpr uint64_t kMaxTensors = 1u << 20;
constexpr uint64_t kMaxMetadata = 1u << 20;
constexpr uint64_t kMaxKeyLength = 1u << 16;
constexpr uint64_t kMaxTensorNameLength = 64;   // ggml's GGML_MAX_NAME
constexpr uint64_t kMaxStringLength = 1u << 26; // 64 MiB for one string value
constexpr uint64_t kMaxArrayLength = 1u << 28;
constexpr int kMaxArrayDepth = 4;               // arrays of arrays of ...
constexpr uint32_t kMaxDims = 4;                // GGML_MAX_DIMS
constexpr uint64_t kMaxAlignment = 1u << 20;
constexpr uint64_t kDefaultAlignment = 32;

// A metadata value. Scalars are decoded into `bits`; strings and arrays stay in the file.
struct Value {
  uint32_t type = 0;
  uint64_t bits = 0;       // scalar: its little-endian bytes, zero-extended
  uint64_t offset = 0;     // string: first byte; array: first element
  uint64_t length = 0;     // string: bytes; array: elements
  uint32_t elem_type = 0;  // array: element type
  uint64_t end = 0;        // offset just past the value
};

struct KeyValue {
  std::string key;
  Value value;
};

struct Tensor {
  std::string name;
  uint32_t n_dims = 0;
  int64_t ne[kMaxDims] = {1, 1, 1, 1};  // ggml order: ne[0] is the contiguous dimension
  uint32_t type = 0;
  uint64_t offset = 0;  // absolute file offset of the data (validated, aligned)
  uint64_t n_elements = 0;
  uint64_t nbytes = 0;
};

struct File {
  uint32_t version = 0;
  uint64_t alignment = kDefaultAlignment;
  uint64_t data_offset = 0;  // where the tensor data section starts
  std::vector<KeyValue> metadata;
  std::vector<Tensor> tensors;
};

// Parses and validates the whole header (metadata, tensor infos, tensor data bounds).
File parse(const uint8_t* data, uint64_t size);

// The elements of an array value of strings or arrays found by parse(): strings as (offset,
// length) Values, nested arrays as array Values. Bounds and UTF-8 are checked again, so a
// wrong offset throws FormatError rather than reading outside [data, data + size).
std::vector<Value> array_items(const uint8_t* data, uint64_t size, uint32_t elem_type,
                               uint64_t count, uint64_t offset);

}  // namespace gguf
}  // namespace kg
