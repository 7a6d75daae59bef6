// kernelgpt._C.BPE: the tokenizer core. python/kernelgpt/tokenizer.py wraps it with
// tiktoken's API and policy (special-token checks, lone surrogates); this file converts
// arguments, releases the GIL around the work and builds the results.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <atomic>
#include <functional>
#include <thread>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "bindings/args.h"
#include "bindings/registry.h"
#include "bpe/encoder.h"
#include "bpe/spm.h"
#include "bpe/trainer.h"
#include "common/threading.h"

namespace kg {
namespace bind {

using bpe::Encoder;
using bpe::Pattern;

namespace {

Pattern parse_scanner(const std::string& name) {
  if (name == "cl100k") return Pattern::cl100k;
  if (name == "gpt2") return Pattern::gpt2;
  if (name == "whitespace") return Pattern::whitespace;
  if (name == "smollm") return Pattern::smollm;
  if (name == "llama3") return Pattern::llama3;
  if (name == "qwen2") return Pattern::qwen2;
  if (name == "o200k") return Pattern::o200k;
  value_error("unknown pre-tokenizer '" + name +
              "', expected 'cl100k', 'o200k', 'gpt2', 'whitespace', 'smollm', 'llama3' or 'qwen2', "
              "or a list of regular expressions");
}

// A scanner's name (str), or a list of regular expressions applied one after the other.
bpe::Splitter parse_pattern(py::handle spec) {
  if (py::isinstance<py::str>(spec)) return bpe::Splitter(parse_scanner(spec.cast<std::string>()));
  if (!py::isinstance<py::list>(spec) && !py::isinstance<py::tuple>(spec))
    type_error("pattern must be a scanner name (str) or a list of regular expressions");
  std::vector<std::string> patterns;
  for (py::handle p : spec) {
    if (!py::isinstance<py::str>(p)) type_error("every regular expression must be a str");
    patterns.push_back(p.cast<std::string>());
  }
  try {
    return bpe::Splitter(std::make_shared<const bpe::RegexPipeline>(patterns));
  } catch (const bpe::RegexError& e) {
    value_error(e.what());
  }
}


const char* pattern_name(Pattern p) {
  switch (p) {
    case Pattern::cl100k: return "cl100k";
    case Pattern::gpt2: return "gpt2";
    case Pattern::whitespace: return "whitespace";
    case Pattern::smollm: return "smollm";
    case Pattern::llama3: return "llama3";
    case Pattern::qwen2: return "qwen2";
    case Pattern::regex: return "regex";
    case Pattern::o200k: return "o200k";
  }
  return "?";
}

py::object pattern_object(const bpe::Splitter& s) {
  if (s.regex) return py::cast(s.regex->patterns());
  return py::str(pattern_name(s.pattern));
}

struct Text {
  const uint8_t* data;
  size_t size;
};

// The UTF-8 bytes of a str (cached inside the str object by CPython, as tiktoken does).
// A str holding lone surrogates raises UnicodeEncodeError, which tokenizer.py catches.
Text utf8_of(py::handle obj, const char* what) {
  if (!PyUnicode_Check(obj.ptr()))
    type_error(std::string(what) + " must be a str, got " + Py_TYPE(obj.ptr())->tp_name);
  Py_ssize_t size;
  const char* data = PyUnicode_AsUTF8AndSize(obj.ptr(), &size);
  if (!data) throw py::error_already_set();
  return {reinterpret_cast<const uint8_t*>(data), static_cast<size_t>(size)};
}

Text bytes_of(py::handle obj, const char* what) {
  if (!PyBytes_Check(obj.ptr()))
    type_error(std::string(what) + " must be bytes, got " + Py_TYPE(obj.ptr())->tp_name);
  return {reinterpret_cast<const uint8_t*>(PyBytes_AS_STRING(obj.ptr())),
          static_cast<size_t>(PyBytes_GET_SIZE(obj.ptr()))};
}

[[noreturn]] void overflow() {
  PyErr_SetString(PyExc_OverflowError, "out of range integral type conversion attempted");
  throw py::error_already_set();
}

uint32_t id_of(PyObject* item) {
  PyObject* index = PyNumber_Index(item);  // int, bool, numpy integers; TypeError otherwise
  if (!index) throw py::error_already_set();
  int overflowed = 0;
  long long v = PyLong_AsLongLongAndOverflow(index, &overflowed);
  Py_DECREF(index);
  if (overflowed || v < 0 || v > 0xFFFFFFFFll) overflow();
  return static_cast<uint32_t>(v);
}

// A sequence of token ids as uint32 (tiktoken's rules: a str is refused, negative or
// >= 2**32 values raise OverflowError, non-integers TypeError).
std::vector<uint32_t> ids_of(py::handle obj) {
  std::vector<uint32_t> ids;
  PyObject* o = obj.ptr();
  if (PyUnicode_Check(o) || PyBytes_Check(o) || PyByteArray_Check(o))
    type_error(std::string("tokens must be a sequence of int, got ") + Py_TYPE(o)->tp_name);
  if (py::isinstance<py::array>(obj)) {
    py::array a = py::reinterpret_borrow<py::array>(obj);
    char kind = a.dtype().kind();
    if (kind != 'i' && kind != 'u' && kind != 'b')
      type_error("tokens must hold integers, got a numpy array of dtype " +
                 std::string(py::str(a.dtype())));
    // uint64 values >= 2**63 wrap to negative int64 here and are refused below as well.
    py::array_t<int64_t, py::array::c_style | py::array::forcecast> v(a.reshape({-1}));
    ids.resize(v.size());
    const int64_t* d = v.data();
    for (py::ssize_t i = 0; i < v.size(); ++i) {
      if (d[i] < 0 || d[i] > 0xFFFFFFFFll) overflow();
      ids[i] = static_cast<uint32_t>(d[i]);
    }
    return ids;
  }
  if (!PySequence_Check(o))
    type_error(std::string("'") + Py_TYPE(o)->tp_name + "' is not an instance of 'Sequence'");
  PyObject* seq = PySequence_Fast(o, "tokens must be a sequence of int");
  if (!seq) throw py::error_already_set();
  py::object hold = py::reinterpret_steal<py::object>(seq);
  Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
  PyObject** items = PySequence_Fast_ITEMS(seq);
  ids.resize(n);
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* it = items[i];
#if PY_VERSION_HEX < 0x030C0000
    // CPython <= 3.11 stores small ints as one 30-bit digit: read it directly.
    if (PyLong_CheckExact(it) && Py_SIZE(it) >= 0 && Py_SIZE(it) <= 1) {
      ids[i] = Py_SIZE(it) ? static_cast<uint32_t>(reinterpret_cast<PyLongObject*>(it)->ob_digit[0]) : 0;
      continue;
    }
#endif
    if (PyLong_CheckExact(it)) {
      int overflowed = 0;
      long long v = PyLong_AsLongLongAndOverflow(it, &overflowed);
      if (overflowed || v < 0 || v > 0xFFFFFFFFll) overflow();
      ids[i] = static_cast<uint32_t>(v);
    } else {
      ids[i] = id_of(it);
    }
  }
  return ids;
}

[[noreturn]] void invalid_token(uint32_t id) {
  PyErr_SetObject(PyExc_KeyError,
                  py::str("Invalid token for decoding: " + std::to_string(id)).ptr());
  throw py::error_already_set();
}

int64_t base64_value(uint8_t c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

bool base64_decode(const uint8_t* s, size_t n, std::string& out) {
  out.clear();
  if (n % 4) return false;
  for (size_t i = 0; i < n; i += 4) {
    int64_t v[4];
    int pad = 0;
    for (int k = 0; k < 4; ++k) {
      if (s[i + k] == '=' && i + 4 == n && k >= 2) {
        v[k] = 0;
        ++pad;
      } else {
        if (pad) return false;
        v[k] = base64_value(s[i + k]);
        if (v[k] < 0) return false;
      }
    }
    uint32_t w = static_cast<uint32_t>(v[0] << 18 | v[1] << 12 | v[2] << 6 | v[3]);
    out += static_cast<char>(w >> 16);
    if (pad < 2) out += static_cast<char>(w >> 8 & 0xFF);
    if (pad < 1) out += static_cast<char>(w & 0xFF);
  }
  return true;
}

std::string base64_encode(const uint8_t* s, size_t n) {
  static const char* abc = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  for (size_t i = 0; i < n; i += 3) {
    uint32_t w = uint32_t(s[i]) << 16 | (i + 1 < n ? uint32_t(s[i + 1]) << 8 : 0) |
                 (i + 2 < n ? s[i + 2] : 0);
    out += abc[w >> 18];
    out += abc[w >> 12 & 63];
    out += i + 1 < n ? abc[w >> 6 & 63] : '=';
    out += i + 2 < n ? abc[w & 63] : '=';
  }
  return out;
}

// special_tokens, added_tokens (always matched) and decode_only tokens (never matched), each a
// dict {str: id} or None.
std::vector<bpe::SpecialToken> specials_of(py::handle obj, py::handle added = py::none(),
                                           py::handle decode_only = py::none()) {
  std::vector<bpe::SpecialToken> out;
  for (py::handle d : {obj, added, decode_only}) {
    if (d.is_none()) continue;
    const bool always = d.ptr() == added.ptr();
    const bool never = d.ptr() == decode_only.ptr();
    if (!py::isinstance<py::dict>(d))
      type_error(always ? "added_tokens must be a dict {str: int}"
                 : never ? "decode_only must be a dict {str: int}"
                         : "special_tokens must be a dict {str: int}");
    for (auto kv : py::reinterpret_borrow<py::dict>(d)) {
      if (!py::isinstance<py::str>(kv.first)) type_error("special token names must be str");
      Text t = utf8_of(kv.first, "special token");
      out.push_back({std::string(reinterpret_cast<const char*>(t.data), t.size), id_of(kv.second.ptr()),
                     always, never});
    }
  }
  // A fixed order (by id; dict order among names of one id, the last of which decodes).
  std::stable_sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.id < b.id; });
  return out;
}

// Which of `tokens` are in `allowed` (a Python set of strings, or None: none), one flag each.
std::vector<uint8_t> allowed_flags_of(const std::vector<bpe::SpecialToken>& tokens,
                                      py::handle allowed) {
  std::vector<uint8_t> flags(tokens.size(), 0);
  if (allowed.is_none()) return flags;
  for (size_t k = 0; k < flags.size(); ++k)
    flags[k] = PySequence_Contains(allowed.ptr(), py::str(tokens[k].text).ptr()) == 1;
  if (PyErr_Occurred()) throw py::error_already_set();
  return flags;
}

// The tokenizer object Python sees: the immutable core plus cached Python ints for the ids
// (building result lists from cached ints is several times faster than creating new ones).
class PyBPE {
 public:
  PyBPE(bpe::Vocab vocab, std::vector<bpe::SpecialToken> specials, bpe::Splitter pattern,
        bool skip_unknown_bytes)
      : core_(std::make_shared<Encoder>(std::move(vocab), std::move(specials), pattern,
                                        skip_unknown_bytes)) {}
  PyBPE(const PyBPE&) = delete;
  PyBPE& operator=(const PyBPE&) = delete;
  // Python deallocates the object with the GIL held, so the cached ints can be released.
  ~PyBPE() {
    for (PyObject* o : ints_) Py_XDECREF(o);
  }

