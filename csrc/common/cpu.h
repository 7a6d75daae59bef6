// CPU feature detection and the choice of kernel copy (see isa.h).
#pragma once
#include <string>

#include "common/isa.h"

namespace kg {

struct CpuFeatures {
  std::string vendor;
  std::string brand;
  bool sse2 = false, avx = false, avx2 = false, fma = false, f16c = false;
  bool avx512f = false, avx512cd = false, avx512bw = false, avx512dq = false, avx512vl = false;
  bool avx512vnni = false, avx512bf16 = false, amx_tile = false, amx_bf16 = false;
  bool os_avx = false, os_avx512 = false;  // the OS saves the wider registers (XCR0)
  // aarch64 (getauxval's HWCAP / HWCAP2 on Linux, sysctl hw.optional.arm.* on macOS)
  bool asimd = false, asimddp = false, fp16 = false, i8mm = false, bf16 = false;
  bool sve = false, sve2 = false;
};

const CpuFeatures& cpu_features();
const char* isa_name(Isa isa);
bool isa_compiled(Isa isa);
Isa best_isa();    // best level that is compiled in and that this CPU and OS support
Isa active_isa();  // the level kernels use now (best_isa() unless lowered by set_active_isa)
void set_active_isa(Isa isa);  // throws std::invalid_argument if unsupported here

template <class T>
struct same_type { using type = T; };

// T is deduced from the generic copy alone: the others may be nullptr (a level not compiled).
#if defined(__aarch64__)
template <class T>
const T& select_isa(const T* generic, const typename same_type<T>::type* dotprod,
                    const typename same_type<T>::type* i8mm) {
  switch (active_isa()) {
    case Isa::i8mm:
      if (i8mm) return *i8mm;
      [[fallthrough]];
    case Isa::dotprod:
      if (dotprod) return *dotprod;
      [[fallthrough]];
    default:
      return *generic;
  }
}
#else
template <class T>
const T& select_isa(const T* generic, const typename same_type<T>::type* avx2,
                    const typename same_type<T>::type* avx512,
                    const typename same_type<T>::type* avx512bf16) {
  switch (active_isa()) {
    case Isa::avx512bf16:
      if (avx512bf16) return *avx512bf16;
      [[fallthrough]];
    case Isa::avx512:
      if (avx512) return *avx512;
      [[fallthrough]];
    case Isa::avx2:
      if (avx2) return *avx2;
      [[fallthrough]];
    default:
      return *generic;
  }
}
#endif

}  // namespace kg

#if KG_HAVE_AVX2
#define KG_IF_AVX2(x) x
#else
#define KG_IF_AVX2(x) nullptr
#endif
#if KG_HAVE_AVX512
#define KG_IF_AVX512(x) x
#else
#define KG_IF_AVX512(x) nullptr
#endif
#if KG_HAVE_AVX512BF16
#define KG_IF_AVX512BF16(x) x
#else
#define KG_IF_AVX512BF16(x) nullptr
#endif

#if KG_HAVE_DOTPROD
#define KG_IF_DOTPROD(x) x
#else
#define KG_IF_DOTPROD(x) nullptr
#endif
#if KG_HAVE_I8MM
#define KG_IF_I8MM(x) x
#else
#define KG_IF_I8MM(x) nullptr
#endif

// The kernel table `name` (declared with KG_DECLARE_PER_ISA) for the active level.
#if defined(__aarch64__)
#define KG_DISPATCH(name)                                                         \
  (::kg::select_isa(&::kg::generic::name, KG_IF_DOTPROD(&::kg::dotprod::name),   \
                    KG_IF_I8MM(&::kg::i8mm::name)))
#else
#define KG_DISPATCH(name)                                                          \
  (::kg::select_isa(&::kg::generic::name, KG_IF_AVX2(&::kg::avx2::name),          \
                    KG_IF_AVX512(&::kg::avx512::name),                             \
                    KG_IF_AVX512BF16(&::kg::avx512bf16::name)))
#endif
