// GGUF parser: see gguf.h for the layout and the rules. One pass over the header; the reads
// go through need(), which compares against the bytes that remain (never pos + n > size,
// which could wrap), so no read leaves [data, data + size) whatever the file says.
#include "gguf/gguf.h"

#include <algorithm>
#include <cstring>
#include <string_view>
#include <unordered_set>

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the GGUF reader assumes a little-endian host");

namespace kg {
namespace gguf {

namespace {

std::string num(uint64_t v) { return std::to_string(v); }

// Strict UTF-8, the same set of strings Python's bytes.decode("utf-8") accepts: no overlong
// forms, no surrogates, nothing above U+10FFFF.
bool valid_utf8(const uint8_t* s, uint64_t n) {
  uint64_t i = 0;
  while (i < n) {
    // ASCII fast path, 8 bytes at a time
    while (i + 8 <= n) {
      uint64_t w;
      std::memcpy(&w, s + i, 8);
      if (w & 0x8080808080808080ull) break;
      i += 8;
    }
    if (i >= n) break;
    uint8_t c = s[i];
    if (c < 0x80) { ++i; continue; }
    uint64_t len;
    uint8_t lo = 0x80, hi = 0xBF;  // allowed range of the second byte
    if (c >= 0xC2 && c <= 0xDF) len = 2;
    else if (c == 0xE0) { len = 3; lo = 0xA0; }
    else if (c >= 0xE1 && c <= 0xEC) len = 3;
    else if (c == 0xED) { len = 3; hi = 0x9F; }  // U+D800..U+DFFF are surrogates
    else if (c >= 0xEE && c <= 0xEF) len = 3;
    else if (c == 0xF0) { len = 4; lo = 0x90; }
    else if (c >= 0xF1 && c <= 0xF3) len = 4;
    else if (c == 0xF4) { len = 4; hi = 0x8F; }  // nothing above U+10FFFF
    else return false;
    if (n - i < len) return false;
    if (s[i + 1] < lo || s[i + 1] > hi) return false;
    for (uint64_t k = 2; k < len; ++k)
      if ((s[i + k] & 0xC0) != 0x80) return false;
    i += len;
  }
  return true;
}

class Parser {
 public:
  Parser(const uint8_t* data, uint64_t size, uint64_t pos = 0) : data_(data), size_(size), pos_(pos) {}

  File parse();
  std::vector<Value> items(uint32_t elem_type, uint64_t count);

 private:
  const uint8_t* data_;
  uint64_t size_;
  uint64_t pos_;
  std::string where_;           // the entry being read, for error messages
  std::vector<uint64_t> path_;  // element indices inside (nested) arrays