  static std::shared_ptr<PyBPE> from_tiktoken(py::handle data_obj, py::handle specials,
                                              py::handle pattern,
                                              bool skip_unknown_bytes, py::handle added,
                                              py::handle decode_only) {
    Text data = bytes_of(data_obj, "data");
    bpe::Splitter p = parse_pattern(pattern);
    auto sp = specials_of(specials, added, decode_only);
    bpe::Vocab vocab;
    {
      py::gil_scoped_release release;
      std::string token, error;
      size_t line_no = 0;
      for (size_t i = 0; i < data.size && error.empty();) {
        size_t e = i;
        while (e < data.size && data.data[e] != '\n') ++e;
        ++line_no;
        size_t end = e;
        if (end > i && data.data[end - 1] == '\r') --end;
        if (end > i) {
          size_t sp_at = i;
          while (sp_at < end && data.data[sp_at] != ' ') ++sp_at;
          size_t r = sp_at + 1;
          uint64_t rank = 0;
          bool ok = sp_at < end && r < end;
          for (size_t k = r; ok && k < end; ++k) {
            uint8_t c = data.data[k];
            if (c < '0' || c > '9') ok = false;
            rank = rank * 10 + (c - '0');
            if (rank >= 0xFFFFFFFFull) ok = false;
          }
          if (ok) ok = base64_decode(data.data + i, sp_at - i, token);
          if (!ok)
            error = "line " + std::to_string(line_no) +
                    " is not '<base64 token> <rank>': " +
                    std::string(reinterpret_cast<const char*>(data.data + i),
                                std::min<size_t>(end - i, 80));
          else
            vocab.add(reinterpret_cast<const uint8_t*>(token.data()), token.size(),
                      static_cast<uint32_t>(rank));
        }
        i = e + 1;
      }
      if (!error.empty()) throw std::invalid_argument(error);
      vocab.finalize();
    }
    return std::make_shared<PyBPE>(std::move(vocab), std::move(sp), p, skip_unknown_bytes);
  }

