// _C.sample_token: python/kernelgpt/sampling.py's Sampler step in C++, step for step.
//
// Seeded generation must give the same tokens whether this or the Python sampler runs, so
// every step does what numpy does, in the same order and in float64 (transformers' order):
// the repetition penalty once per distinct previous token, the division by the temperature,
// top-k (every token below the k-th largest logit dropped), top-p over the renormalised
// candidates sorted ascending (stable), min-p, each softmax as sampling._softmax (shift by the
// largest, numpy's exp, a sum in index order), and the inverse-CDF draw with the caller's
// uniform number u (Sampler draws it with rng.random()). The logit bias, the frequency /
// presence penalties, typical-p and the llama.cpp order stay in Python (Sampler.fast). exp is
// numpy's own: its SIMD exp differs from the C library's in the last bit for a few percent of
// inputs, and one bit can move a token across a top-p or draw boundary.
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

// The sum in index order, one addition after another: sampling._total (np.cumsum's last
// value). Not numpy's own sum: add.reduce is pairwise, blocked differently from one numpy
// version to the next (2.0 and 2.4 differ in the last bit on most long arrays), and one bit
// moves a token across a draw boundary.
double ordered_sum(const double* a, int64_t n) {
  double r = 0.0;
  for (int64_t i = 0; i < n; ++i) r += a[i];
  return r;
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

// Per-thread scratch buffers, reused call after call: at a 49,152-token vocabulary each array is
// ~400 KB, and fresh ones cost more in page faults than the whole step's arithmetic.
struct Scratch {
  std::vector<double> x, e, v, p, q;
  std::vector<int64_t> cand, desc, asc;
  std::vector<char> seen;
};

Scratch& scratch() {
  thread_local Scratch s;
  return s;
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
  Scratch& S = scratch();
  S.x.resize(V);  // float64 logits (the Python path's logits.astype(float64))
  double* x = S.x.data();
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
      std::vector<char>& seen = S.seen;
      seen.assign(V, 0);
      for (int64_t t : ids) {
        if (seen[t]) continue;
        seen[t] = 1;
        x[t] = x[t] > 0 ? x[t] / repetition_penalty : x[t] * repetition_penalty;
      }
    }
  }
  if (greedy) return argmax(x, V);

  // 2. temperature (x / 1 == x, so always dividing is what Python's skipped step gives)
  if (temperature != 1.0) {
    for (int64_t i = 0; i < V; ++i) x[i] = x[i] / temperature;  // (no early exit: vectorised)
    bool overflow = false;
    for (int64_t i = 0; i < V; ++i) overflow |= x[i] == INFINITY;
    if (overflow)  // would make the probabilities inf / inf = NaN
      value_error("logits / temperature overflow: temperature " + std::to_string(temperature) +
                  " is too small for these logits (use 0 for greedy)");
  }
  std::vector<int64_t>& cand = S.cand;  // sampling._candidates: the finite ids, in id order
  cand.clear();
  for (int64_t i = 0; i < V; ++i)
    if (x[i] > -INFINITY) cand.push_back(i);
  // after a filter: drop the candidates it set to -inf (only candidates are ever dropped, so
  // this is the scan over [V] again, at the cost of the candidates left)
  auto prune = [&] {
    auto dropped = [&](int64_t t) { return !(x[t] > -INFINITY); };
    cand.erase(std::remove_if(cand.begin(), cand.end(), dropped), cand.end());
  };
  if (cand.empty())  // every scaled logit went to -inf: no distribution is left
    value_error("logits / temperature overflow to -inf everywhere: temperature " +
                std::to_string(temperature) + " is too small for these logits (use 0 for greedy)");
  py::object np_exp = py::module_::import("numpy").attr("exp");
  // sampling._softmax over x[ids[0..n)] in that order, into out: numpy's exp (called on a view
  // of the scratch buffer), the sum in index order
  auto softmax = [&](const std::vector<int64_t>& ids, std::vector<double>& out) {
    const int64_t n = static_cast<int64_t>(ids.size());
    double top = -INFINITY;
    for (int64_t t : ids) top = std::max(top, x[t]);
    S.e.resize(n);
    double* ep = S.e.data();
    for (int64_t j = 0; j < n; ++j) ep[j] = x[ids[j]] - top;
    py::array_t<double> e({n}, {static_cast<py::ssize_t>(sizeof(double))}, ep,
                          py::capsule(ep, [](void*) {}));
    np_exp(e, e);
    const double sum = ordered_sum(ep, n);
    out.resize(n);
    for (int64_t j = 0; j < n; ++j) out[j] = ep[j] / sum;
  };

  // 3. top-k: drop what is below the k-th largest (ties with it stay)
  const int64_t n0 = static_cast<int64_t>(cand.size());
  if (top_k > 0 && top_k < n0) {
    std::vector<double>& v = S.v;
    v.resize(n0);
    for (int64_t j = 0; j < n0; ++j) v[j] = x[cand[j]];
    std::nth_element(v.begin(), v.begin() + (n0 - top_k), v.end());
    const double kth = v[n0 - top_k];
    for (int64_t t : cand)
      if (x[t] < kth) x[t] = -INFINITY;
    prune();
  }
  // 4. top-p (sampling._hf_top_p): keep a token while the mass of the more likely tokens is
  // < p, walking the candidates from the most likely (ties: the higher id first) and sorting
  // only as far as the walk goes (64 first, then 8x more); within TOP_P_MARGIN of p at the
  // boundary, transformers' ascending form decides
  if (top_p < 1.0) {
    const int64_t n = static_cast<int64_t>(cand.size());
    std::vector<double>& p = S.p;
    softmax(cand, p);                       // in id order, as cand
    std::vector<int64_t>& desc = S.desc;    // positions in cand
    desc.resize(n);
    std::iota(desc.begin(), desc.end(), int64_t(0));
    auto more_likely = [&](int64_t a, int64_t b) {
      const double xa = x[cand[a]], xb = x[cand[b]];
      return xa > xb || (xa == xb && a > b);
    };
    int64_t keep = n, sorted = 0;
    double above = 0.0, prev = 0.0;  // the cumulative mass after / before desc[j]
    {
      py::gil_scoped_release release;
      for (int64_t j = 0; j < n; ++j) {
        if (j >= sorted) {  // sort the next stretch
          const int64_t want = std::min(n, std::max<int64_t>(64, sorted * 8));
          std::partial_sort(desc.begin() + sorted, desc.begin() + want, desc.end(), more_likely);
          sorted = want;
        }
        prev = above;
        above += p[desc[j]];
        if (above >= top_p) {
          keep = j + 1;
          break;
        }
      }
    }
    // above = the cumulative mass at keep - 1, prev at keep - 2 (Python's above[keep - 1/2])
    const double margin = 1e-9;  // sampling.TOP_P_MARGIN
    const bool near = std::abs(above - top_p) < margin ||
                      (keep >= 2 && std::abs(prev - top_p) < margin);
    if (!near) {
      for (int64_t i = keep; i < n; ++i) x[cand[desc[i]]] = -INFINITY;
    } else {
      std::vector<int64_t>& asc = S.asc;
      asc = cand;
      {
        py::gil_scoped_release release;
        std::stable_sort(asc.begin(), asc.end(), [&](int64_t a, int64_t b) { return x[a] < x[b]; });
      }
      std::vector<double>& q = S.q;
      softmax(asc, q);
      const double threshold = 1.0 - top_p;
      double cum = 0.0;
      for (size_t i = 0; i + 1 < asc.size(); ++i) {
        cum += q[i];
        if (!(cum <= threshold)) break;
        x[asc[i]] = -INFINITY;
      }
    }
    prune();
  }
  // 5. min-p: drop tokens less likely than min_p times the top one (the top one stays)
  if (min_p > 0.0) {
    std::vector<double>& p = S.p;
    softmax(cand, p);
    const int64_t best = argmax(p.data(), static_cast<int64_t>(p.size()));
    const double threshold = min_p * p[best];
    for (size_t j = 0; j < p.size(); ++j)
      if (p[j] < threshold && static_cast<int64_t>(j) != best) x[cand[j]] = -INFINITY;
    prune();
  }

  // 6. the distribution over the candidates and the inverse-CDF draw: the first token whose
  // cumulative probability (numpy's cumsum over [V]: the zeros add nothing) exceeds u * total
  std::vector<double>& p = S.p;
  softmax(cand, p);
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
