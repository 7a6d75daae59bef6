// _C.sample_token: python/kernelgpt/sampling.py's Sampler step in C++, step for step.
//
// Seeded generation must give the same tokens whether this or the Python sampler runs, so
// every step does what numpy does, in the same order and in float64 (transformers' order):
// the repetition penalty once per distinct previous token, the division by the temperature,
// top-k (every token below the k-th largest logit dropped), top-p over the renormalised
// candidates sorted ascending (stable), min-p, each softmax as sampling._softmax (shift by the
// largest, numpy's exp, numpy's pairwise sum), and the inverse-CDF draw with the caller's
// uniform number u (Sampler draws it with rng.random()). The logit bias, the frequency /
// presence penalties, typical-p and the llama.cpp order stay in Python (Sampler.fast). exp is numpy's
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

  // 2. temperature (x / 1 == x, so always dividing is what Python's skipped step gives)
  for (int64_t i = 0; i < V; ++i) {
    x[i] = x[i] / temperature;
    if (x[i] == INFINITY)  // would make the probabilities inf / inf = NaN
      value_error("logits / temperature overflow: temperature " + std::to_string(temperature) +
                  " is too small for these logits (use 0 for greedy)");
  }
  std::vector<int64_t> cand;  // sampling._candidates: the finite ids, in id order
  auto gather = [&] {
    cand.clear();
    for (int64_t i = 0; i < V; ++i)
      if (x[i] > -INFINITY) cand.push_back(i);
  };
  gather();
  if (cand.empty())  // every scaled logit went to -inf: no distribution is left
    value_error("logits / temperature overflow to -inf everywhere: temperature " +
                std::to_string(temperature) + " is too small for these logits (use 0 for greedy)");
  py::object np_exp = py::module_::import("numpy").attr("exp");
  // sampling._softmax over x[ids[0..n)] in that order: numpy's exp, its pairwise sum
  auto softmax = [&](const std::vector<int64_t>& ids) {
    const int64_t n = static_cast<int64_t>(ids.size());
    double top = -INFINITY;
    for (int64_t t : ids) top = std::max(top, x[t]);
    py::array_t<double> e({n});
    double* ep = e.mutable_data();
    for (int64_t j = 0; j < n; ++j) ep[j] = x[ids[j]] - top;
    np_exp(e, e);
    const double sum = pairwise_sum(ep, n);
    std::vector<double> p(n);
    for (int64_t j = 0; j < n; ++j) p[j] = ep[j] / sum;
    return p;
  };

  // 3. top-k: drop what is below the k-th largest (ties with it stay)
  const int64_t n0 = static_cast<int64_t>(cand.size());
  if (top_k > 0 && top_k < n0) {
    std::vector<double> v(n0);
    for (int64_t j = 0; j < n0; ++j) v[j] = x[cand[j]];
    std::nth_element(v.begin(), v.begin() + (n0 - top_k), v.end());
    const double kth = v[n0 - top_k];
    for (int64_t t : cand)
      if (x[t] < kth) x[t] = -INFINITY;
    gather();
  }
  // 4. top-p over the candidates sorted ascending (stable: ties by id), renormalised: drop
  // while the cumulative probability is <= 1 - p; the last (most likely) one stays
  if (top_p < 1.0) {
    std::vector<int64_t> asc = cand;
    {
      py::gil_scoped_release release;
      std::stable_sort(asc.begin(), asc.end(), [&](int64_t a, int64_t b) { return x[a] < x[b]; });
    }
    std::vector<double> p = softmax(asc);
    const double threshold = 1.0 - top_p;
    double cum = 0.0;
    for (size_t j = 0; j + 1 < asc.size(); ++j) {
      cum += p[j];
      if (!(cum <= threshold)) break;
      x[asc[j]] = -INFINITY;
    }
    gather();
  }
  // 5. min-p: drop tokens less likely than min_p times the top one (the top one stays)
  if (min_p > 0.0) {
    std::vector<double> p = softmax(cand);
    const int64_t best = argmax(p.data(), static_cast<int64_t>(p.size()));
    const double threshold = min_p * p[best];
    for (size_t j = 0; j < p.size(); ++j)
      if (p[j] < threshold && static_cast<int64_t>(j) != best) x[cand[j]] = -INFINITY;
    gather();
  }

  // 6. the distribution over the candidates and the inverse-CDF draw: the first token whose
  // cumulative probability (numpy's cumsum over [V]: the zeros add nothing) exceeds u * total
  std::vector<double> p = softmax(cand);
  double total = 0.0;
  for (double q : p) total += q;
  const double target = u * total;
  double cum = 0.0;
  for (size_t j = 0; j < p.size(); ++j) {
    cum += p[j];
    if (cum > target) return cand[j];
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