  static std::shared_ptr<PyBPE> from_ranks(py::handle ranks, py::handle specials,
                                           py::handle pattern,
                                           bool skip_unknown_bytes, py::handle added,
                                           py::handle decode_only) {
    if (!py::isinstance<py::dict>(ranks)) type_error("mergeable_ranks must be a dict {bytes: int}");
    bpe::Splitter p = parse_pattern(pattern);
    bpe::Vocab vocab;
    for (auto kv : py::reinterpret_borrow<py::dict>(ranks)) {
      Text t = bytes_of(kv.first, "mergeable token");
      vocab.add(t.data, t.size, id_of(kv.second.ptr()));
    }
    auto sp = specials_of(specials, added, decode_only);
    vocab.finalize();
    return std::make_shared<PyBPE>(std::move(vocab), std::move(sp), p, skip_unknown_bytes);
  }

  const Encoder& core() const { return *core_; }
  void set_cache(bool on) { core_->set_cache(on); }

  // Flags for Encoder::encode from a Python set of special-token strings.
  std::vector<uint8_t> allowed_flags(py::handle allowed) const {
    return allowed_flags_of(core_->specials(), allowed);
  }

  std::vector<uint32_t> encode_ids(py::handle text, py::handle allowed) const {
    Text t = utf8_of(text, "text");
    std::vector<uint8_t> flags = allowed_flags(allowed);
    std::vector<uint32_t> ids;
    {
      py::gil_scoped_release release;
      ids.reserve(t.size / 4 + 16);
      core_->encode(t.data, t.size, flags, ids);
    }
    return ids;
  }

