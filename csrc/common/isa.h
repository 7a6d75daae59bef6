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

enum class Isa : int { generic = 0, avx2 = 1, avx512 = 2, avx512bf16 = 3 };

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
#define KG_DECLARE_PER_ISA(Type, name)      \
  namespace kg {                            \
  namespace generic { extern const Type name; }    \
  namespace avx2 { extern const Type name; }       \
  namespace avx512 { extern const Type name; }     \
  namespace avx512bf16 { extern const Type name; } \
  }