  [[noreturn]] void fail(const std::string& msg) const {
    std::string s = where_;
    if (!path_.empty()) {
      s += " element ";
      for (uint64_t i : path_) s += "[" + num(i) + "]";
    }
    throw FormatError(s.empty() ? msg : s + ": " + msg);
  }
  uint64_t remaining() const { return size_ - pos_; }
  void need(uint64_t n, const char* what) const {
    if (n > remaining())
      fail(std::string("truncated: the ") + what + " needs " + num(n) + " bytes at offset " +
           num(pos_) + ", but the file ends at " + num(size_));
  }
  template <class T>
  T get(const char* what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  Value string(const char* what, uint64_t max_length);
  Value value(uint32_t type, int depth);
  Value array(int depth);
};

Value Parser::string(const char* what, uint64_t max_length) {
  uint64_t n = get<uint64_t>(what);
  if (n > max_length)
    fail(std::string(what) + " length " + num(n) + " exceeds the limit of " + num(max_length) +
         " bytes");
  need(n, what);
  if (!valid_utf8(data_ + pos_, n))
    fail(std::string(what) + " at offset " + num(pos_) + " is not valid UTF-8");
  Value v;
  v.type = kString;
  v.offset = pos_;
  v.length = n;
  pos_ += n;
  v.end = pos_;
  return v;
}

Value Parser::value(uint32_t type, int depth) {
  if (type == kString) return string("string value", kMaxStringLength);
  if (type == kArray) return array(depth);
  uint64_t n = value_type_size(type);
  if (n == 0) fail("unknown value type " + num(type));
  need(n, value_type_name(type));
  Value v;
  v.type = type;
  std::memcpy(&v.bits, data_ + pos_, n);  // little-endian: the low bytes
  pos_ += n;
  v.end = pos_;
  if (type == kBool && v.bits > 1) fail("bool value " + num(v.bits) + " is neither 0 nor 1");
  return v;
}

Value Parser::array(int depth) {
  if (depth >= kMaxArrayDepth)
    fail("arrays nested more than " + num(kMaxArrayDepth) + " deep");
  Value v;
  v.type = kArray;
  v.elem_type = get<uint32_t>("array element type");
  if (v.elem_type >= kNumValueTypes) fail("unknown array element type " + num(v.elem_type));
  v.length = get<uint64_t>("array length");
  if (v.length > kMaxArrayLength)
    fail("array length " + num(v.length) + " exceeds the limit of " + num(kMaxArrayLength));
  // the least an element can take: checked before the loop, so a huge count fails at once
  uint64_t fixed = value_type_size(v.elem_type);
  uint64_t least = v.elem_type == kString ? 8 : v.elem_type == kArray ? 12 : fixed;
  if (v.length > remaining() / least)
    fail("truncated: an array of " + num(v.length) + " " + value_type_name(v.elem_type) +
         " values needs at least " + num(least) + " bytes each from offset " + num(pos_) +
         ", but the file ends at " + num(size_));
  v.offset = pos_;
  if (fixed) {
    if (v.elem_type == kBool)
      for (uint64_t i = 0; i < v.length; ++i)
        if (data_[pos_ + i] > 1) {
          path_.push_back(i);
          fail("bool value " + num(data_[pos_ + i]) + " is neither 0 nor 1");
        }
    pos_ += v.length * fixed;
  } else {
    path_.push_back(0);
    for (uint64_t i = 0; i < v.length; ++i) {
      path_.back() = i;
      value(v.elem_type, depth + 1);
    }
    path_.pop_back();
  }
  v.end = pos_;
  return v;
}

File Parser::parse() {
  File f;
  where_ = "header";
  if (size_ < 4 || std::memcmp(data_, "GGUF", 4) != 0)
    fail(size_ < 4 ? "not a GGUF file: it is only " + num(size_) + " bytes long"
                   : "not a GGUF file: it does not start with the magic bytes 'GGUF'");
  pos_ = 4;
  f.version = get<uint32_t>("version");
  if (f.version == 1) fail("GGUF version 1 is not supported (only versions 2 and 3)");
  if (f.version == 0x02000000u || f.version == 0x03000000u)
    fail("big-endian GGUF files are not supported");
  if (f.version != 2 && f.version != 3)
    fail("unsupported GGUF version " + num(f.version) + " (only versions 2 and 3)");
  uint64_t n_tensors = get<uint64_t>("tensor count");
  uint64_t n_kv = get<uint64_t>("metadata count");
  if (n_tensors > kMaxTensors)
    fail("tensor count " + num(n_tensors) + " exceeds the limit of " + num(kMaxTensors));
  if (n_kv > kMaxMetadata)
    fail("metadata count " + num(n_kv) + " exceeds the limit of " + num(kMaxMetadata));
  // smallest entries: key (8 + 1) + type (4) + a one-byte value; name (8 + 1) + n_dims (4) +
  // one dimension (8) + type (4) + offset (8)
  const uint64_t least_kv = 14, least_tensor = 33;
  if (n_kv * least_kv + n_tensors * least_tensor > remaining())  // both products < 2^60
    fail("truncated: " + num(n_kv) + " metadata entries and " + num(n_tensors) +
         " tensors cannot fit in the " + num(remaining()) + " bytes after the header");

  f.metadata.reserve(n_kv);
  std::unordered_set<std::string_view> keys;
  for (uint64_t i = 0; i < n_kv; ++i) {
    where_ = "metadata entry " + num(i);
    Value k = string("key", kMaxKeyLength);
    if (k.length == 0) fail("empty key");
    std::string_view key(reinterpret_cast<const char*>(data_ + k.offset), k.length);
    where_ += " ('" + std::string(key) + "')";
    if (!keys.insert(key).second) fail("duplicate key");
    uint32_t type = get<uint32_t>("value type");
    if (type >= kNumValueTypes) fail("unknown value type " + num(type));
    Value v = value(type, 0);
    if (key == "general.alignment") {
      if (type != kUint32)
        fail(std::string("general.alignment must be a uint32, not ") + value_type_name(type));
      if (v.bits == 0 || (v.bits & (v.bits - 1)) || v.bits > kMaxAlignment)
        fail("general.alignment " + num(v.bits) + " is not a power of two up to " +
             num(kMaxAlignment));
      f.alignment = v.bits;
    }
    f.metadata.push_back({std::string(key), v});
  }

  where_ = "tensor infos";
  if (n_tensors > remaining() / least_tensor)
    fail("truncated: " + num(n_tensors) + " tensor infos cannot fit in the " +
         num(remaining()) + " bytes left after the metadata");
  f.tensors.reserve(n_tensors);
  std::unordered_set<std::string_view> names;
  for (uint64_t i = 0; i < n_tensors; ++i) {
    where_ = "tensor " + num(i);
    Value nm = string("tensor name", kMaxTensorNameLength);
    if (nm.length == 0) fail("empty tensor name");
    std::string_view name(reinterpret_cast<const char*>(data_ + nm.offset), nm.length);
    where_ += " ('" + std::string(name) + "')";
    if (!names.insert(name).second) fail("duplicate tensor name");
    Tensor t;
    t.name = std::string(name);
    t.n_dims = get<uint32_t>("n_dims");
    if (t.n_dims == 0 || t.n_dims > kMaxDims)
      fail("n_dims " + num(t.n_dims) + " is not between 1 and " + num(kMaxDims));
    uint64_t n = 1;
    for (uint32_t d = 0; d < t.n_dims; ++d) {
      uint64_t ne = get<uint64_t>("dimension");
      if (ne == 0) fail("dimension " + num(d) + " is 0");
      if (ne > uint64_t(INT64_MAX))
        fail("dimension " + num(d) + " is " + num(ne) + " (negative as int64)");
      if (__builtin_mul_overflow(n, ne, &n) || n > uint64_t(INT64_MAX))
        fail("the dimensions multiply to more than 2^63 - 1 elements");
      t.ne[d] = int64_t(ne);
    }
    t.n_elements = n;
    t.type = get<uint32_t>("ggml type");
    const GgmlType* g = find_ggml_type(t.type);
    if (!g) fail("unknown or removed ggml type " + num(t.type));
    if (uint64_t(t.ne[0]) % g->block_size)
      fail("dimension 0 (" + num(t.ne[0]) + ") is not a multiple of " + g->name +
           "'s block size " + num(g->block_size));
    if (__builtin_mul_overflow(n / g->block_size, uint64_t(g->type_size), &t.nbytes))
      fail("the data size overflows 64 bits");
    t.offset = get<uint64_t>("data offset");  // relative to the data section for now
    f.tensors.push_back(std::move(t));
  }

  // alignment <= 2^20 and pos <= size, so this cannot wrap
  f.data_offset = (pos_ + f.alignment - 1) / f.alignment * f.alignment;
  where_ = "tensor data";
  if (!f.tensors.empty() && f.data_offset > size_)
    fail("truncated: the tensor data would start at offset " + num(f.data_offset) +
         ", past the end of the file (" + num(size_) + " bytes)");
  const uint64_t available = f.tensors.empty() ? 0 : size_ - f.data_offset;
  for (size_t i = 0; i < f.tensors.size(); ++i) {
    Tensor& t = f.tensors[i];
    where_ = "tensor " + num(i) + " ('" + t.name + "')";
    if (t.offset % f.alignment)
      fail("data offset " + num(t.offset) + " is not a multiple of the alignment " +
           num(f.alignment));
    if (t.offset > available || t.nbytes > available - t.offset)
      fail("data (" + num(t.nbytes) + " bytes at offset " + num(t.offset) +
           " of the data section, which starts at " + num(f.data_offset) +
           ") lies outside the file (" + num(size_) + " bytes)");
    t.offset += f.data_offset;
  }
  // no two tensors may share bytes: a writer bug that would alias weights silently
  std::vector<const Tensor*> order;
  order.reserve(f.tensors.size());
  for (const Tensor& t : f.tensors) order.push_back(&t);
  std::sort(order.begin(), order.end(),
            [](const Tensor* a, const Tensor* b) { return a->offset < b->offset; });
  for (size_t i = 1; i < order.size(); ++i)
    if (order[i - 1]->offset + order[i - 1]->nbytes > order[i]->offset) {
      where_ = "tensor data";
      fail("the data of tensors '" + order[i - 1]->name + "' and '" + order[i]->name +
           "' overlap");
    }
  return f;
}

std::vector<Value> Parser::items(uint32_t elem_type, uint64_t count) {
  where_ = "array";
  if (elem_type != kString && elem_type != kArray)
    fail("array_items reads arrays of strings or of arrays only");
  if (pos_ > size_) fail("offset " + num(pos_) + " lies outside the file");
  uint64_t least = elem_type == kString ? 8 : 12;
  if (count > remaining() / least) fail("truncated: " + num(count) + " elements cannot fit");
  std::vector<Value> out;
  out.reserve(count);
  path_.push_back(0);
  for (uint64_t i = 0; i < count; ++i) {
    path_.back() = i;
    out.push_back(value(elem_type, 1));
  }
  return out;
}

}  // namespace

const char* value_type_name(uint32_t type) {
  static const char* names[kNumValueTypes] = {"uint8", "int8", "uint16", "int16", "uint32",
                                              "int32", "float32", "bool", "string", "array",
                                              "uint64", "int64", "float64"};
  return type < kNumValueTypes ? names[type] : "?";
}

uint64_t value_type_size(uint32_t type) {
  static const uint64_t sizes[kNumValueTypes] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
  return type < kNumValueTypes ? sizes[type] : 0;
}

// ggml's type table (ggml.c type_traits: blck_size, type_size). Ids 4, 5 (Q4_2, Q4_3),
// 31-33 (Q4_0_4_4 ...) and 36-38 (IQ4_NL_4_4 ...) were removed from ggml and are rejected.
const std::vector<GgmlType>& ggml_types() {
  static const std::vector<GgmlType> types = {
      {0, "F32", 1, 4},          {1, "F16", 1, 2},          {2, "Q4_0", 32, 18},
      {3, "Q4_1", 32, 20},       {6, "Q5_0", 32, 22},       {7, "Q5_1", 32, 24},
      {8, "Q8_0", 32, 34},       {9, "Q8_1", 32, 36},       {10, "Q2_K", 256, 84},
      {11, "Q3_K", 256, 110},    {12, "Q4_K", 256, 144},    {13, "Q5_K", 256, 176},
      {14, "Q6_K", 256, 210},    {15, "Q8_K", 256, 292},    {16, "IQ2_XXS", 256, 66},
      {17, "IQ2_XS", 256, 74},   {18, "IQ3_XXS", 256, 98},  {19, "IQ1_S", 256, 50},
      {20, "IQ4_NL", 32, 18},    {21, "IQ3_S", 256, 110},   {22, "IQ2_S", 256, 82},
      {23, "IQ4_XS", 256, 136},  {24, "I8", 1, 1},          {25, "I16", 1, 2},
      {26, "I32", 1, 4},         {27, "I64", 1, 8},         {28, "F64", 1, 8},
      {29, "IQ1_M", 256, 56},    {30, "BF16", 1, 2},        {34, "TQ1_0", 256, 54},
      {35, "TQ2_0", 256, 66},    {39, "MXFP4", 32, 17},
  };
  return types;
}

const GgmlType* find_ggml_type(uint32_t id) {
  for (const GgmlType& t : ggml_types())
    if (t.id == id) return &t;
  return nullptr;
}

File parse(const uint8_t* data, uint64_t size) { return Parser(data, size).parse(); }

std::vector<Value> array_items(const uint8_t* data, uint64_t size, uint32_t elem_type,
                               uint64_t count, uint64_t offset) {
  return Parser(data, size, offset).items(elem_type, count);
}

}  // namespace gguf
}  // namespace kg