  py::list to_list(const std::vector<uint32_t>& ids) {
    ensure_ints();
    PyObject* list = PyList_New(static_cast<Py_ssize_t>(ids.size()));
    if (!list) throw py::error_already_set();
    for (size_t i = 0; i < ids.size(); ++i) {
      PyObject* v = ints_[ids[i]];
      Py_INCREF(v);
      PyList_SET_ITEM(list, i, v);
    }
    return py::reinterpret_steal<py::list>(list);
  }

  py::list encode(py::handle text, py::handle allowed) { return to_list(encode_ids(text, allowed)); }

  py::array encode_to_numpy(py::handle text, py::handle allowed) {
    std::vector<uint32_t> ids = encode_ids(text, allowed);
    py::array_t<uint32_t> out(static_cast<py::ssize_t>(ids.size()));
    std::copy(ids.begin(), ids.end(), out.mutable_data());
    return std::move(out);
  }

  size_t count(py::handle text, py::handle allowed) { return encode_ids(text, allowed).size(); }

  // The texts of a batch as UTF-8, and their encodings chunk by chunk on `num_threads`
  // threads (GIL released). Work is split by bytes, not texts: a text longer than
  // 2 * kBatchChunk bytes is cut at safe positions (bpe::next_safe_cut: every pattern splits a
  // chunk that ends there as it splits the whole text) when no special token is allowed (a
  // special token's string could straddle a cut), and the threads take the chunks of all
  // texts in order, so one long text keeps every thread busy. chunks[k] belongs to text
  // text_of[k]; the chunks of a text are consecutive and in order.
  static constexpr size_t kBatchChunk = 256 * 1024;
  struct BatchResult {
    std::vector<size_t> text_of;
    std::vector<std::vector<uint32_t>> chunks;
  };

  BatchResult encode_chunks(py::handle texts_obj, py::handle allowed, int num_threads) {
    if (num_threads < 1) value_error("num_threads must be at least 1, got " + std::to_string(num_threads));
    PyObject* seq = PySequence_Fast(texts_obj.ptr(), "text must be a list of str");
    if (!seq) throw py::error_already_set();
    py::object hold = py::reinterpret_steal<py::object>(seq);
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    std::vector<Text> texts(n);
    for (Py_ssize_t i = 0; i < n; ++i) texts[i] = utf8_of(PySequence_Fast_GET_ITEM(seq, i), "every text");
    std::vector<uint8_t> flags = allowed_flags(allowed);
    const bool specials = std::find(flags.begin(), flags.end(), 1) != flags.end() ||
                          core_->has_added_tokens();
    BatchResult r;
    py::gil_scoped_release release;
    struct Range { size_t begin, end; };
    std::vector<Range> ranges;
    for (Py_ssize_t i = 0; i < n; ++i) {
      const Text& t = texts[i];
      size_t b = 0;
      while (!specials && t.size - b > 2 * kBatchChunk) {
        size_t cut = core_->pattern().safe_cut(t.data, b + kBatchChunk, t.size);
        if (cut >= t.size) break;
        ranges.push_back({b, cut});
        r.text_of.push_back(i);
        b = cut;
      }
      ranges.push_back({b, t.size});
      r.text_of.push_back(i);
    }
    const size_t m = ranges.size();
    r.chunks.resize(m);
    int threads = static_cast<int>(std::min<size_t>(num_threads, std::max<size_t>(m, 1)));
    std::atomic<size_t> next{0};
    std::vector<std::string> errors(threads);
    // OpenMP's worker threads persist between calls, and with them each thread's merge
    // cache (fresh std::threads would start cold every call).
    kg::parallel_region(threads, [&](int t, int) {
      try {
        for (size_t k; (k = next.fetch_add(1)) < m;) {
          const Text& text = texts[r.text_of[k]];
          core_->encode(text.data + ranges[k].begin, ranges[k].end - ranges[k].begin, flags,
                        r.chunks[k]);
        }
      } catch (const std::exception& e) {
        errors[t] = e.what();
        next.store(m);
      }
    });
    for (const std::string& e : errors)
      if (!e.empty()) throw std::invalid_argument(e);
    return r;
  }

  py::list encode_batch(py::handle texts_obj, py::handle allowed, int num_threads) {
    BatchResult r = encode_chunks(texts_obj, allowed, num_threads);
    py::list out(py::len(texts_obj));
    std::vector<uint32_t> joined;
    for (size_t k = 0; k < r.chunks.size();) {
      size_t i = r.text_of[k], e = k + 1;
      while (e < r.chunks.size() && r.text_of[e] == i) ++e;
      if (e == k + 1) {
        out[i] = to_list(r.chunks[k]);
      } else {
        joined.clear();
        for (size_t j = k; j < e; ++j) joined.insert(joined.end(), r.chunks[j].begin(), r.chunks[j].end());
        out[i] = to_list(joined);
      }
      for (size_t j = k; j < e; ++j) std::vector<uint32_t>().swap(r.chunks[j]);
      k = e;
    }
    return out;
  }

