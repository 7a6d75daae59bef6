// Instruction-set levels and per-level namespaces.
//
// Every file in csrc/kernels is compiled once per level with -DKG_ISA=<level> and the
// matching -m flags; its code lives in namespace kg::<level>. Code in csrc/common and
// csrc/bindings is compiled for the baseline only and reaches a kernel through
// KG_DISPATCH(table), which picks the copy for the level the CPU supports.
//
// Rule for kernel files: do not instantiate std:: templates that the linker could share
// between levels (std::vector, std::sort, std::function, ...). Such a weak symbol compiled
// with AVX-512 could be picked for baseline code and crash an older CPU. Allocate in the
// bindings and pass raw pointers; use the helpers in simd.h and threading.h.
#pragma once

namespace kg {

// x86-64: generic (SSE2), avx2 (+FMA, F16C), avx512 (F/CD/BW/DQ/VL), avx512bf16 (+VNNI, BF16).
// aarch64: generic (armv8-a: NEON is part of the baseline), dotprod (armv8.2-a + SDOT/UDOT and
// fp16), i8mm (armv8.6-a + I8MM SMMLA and BF16 BFMMLA: Apple M2+, Graviton 3+).
enum class Isa : int { generic = 0, avx2 = 1, avx512 = 2, avx512bf16 = 3, dotprod = 4, i8mm = 5 };

}  // namespace kg

#ifdef KG_ISA
#define KG_BEGIN_ISA_NAMESPACE \
  namespace kg {               \
  namespace KG_ISA {
#define KG_END_ISA_NAMESPACE \
  }                          \
  }
#endif

// Declares `extern const Type name;` in every level's namespace.
#if defined(__aarch64__)
#define KG_DECLARE_PER_ISA(Type, name)           \
  namespace kg {                                 \
  namespace generic { extern const Type name; }  \
  namespace dotprod { extern const Type name; }  \
  namespace i8mm { extern const Type name; }     \
  }
#else
#define KG_DECLARE_PER_ISA(Type, name)      \
  namespace kg {                            \
  namespace generic { extern const Type name; }    \
  namespace avx2 { extern const Type name; }       \
  namespace avx512 { extern const Type name; }     \
  namespace avx512bf16 { extern const Type name; } \
  }
#endif
