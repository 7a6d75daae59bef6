#include "common/cpu.h"

#include <atomic>
#include <cstdint>
#include <cstring>
#include <stdexcept>

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#define KG_X86 1
#elif defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#elif defined(__aarch64__) && defined(__APPLE__)
#include <sys/sysctl.h>
#endif

namespace kg {

#if KG_X86
static uint64_t read_xcr0() {
  uint32_t eax, edx;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (uint64_t(edx) << 32) | eax;
}
#endif

#if defined(__aarch64__) && defined(__APPLE__)
static bool sysctl_flag(const char* name) {  // hw.optional.arm.FEAT_*: 1 when present
  int value = 0;
  size_t size = sizeof(value);
  return sysctlbyname(name, &value, &size, nullptr, 0) == 0 && value == 1;
}
#endif

static CpuFeatures detect() {
  CpuFeatures f;
#if defined(__aarch64__)
  f.vendor = "ARM";
  f.brand = "aarch64";
  f.asimd = true;  // NEON is part of armv8-a
#if defined(__linux__)
  // the bits of linux/arch/arm64/include/uapi/asm/hwcap.h (kept here for older headers)
  unsigned long hw = getauxval(AT_HWCAP), hw2 = getauxval(AT_HWCAP2);
  f.asimd = hw & (1ul << 1);
  f.fp16 = (hw & (1ul << 9)) && (hw & (1ul << 10));  // FPHP and ASIMDHP
  f.asimddp = hw & (1ul << 20);
  f.sve = hw & (1ul << 22);
  f.sve2 = hw2 & (1ul << 1);
  f.i8mm = hw2 & (1ul << 13);
  f.bf16 = hw2 & (1ul << 14);
#elif defined(__APPLE__)
  f.asimddp = sysctl_flag("hw.optional.arm.FEAT_DotProd");
  f.fp16 = sysctl_flag("hw.optional.arm.FEAT_FP16");
  f.i8mm = sysctl_flag("hw.optional.arm.FEAT_I8MM");
  f.bf16 = sysctl_flag("hw.optional.arm.FEAT_BF16");
  char brand[128] = {0};
  size_t size = sizeof(brand) - 1;
  if (sysctlbyname("machdep.cpu.brand_string", brand, &size, nullptr, 0) == 0) f.brand = brand;
#endif
#endif
#if KG_X86
  unsigned a, b, c, d;
  if (!__get_cpuid(0, &a, &b, &c, &d)) return f;
  unsigned max_leaf = a;
  char vendor[13] = {0};
  std::memcpy(vendor + 0, &b, 4);
  std::memcpy(vendor + 4, &d, 4);
  std::memcpy(vendor + 8, &c, 4);
  f.vendor = vendor;

  __get_cpuid(1, &a, &b, &c, &d);
  f.sse2 = d & (1u << 26);
  f.fma = c & (1u << 12);
  f.f16c = c & (1u << 29);
  bool osxsave = c & (1u << 27);
  f.avx = c & (1u << 28);
  uint64_t xcr0 = osxsave ? read_xcr0() : 0;
  f.os_avx = (xcr0 & 0x6) == 0x6;             // XMM and YMM state
  f.os_avx512 = f.os_avx && (xcr0 & 0xe0) == 0xe0;  // opmask, ZMM_Hi256, Hi16_ZMM
  if (max_leaf >= 7) {
    __cpuid_count(7, 0, a, b, c, d);
    f.avx2 = b & (1u << 5);
    f.avx512f = b & (1u << 16);
    f.avx512dq = b & (1u << 17);
    f.avx512cd = b & (1u << 28);
    f.avx512bw = b & (1u << 30);
    f.avx512vl = b & (1u << 31);
    f.avx512vnni = c & (1u << 11);
    f.amx_bf16 = d & (1u << 22);
    f.amx_tile = d & (1u << 24);
    __cpuid_count(7, 1, a, b, c, d);
    f.avx512bf16 = a & (1u << 5);
  }
  unsigned ext_max = __get_cpuid_max(0x80000000u, nullptr);
  if (ext_max >= 0x80000004u) {
    char brand[49] = {0};
    for (unsigned i = 0; i < 3; ++i) {
      __get_cpuid(0x80000002u + i, &a, &b, &c, &d);
      std::memcpy(brand + 16 * i + 0, &a, 4);
      std::memcpy(brand + 16 * i + 4, &b, 4);
      std::memcpy(brand + 16 * i + 8, &c, 4);
      std::memcpy(brand + 16 * i + 12, &d, 4);
    }
    f.brand = brand;
    while (!f.brand.empty() && f.brand.back() == ' ') f.brand.pop_back();
  }
#endif
  return f;
}

const CpuFeatures& cpu_features() {
  static const CpuFeatures features = detect();
  return features;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::generic: return "generic";
    case Isa::avx2: return "avx2";
    case Isa::avx512: return "avx512";
    case Isa::avx512bf16: return "avx512bf16";
    case Isa::dotprod: return "dotprod";
    case Isa::i8mm: return "i8mm";
  }
  return "unknown";
}

bool isa_compiled(Isa isa) {
  if (isa == Isa::generic) return true;
#if KG_HAVE_AVX2
  if (isa == Isa::avx2) return true;
#endif
#if KG_HAVE_AVX512
  if (isa == Isa::avx512) return true;
#endif
#if KG_HAVE_AVX512BF16
  if (isa == Isa::avx512bf16) return true;
#endif
#if KG_HAVE_DOTPROD
  if (isa == Isa::dotprod) return true;
#endif
#if KG_HAVE_I8MM
  if (isa == Isa::i8mm) return true;
#endif
  return false;
}

static bool cpu_supports(Isa isa) {
  const CpuFeatures& f = cpu_features();
  bool avx2 = f.os_avx && f.avx && f.avx2 && f.fma && f.f16c;
  bool avx512 = avx2 && f.os_avx512 && f.avx512f && f.avx512cd && f.avx512bw && f.avx512dq &&
                f.avx512vl;
  switch (isa) {
    case Isa::generic: return true;
    case Isa::avx2: return avx2;
    case Isa::avx512: return avx512;
    case Isa::avx512bf16: return avx512 && f.avx512vnni && f.avx512bf16;
    case Isa::dotprod: return f.asimd && f.asimddp && f.fp16;
    case Isa::i8mm: return f.asimd && f.asimddp && f.fp16 && f.i8mm && f.bf16;
  }
  return false;
}

Isa best_isa() {
  static const Isa best = [] {
    Isa levels[] = {Isa::avx512bf16, Isa::avx512, Isa::avx2, Isa::i8mm, Isa::dotprod};
    for (Isa isa : levels)
      if (isa_compiled(isa) && cpu_supports(isa)) return isa;
    return Isa::generic;
  }();
  return best;
}

static std::atomic<int> g_active_isa{-1};

Isa active_isa() {
  int v = g_active_isa.load(std::memory_order_relaxed);
  return v < 0 ? best_isa() : static_cast<Isa>(v);
}

void set_active_isa(Isa isa) {
  if (!isa_compiled(isa))
    throw std::invalid_argument(std::string("instruction set '") + isa_name(isa) +
                                "' was not compiled into this build");
  if (!cpu_supports(isa))
    throw std::invalid_argument(std::string("this CPU does not support '") + isa_name(isa) +
                                "'");
  g_active_isa.store(static_cast<int>(isa), std::memory_order_relaxed);
}

}  // namespace kg