  // The batch as one uint32 array of every text's ids, one after the other, and uint64
  // offsets [len(texts) + 1]: text i's ids are ids[offsets[i]:offsets[i + 1]]. No Python
  // object per text or token.
  py::tuple encode_batch_flat(py::handle texts_obj, py::handle allowed, int num_threads) {
    BatchResult r = encode_chunks(texts_obj, allowed, num_threads);
    const size_t n = static_cast<size_t>(py::len(texts_obj));
    size_t total = 0;
    for (const auto& c : r.chunks) total += c.size();
    py::array_t<uint32_t> ids(static_cast<py::ssize_t>(total));
    py::array_t<uint64_t> offsets(static_cast<py::ssize_t>(n + 1));
    uint32_t* dst = ids.mutable_data();
    uint64_t* off = offsets.mutable_data();
    {
      py::gil_scoped_release release;
      size_t at = 0, k = 0;
      for (size_t i = 0; i < n; ++i) {
        off[i] = at;
        for (; k < r.chunks.size() && r.text_of[k] == i; ++k) {
          std::copy(r.chunks[k].begin(), r.chunks[k].end(), dst + at);
          at += r.chunks[k].size();
        }
      }
      off[n] = at;
    }
    return py::make_tuple(ids, offsets);
  }

  // The first occurrence of any of `strings` in text: (position in bytes, the string), or None.
  py::object find_special(py::handle text, const std::vector<std::string>& strings) const {
    Text t = utf8_of(text, "text");
    size_t which = 0, pos;
    {
      py::gil_scoped_release release;
      pos = Encoder::find_first(t.data, t.size, 0, strings, &which);
    }
    if (which == strings.size()) return py::none();
    return py::make_tuple(pos, py::str(strings[which]));
  }

  py::list encode_single_piece(py::handle piece, const std::string& algorithm) {
    Text t = bytes_of(piece, "piece");
    bpe::MergeAlgorithm a = algorithm == "scan" ? bpe::MergeAlgorithm::scan
                          : algorithm == "heap" ? bpe::MergeAlgorithm::heap
                          : algorithm == "stack_heap" ? bpe::MergeAlgorithm::stack_heap
                          : algorithm == "auto" ? bpe::MergeAlgorithm::automatic
                                                : (value_error("algorithm must be 'auto', 'scan', 'stack_heap' or 'heap', got '" + algorithm + "'"), bpe::MergeAlgorithm::automatic);
    std::vector<uint32_t> ids;
    {
      py::gil_scoped_release release;
      core_->encode_piece(t.data, t.size, t.size, ids, a);
    }
    return to_list(ids);
  }

  // The pieces the pattern splits text into (for tests and for showing the split).
  py::list split(py::handle text) const {
    Text t = utf8_of(text, "text");
    std::vector<std::pair<size_t, size_t>> spans;
    {
      py::gil_scoped_release release;
      core_->pattern().for_each_piece(t.data, t.size,
                                      [&](size_t b, size_t e) { spans.emplace_back(b, e); });
    }
    py::list out(spans.size());
    for (size_t i = 0; i < spans.size(); ++i)
      out[i] = py::reinterpret_steal<py::str>(PyUnicode_DecodeUTF8(
          reinterpret_cast<const char*>(t.data + spans[i].first),
          static_cast<Py_ssize_t>(spans[i].second - spans[i].first), "surrogateescape"));
    return out;
  }

  // Calls make(data, size) with the decoded bytes of `tokens` (KeyError for an unknown id).
  template <class Make>
  py::object decode_with(py::handle tokens, Make make) const {
    std::vector<uint32_t> ids = ids_of(tokens);
    size_t size = 0, bad = 0;
    std::unique_ptr<uint8_t[]> buf;
    {
      py::gil_scoped_release release;
      if (core_->decoded_size(ids.data(), ids.size(), &size, &bad)) {
        buf.reset(new uint8_t[size + Encoder::kDecodeSlack]);
        core_->decode_into(ids.data(), ids.size(), buf.get());
      }
    }
    if (!buf) invalid_token(ids[bad]);
    PyObject* out = make(reinterpret_cast<const char*>(buf.get()), static_cast<Py_ssize_t>(size));
    if (!out) throw py::error_already_set();
    return py::reinterpret_steal<py::object>(out);
  }

  py::object decode_bytes(py::handle tokens) const {
    return decode_with(tokens, [](const char* d, Py_ssize_t n) { return PyBytes_FromStringAndSize(d, n); });
  }

  py::object decode(py::handle tokens, const std::string& errors) const {
    return decode_with(tokens, [&](const char* d, Py_ssize_t n) {
      return PyUnicode_DecodeUTF8(d, n, errors.c_str());
    });
  }

  py::bytes decode_single_token_bytes(py::handle token) const {
    uint32_t id = id_of(token.ptr());
    const uint8_t* d;
    size_t n;
    if (!core_->token_bytes(id, &d, &n)) {
      PyErr_SetObject(PyExc_KeyError, py::str(std::to_string(id)).ptr());
      throw py::error_already_set();
    }
    return py::bytes(reinterpret_cast<const char*>(d), n);
  }

