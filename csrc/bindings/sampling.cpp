// _C.sample_token: python/kernelgpt/sampling.py's Sampler step in C++, step for step.
//
// Seeded generation must give the same tokens whether this or the Python sampler runs, so
// every step does what numpy does, in the same order and in float64: the repetition penalty
// once per distinct previous token, the division by the temperature, the shift by the largest
// finite value, exp, the normalisation by numpy's pairwise sum, top-k / top-p over a stable
// descending sort (ties: the lower id first), min-p, the renormalisation, and the inverse-CDF
// draw with the caller's uniform number u (Sampler draws it with rng.random()). exp is numpy's
// own: its SIMD exp differs from the C library's in the last bit for a few percent of inputs,
// and one bit can move a token across a top-p or draw boundary.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <vector>

#include "bindings/args.h"
#include "bindings/registry.h"

namespace kg {
namespace bind {

namespace {

const char* kSample = "sample_token";

// numpy's pairwise summation (add.reduce over a contiguous float64 array), bit for bit:
// 8 accumulators over blocks of up to 128 values, halves (multiples of 8) above that.
double pairwise_sum(const double* a, int64_t n) {
  if (n < 8) {
    double r = 0.0;
    for (int64_t i = 0; i < n; ++i) r += a[i];
    return r;
  }
  if (n <= 128) {
    double r[8];
    for (int j = 0; j < 8; ++j) r[j] = a[j];
    int64_t i = 8;
    for (; i < n - (n % 8); i += 8)
      for (int j = 0; j < 8; ++j) r[j] += a[i + j];
    double res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    for (; i < n; ++i) res += a[i];
    return res;
  }
  int64_t n2 = n / 2;
  n2 -= n2 % 8;
  return pairwise_sum(a, n2) + pairwise_sum(a + n2, n - n2);
}

// First index of the largest value (np.argmax).
template <class T>
int64_t argmax(const T* x, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i)
    if (x[i] > x[best]) best = i;
  return best;
}

int64_t int_arg(py::handle v, const char* what) {
  if (PyBool_Check(v.ptr()) || !PyIndex_Check(v.ptr()))
    type_error(std::string(kSample) + ": " + what + " must be an int, got " +
               std::string(py::str(py::type::handle_of(v).attr("__name__"))));
  py::object i = py::reinterpret_steal<py::object>(PyNumber_Index(v.ptr()));
  int overflow = 0;
  long long r = PyLong_AsLongLongAndOverflow(i.ptr(), &overflow);
  if (overflow) value_error(std::string(kSample) + ": " + what + " is out of range");
  return r;
}

// previous_tokens as int64 ids: an integer numpy array or a sequence of ints.
std::vector<int64_t> token_list(py::handle obj) {
  std::vector<int64_t> ids;
  if (py::isinstance<py::array>(obj)) {
    py::array a = py::reinterpret_borrow<py::array>(obj);
    char kind = a.dtype().kind();
    if (kind != 'i' && kind != 'u')
      type_error(std::string(kSample) + ": previous_tokens must hold integers, got " +
                 std::string(py::str(a.dtype())));
    auto c = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(a);
    ids.assign(c.data(), c.data() + c.size());
    return ids;
  }
  if (!py::isinstance<py::sequence>(obj))
    type_error(std::string(kSample) + ": previous_tokens must be a sequence of ints or None");
  py::sequence seq = py::reinterpret_borrow<py::sequence>(obj);
  ids.reserve(seq.size());
  for (py::handle t : seq) ids.push_back(int_arg(t, "previous_tokens[i]"));
  return ids;
}

int64_t sample_token(py::handle logits_obj, double temperature, py::handle top_k_obj,
                     double top_p, double min_p, double repetition_penalty,
                     py::handle previous_obj, double u) {
  // settings: SamplingConfig.validate's rules
  if (!std::isfinite(temperature) || temperature < 0)
    value_error(std::string(kSample) + ": temperature must be a finite number >= 0");
  int64_t top_k = int_arg(top_k_obj, "top_k");
  if (top_k < 0) value_error(std::string(kSample) + ": top_k must be an integer >= 0 (0 disables it)");
  if (!(top_p > 0.0 && top_p <= 1.0)) value_error(std::string(kSample) + ": top_p must be in (0, 1]");
  if (!(min_p >= 0.0 && min_p <= 1.0)) value_error(std::string(kSample) + ": min_p must be in [0, 1]");
  if (!std::isfinite(repetition_penalty) || repetition_penalty <= 0)
    value_error(std::string(kSample) + ": repetition_penalty must be a finite number > 0");
  if (!(u >= 0.0 && u < 1.0)) value_error(std::string(kSample) + ": u must be in [0, 1)");

  // logits: sampling._check_logits
  if (!py::isinstance<py::array>(logits_obj))
    type_error(std::string(kSample) + ": logits must be a numpy array");
  py::array raw = py::reinterpret_borrow<py::array>(logits_obj);
  if (raw.ndim() != 1 || raw.size() == 0)
    value_error(std::string(kSample) + ": logits must be a non-empty 1-D array");
  if (raw.dtype().kind() != 'f')
    type_error(std::string(kSample) + ": logits must be floating point, got " +
               std::string(py::str(raw.dtype())));
  const int64_t V = raw.size();
  const bool is_f32 = raw.dtype().equal(py::dtype::of<float>()) && (raw.flags() & py::array::c_style);
  py::array_t<double> x64({V});  // float64 logits (the Python path's logits.astype(float64))
  double* x = x64.mutable_data();
  if (is_f32) {
    const float* src = static_cast<const float*>(raw.data());
    for (int64_t i = 0; i < V; ++i) x[i] = src[i];
  } else {
    auto c = py::array_t<double, py::array::c_style | py::array::forcecast>::ensure(raw);
    std::copy(c.data(), c.data() + V, x);
  }
  bool any_nan = false, any_posinf = false, any_finite = false;
  for (int64_t i = 0; i < V; ++i) {
    any_nan |= std::isnan(x[i]);
    any_posinf |= x[i] == INFINITY;
    any_finite |= std::isfinite(x[i]);
  }
  if (any_nan) value_error("logits contain NaN");
  if (any_posinf) value_error("logits contain +inf");
  if (!any_finite) value_error("logits are all -inf: no token can be sampled");

  const bool greedy = temperature == 0;
  if (greedy && repetition_penalty == 1.0) return argmax(x, V);

  // 1. repetition penalty, once per distinct previous token
  if (repetition_penalty != 1.0 && !previous_obj.is_none()) {
    std::vector<int64_t> ids = token_list(previous_obj);
    if (!ids.empty()) {
      auto mm = std::minmax_element(ids.begin(), ids.end());
      if (*mm.first < 0 || *mm.second >= V)
        value_error("previous token ids must be in [0, " + std::to_string(V) + ")");
      std::vector<char> seen(V, 0);
      for (int64_t t : ids) {
        if (seen[t]) continue;
        seen[t] = 1;
        x[t] = x[t] > 0 ? x[t] / repetition_penalty : x[t] * repetition_penalty;
      }
    }
  }
  if (greedy) return argmax(x, V);

  // 2. temperature, shift by the largest finite value, exp (numpy's), normalise
  double top = -INFINITY;
  for (int64_t i = 0; i < V; ++i) {
    x[i] = x[i] / temperature;
    if (x[i] == INFINITY)  // would make the probabilities inf / inf = NaN
      value_error("logits / temperature overflow: temperature " + std::to_string(temperature) +
                  " is too small for these logits (use 0 for greedy)");
    if (std::isfinite(x[i]) && x[i] > top) top = x[i];
  }
  if (top == -INFINITY)  // every scaled logit went to -inf: no distribution is left
    value_error("logits / temperature overflow to -inf everywhere: temperature " +
                std::to_string(temperature) + " is too small for these logits (use 0 for greedy)");
  for (int64_t i = 0; i < V; ++i) x[i] = x[i] - top;
  py::array_t<double> probs_arr({V});
  py::module_::import("numpy").attr("exp")(x64, probs_arr);
  double* probs = probs_arr.mutable_data();

  py::gil_scoped_release release;
  const double sum = pairwise_sum(probs, V);
  for (int64_t i = 0; i < V; ++i) probs[i] = probs[i] / sum;

  // 3-5. top-k, top-p (both over the same stable descending order), min-p
  // np.argsort(-probs, kind="stable") is the order "more likely first, then the lower id":
  // a total order, so any sort (or a partial one, for top-k alone) gives the same ranks
  std::vector<char> keep(V, 1);
  std::vector<int64_t> order;
  auto before = [&](int64_t a, int64_t b) {
    return probs[a] > probs[b] || (probs[a] == probs[b] && a < b);
  };
  auto rank = [&](int64_t count) {  // order[0:count] = the `count` first ids in that order
    order.resize(V);
    std::iota(order.begin(), order.end(), int64_t(0));
    if (count < V)
      std::partial_sort(order.begin(), order.begin() + count, order.end(), before);
    else
      std::sort(order.begin(), order.end(), before);
  };
  if (top_k && top_k < V) {
    rank(top_p < 1.0 ? V : top_k);
    for (int64_t i = top_k; i < V; ++i) keep[order[i]] = 0;
  }
  if (top_p < 1.0) {
    if (order.empty()) rank(V);
    // keep tokens until the cumulative probability first reaches top_p (that one stays)
    double cum = 0.0;
    int64_t cutoff = V;
    for (int64_t i = 0; i < V; ++i) {
      cum += probs[order[i]];
      if (cum >= top_p) {
        cutoff = i + 1;
        break;
      }
    }
    for (int64_t i = cutoff; i < V; ++i) keep[order[i]] = 0;
  }
  if (min_p > 0.0) {
    const double threshold = min_p * probs[argmax(probs, V)];
    for (int64_t i = 0; i < V; ++i)
      if (!(probs[i] >= threshold)) keep[i] = 0;
  }
  for (int64_t i = 0; i < V; ++i)
    if (!keep[i]) probs[i] = 0.0;
  const double total = pairwise_sum(probs, V);
  if (total <= 0) return argmax(x, V);  // cannot happen: the top token always survives

  // 6. inverse CDF: the first token whose cumulative probability exceeds u * total
  double cum = 0.0, last = 0.0;
  for (int64_t i = 0; i < V; ++i) last += probs[i] / total;
  const double target = u * last;
  for (int64_t i = 0; i < V; ++i) {
    cum += probs[i] / total;
    if (cum > target) return i;
  }
  return V - 1;
}

}  // namespace

void register_sampling(py::module_& m) {
  m.def("sample_token", &sample_token, py::arg("logits"), py::arg("temperature"), py::arg("top_k"),
        py::arg("top_p"), py::arg("min_p"), py::arg("repetition_penalty"),
        py::arg("previous_tokens"), py::arg("u"),
        "One step of kernelgpt.sampling.Sampler: the same token for the same logits, settings "
        "and uniform number u (ignored when temperature == 0).");
}

}  // namespace bind
}  // namespace kg