  py::list decode_tokens_bytes(py::handle tokens) const {
    std::vector<uint32_t> ids = ids_of(tokens);
    py::list out(ids.size());
    for (size_t i = 0; i < ids.size(); ++i) {
      const uint8_t* d;
      size_t n;
      if (!core_->token_bytes(ids[i], &d, &n)) {
        PyErr_SetObject(PyExc_KeyError, py::str(std::to_string(ids[i])).ptr());
        throw py::error_already_set();
      }
      out[i] = py::bytes(reinterpret_cast<const char*>(d), n);
    }
    return out;
  }

  // Mergeable tokens first, then special tokens (encode_single_token encodes both).
  uint32_t encode_single_token(py::handle token) const {
    Text t = bytes_of(token, "token");
    uint32_t id = core_->vocab().find(t.data, t.size);
    if (id != bpe::kNoToken) return id;
    for (const auto& s : core_->specials())
      if (s.text.size() == t.size && std::memcmp(s.text.data(), t.data, t.size) == 0) return s.id;
    PyErr_SetObject(PyExc_KeyError, token.ptr());
    throw py::error_already_set();
  }

  // Mergeable token byte strings, sorted (tiktoken's token_byte_values).
  py::list token_byte_values() const {
    const bpe::Vocab& v = core_->vocab();
    std::vector<std::string> all;
    for (uint32_t id = 0; v.max_id() != bpe::kNoToken && id <= v.max_id(); ++id)
      if (v.has(id)) all.emplace_back(reinterpret_cast<const char*>(v.data(id)), v.size_of(id));
    std::sort(all.begin(), all.end());
    py::list out(all.size());
    for (size_t i = 0; i < all.size(); ++i) out[i] = py::bytes(all[i]);
    return out;
  }

  // {bytes: rank} of the mergeable tokens (what tiktoken calls mergeable_ranks).
  py::dict mergeable_ranks() const {
    const bpe::Vocab& v = core_->vocab();
    py::dict out;
    for (uint32_t id = 0; v.max_id() != bpe::kNoToken && id <= v.max_id(); ++id)
      if (v.has(id)) out[py::bytes(reinterpret_cast<const char*>(v.data(id)), v.size_of(id))] = py::int_(id);
    return out;
  }

  // The .tiktoken file format: "<base64 of the token bytes> <rank>" per line, by rank.
  py::bytes to_tiktoken() const {
    const bpe::Vocab& v = core_->vocab();
    std::string out;
    for (uint32_t id = 0; v.max_id() != bpe::kNoToken && id <= v.max_id(); ++id) {
      if (!v.has(id)) continue;
      out += base64_encode(v.data(id), v.size_of(id));
      out += ' ';
      out += std::to_string(id);
      out += '\n';
    }
    return py::bytes(out);
  }

  py::dict special_tokens() const {
    py::dict out;
    for (const auto& s : core_->specials())
      if (!s.always && !s.never) out[py::str(s.text)] = py::int_(s.id);
    return out;
  }
  py::dict added_tokens() const {
    py::dict out;
    for (const auto& s : core_->specials())
      if (s.always) out[py::str(s.text)] = py::int_(s.id);
    return out;
  }
  py::dict decode_only_tokens() const {
    py::dict out;
    for (const auto& s : core_->specials())
      if (s.never) out[py::str(s.text)] = py::int_(s.id);
    return out;
  }

 private:
  void ensure_ints() {
    if (!ints_.empty()) return;
    size_t n = size_t(core_->max_token_value()) + 1;
    std::vector<PyObject*> ints(n);
    for (size_t i = 0; i < n; ++i) {
      ints[i] = PyLong_FromUnsignedLong(static_cast<unsigned long>(i));
      if (!ints[i]) throw py::error_already_set();
    }
    ints_.swap(ints);
  }

  std::shared_ptr<Encoder> core_;
  std::vector<PyObject*> ints_;  // owned references; the object lives as long as the module
};

py::dict train(py::list inputs, py::list is_path, size_t vocab_size, py::handle pattern,
               int num_threads) {
  if (inputs.size() != is_path.size()) value_error("train: inputs and is_path differ in length");
  if (num_threads < 1) value_error("num_threads must be at least 1, got " + std::to_string(num_threads));
  bpe::Splitter p = parse_pattern(pattern);
  std::vector<bpe::TrainInput> in(inputs.size());
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (is_path[i].cast<bool>()) {
      in[i].path = inputs[i].cast<std::string>();
    } else if (PyBytes_Check(inputs[i].ptr())) {
      Text t = bytes_of(inputs[i], "input");
      in[i].data = t.data, in[i].size = t.size;
    } else {
      Text t = utf8_of(inputs[i], "every text");
      in[i].data = t.data, in[i].size = t.size;
    }
  }
  bpe::TrainResult r;
  {
    py::gil_scoped_release release;
    r = bpe::train(in, vocab_size, p, num_threads);
  }
  py::list merges(r.merges.size());
  for (size_t i = 0; i < r.merges.size(); ++i) {
    const auto& m = r.merges[i];
    merges[i] = py::make_tuple(m.left, m.right, m.id, m.count);
  }
  py::list tokens(r.tokens.size());
  for (size_t i = 0; i < r.tokens.size(); ++i) tokens[i] = py::bytes(r.tokens[i]);
  py::dict out;
  out["merges"] = merges;
  out["tokens"] = tokens;
  out["pieces"] = r.pieces;
  out["distinct_pieces"] = r.distinct_pieces;
  out["bytes"] = r.bytes;
  return out;
}

// kernelgpt._C.SPM: the SentencePiece BPE core (tokenizer/sentencepiece.py wraps it).
class PySPM {
 public:
  PySPM(const std::vector<std::string>& texts, std::vector<float> scores,
        std::vector<int> types, bool add_space_prefix, py::object unknown_id) {
    std::vector<uint8_t> t(types.size());
    for (size_t i = 0; i < types.size(); ++i) {
      if (types[i] < 1 || types[i] > 6)
        value_error("token " + std::to_string(i) + " has type " + std::to_string(types[i]) +
                    "; SentencePiece token types are 1 (normal) to 6 (byte)");
      t[i] = static_cast<uint8_t>(types[i]);
    }
    uint32_t unk = unknown_id.is_none() ? bpe::kNoToken : id_of(unknown_id.ptr());
    try {
      core_ = std::make_shared<bpe::SpmEncoder>(texts, std::move(scores), std::move(t),
                                                add_space_prefix, unk);
    } catch (const std::invalid_argument& e) {
      value_error(std::string("SentencePiece vocabulary: ") + e.what());
    }
  }

  std::vector<uint8_t> allowed_flags(py::handle allowed) const {
    return allowed_flags_of(core_->control_tokens(), allowed);
  }

  std::vector<uint32_t> encode(py::handle text, py::handle allowed) const {
    Text t = utf8_of(text, "text");
    std::vector<uint8_t> flags = allowed_flags(allowed);
    std::vector<uint32_t> ids;
    py::gil_scoped_release release;
    core_->encode(t.data, t.size, flags, ids);
    return ids;
  }

  std::vector<std::vector<uint32_t>> encode_batch(py::handle texts_obj, py::handle allowed,
                                                  int num_threads) const {
    if (num_threads < 1) value_error("num_threads must be at least 1");
    PyObject* seq = PySequence_Fast(texts_obj.ptr(), "texts must be a list of str");
    if (!seq) throw py::error_already_set();
    py::object hold = py::reinterpret_steal<py::object>(seq);
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    std::vector<Text> texts(n);
    for (Py_ssize_t i = 0; i < n; ++i) texts[i] = utf8_of(PySequence_Fast_GET_ITEM(seq, i), "every text");
    std::vector<uint8_t> flags = allowed_flags(allowed);
    std::vector<std::vector<uint32_t>> out(n);
    std::atomic<Py_ssize_t> next{0};
    std::vector<std::string> errors(num_threads);
    py::gil_scoped_release release;
    auto work = [&](int w) {
      try {
        for (Py_ssize_t i; (i = next.fetch_add(1)) < n;)
          core_->encode(texts[i].data, texts[i].size, flags, out[i]);
      } catch (const std::exception& e) {
        errors[w] = e.what();
        next.store(n);
      }
    };
    run_threads(std::min<int>(num_threads, std::max<Py_ssize_t>(n, 1)), work);
    for (const auto& e : errors)
      if (!e.empty()) throw std::invalid_argument(e);
    return out;
  }

  py::bytes decode_bytes(const std::vector<int64_t>& ids) const {
    std::string out;
    for (int64_t id : ids) {
      if (id < 0 || !core_->token_bytes(static_cast<uint32_t>(id), &out))
        throw py::key_error("token id " + std::to_string(id) + " is not in the vocabulary");
    }
    return py::bytes(out);
  }

  py::dict tokens_of(bool added) const {
    py::dict out;
    const auto& texts = core_->texts();
    const auto& types = core_->types();
    for (size_t i = 0; i < texts.size(); ++i) {
      bool want = added ? types[i] == bpe::SpmEncoder::kUserDefined
                        : types[i] == bpe::SpmEncoder::kControl && !texts[i].empty();
      if (want) out[py::str(texts[i])] = py::int_(i);
    }
    return out;
  }

  const bpe::SpmEncoder& core() const { return *core_; }

 private:
  static void run_threads(int count, const std::function<void(int)>& work) {
    std::vector<std::thread> threads;
    for (int w = 1; w < count; ++w) threads.emplace_back(work, w);
    work(0);
    for (auto& t : threads) t.join();
  }
  std::shared_ptr<bpe::SpmEncoder> core_;
};

}  // namespace

void register_bpe(py::module_& m) {
  py::class_<PySPM, std::shared_ptr<PySPM>>(m, "SPM", "SentencePiece BPE core (see kernelgpt.tokenizer.sentencepiece)")
      .def(py::init<const std::vector<std::string>&, std::vector<float>, std::vector<int>, bool,
                    py::object>(),
           py::arg("texts"), py::arg("scores"), py::arg("types"), py::arg("add_space_prefix"),
           py::arg("unknown_id") = py::none())
      .def("encode", &PySPM::encode, py::arg("text"), py::arg("allowed") = py::none())
      .def("encode_batch", &PySPM::encode_batch, py::arg("texts"), py::arg("allowed"),
           py::arg("num_threads"))
      .def("decode_bytes", &PySPM::decode_bytes, py::arg("tokens"))
      .def("special_tokens", [](const PySPM& s) { return s.tokens_of(false); })
      .def("added_tokens", [](const PySPM& s) { return s.tokens_of(true); })
      .def_property_readonly("n_vocab", [](const PySPM& s) { return s.core().size(); })
      .def_property_readonly("add_space_prefix", [](const PySPM& s) { return s.core().add_space_prefix(); })
      .def("__getstate_data__", [](const PySPM& s) {
        return py::make_tuple(s.core().texts(), s.core().scores(),
                              std::vector<int>(s.core().types().begin(), s.core().types().end()),
                              s.core().add_space_prefix(),
                              s.core().unknown_id() == bpe::kNoToken ? py::object(py::none())
                                                                     : py::object(py::int_(s.core().unknown_id())));
      });
  py::class_<PyBPE, std::shared_ptr<PyBPE>>(m, "BPE", "Byte-level BPE core (see kernelgpt.tokenizer)")
      .def_static("from_tiktoken", &PyBPE::from_tiktoken, py::arg("data"), py::arg("special_tokens"),
                  py::arg("pattern"), py::arg("skip_unknown_bytes") = false,
                  py::arg("added_tokens") = py::none(), py::arg("decode_only") = py::none())
      .def_static("from_ranks", &PyBPE::from_ranks, py::arg("mergeable_ranks"),
                  py::arg("special_tokens"), py::arg("pattern"), py::arg("skip_unknown_bytes") = false,
                  py::arg("added_tokens") = py::none(), py::arg("decode_only") = py::none())
      .def("encode", &PyBPE::encode, py::arg("text"), py::arg("allowed") = py::none())
      .def("encode_to_numpy", &PyBPE::encode_to_numpy, py::arg("text"), py::arg("allowed") = py::none())
      .def("count", &PyBPE::count, py::arg("text"), py::arg("allowed") = py::none())
      .def("encode_batch_flat", &PyBPE::encode_batch_flat, py::arg("texts"), py::arg("allowed"),
           py::arg("num_threads"))
      .def("encode_batch", &PyBPE::encode_batch, py::arg("texts"), py::arg("allowed"),
           py::arg("num_threads"))
      .def("find_special", &PyBPE::find_special, py::arg("text"), py::arg("strings"))
      .def("encode_single_piece", &PyBPE::encode_single_piece, py::arg("piece"),
           py::arg("algorithm") = "auto")
      .def("split", &PyBPE::split, py::arg("text"))
      .def("decode_bytes", &PyBPE::decode_bytes, py::arg("tokens"))
      .def("decode", &PyBPE::decode, py::arg("tokens"), py::arg("errors") = "replace")
      .def("decode_single_token_bytes", &PyBPE::decode_single_token_bytes, py::arg("token"))
      .def("decode_tokens_bytes", &PyBPE::decode_tokens_bytes, py::arg("tokens"))
      .def("encode_single_token", &PyBPE::encode_single_token, py::arg("token"))
      .def("token_byte_values", &PyBPE::token_byte_values)
      .def("mergeable_ranks", &PyBPE::mergeable_ranks)
      .def("to_tiktoken", &PyBPE::to_tiktoken)
      .def("special_tokens", &PyBPE::special_tokens)
      .def("added_tokens", &PyBPE::added_tokens)
      .def("decode_only_tokens", &PyBPE::decode_only_tokens)
      .def("_set_cache", [](PyBPE& b, bool on) { b.set_cache(on); }, py::arg("enabled"))
      .def_property_readonly("max_token_value", [](const PyBPE& b) { return b.core().max_token_value(); })
      .def_property_readonly("n_mergeable", [](const PyBPE& b) { return b.core().vocab().count(); })
      .def_property_readonly("pattern", [](const PyBPE& b) { return pattern_object(b.core().pattern()); })
      .def_property_readonly("skip_unknown_bytes", [](const PyBPE& b) { return b.core().skip_unknown_bytes(); });
  m.def("bpe_char_classes", [] {  // flags (1 letter, 2 number, 4 space) of every code point
    std::string out(0x110000, '\0');
    for (uint32_t cp = 0; cp < 0x110000; ++cp) out[cp] = static_cast<char>(bpe::char_class(cp));
    return py::bytes(out);
  });
  m.def("bpe_char_categories", [] {  // general category | 0x20 (white space) of every code point
    std::string out(0x110000, '\0');
    for (uint32_t cp = 0; cp < 0x110000; ++cp) out[cp] = static_cast<char>(bpe::category_flags(cp));
    return py::bytes(out);
  });
  m.def("bpe_train", &train, py::arg("inputs"), py::arg("is_path"), py::arg("vocab_size"),
        py::arg("pattern"), py::arg("num_threads"));
}

}  // namespace bind
}  // namespace kg
