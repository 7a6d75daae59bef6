// CPU features, instruction-set selection, threads.
#include "bindings/args.h"
#include "bindings/registry.h"
#include "common/cpu.h"
#include "common/threading.h"

namespace kg {
namespace bind {

static Isa parse_isa(const std::string& name) {
  for (Isa isa : {Isa::generic, Isa::avx2, Isa::avx512, Isa::avx512bf16, Isa::dotprod, Isa::i8mm})
    if (name == isa_name(isa)) return isa;
  value_error("unknown instruction set '" + name +
              "', expected 'generic', 'avx2', 'avx512', 'avx512bf16' (x86-64), 'dotprod' or 'i8mm' (aarch64)");
}

void register_system(py::module_& m) {
  m.def("cpu_info", [] {
    const CpuFeatures& f = cpu_features();
    py::dict flags;
#if defined(__aarch64__)
    flags["neon"] = f.asimd;
    flags["dotprod"] = f.asimddp;
    flags["fp16"] = f.fp16;
    flags["i8mm"] = f.i8mm;
    flags["bf16"] = f.bf16;
    flags["sve"] = f.sve;
    flags["sve2"] = f.sve2;
#else
    flags["sse2"] = f.sse2;
    flags["avx"] = f.avx && f.os_avx;
    flags["avx2"] = f.avx2 && f.os_avx;
    flags["fma"] = f.fma && f.os_avx;
    flags["f16c"] = f.f16c;
    flags["avx512f"] = f.avx512f && f.os_avx512;
    flags["avx512cd"] = f.avx512cd && f.os_avx512;
    flags["avx512bw"] = f.avx512bw && f.os_avx512;
    flags["avx512dq"] = f.avx512dq && f.os_avx512;
    flags["avx512vl"] = f.avx512vl && f.os_avx512;
    flags["avx512_vnni"] = f.avx512vnni && f.os_avx512;
    flags["avx512_bf16"] = f.avx512bf16 && f.os_avx512;
    flags["amx_tile"] = f.amx_tile;
    flags["amx_bf16"] = f.amx_bf16;
#endif
    py::list compiled;
    for (Isa isa : {Isa::generic, Isa::avx2, Isa::avx512, Isa::avx512bf16, Isa::dotprod, Isa::i8mm})
      if (isa_compiled(isa)) compiled.append(isa_name(isa));
    py::dict d;
    d["vendor"] = f.vendor;
    d["brand"] = f.brand;
    d["flags"] = flags;
    d["compiled_isas"] = compiled;
    d["best_isa"] = isa_name(best_isa());
    d["active_isa"] = isa_name(active_isa());
#if KG_HAVE_OPENMP
    d["openmp"] = true;
#else
    d["openmp"] = false;
#endif
#if KG_HAVE_CUDA
    d["cuda_compiled"] = true;
#else
    d["cuda_compiled"] = false;
#endif
    return d;
  });
  m.def("set_isa", [](const std::string& name) { set_active_isa(parse_isa(name)); },
        py::arg("name"));
  m.def("get_isa", [] { return std::string(isa_name(active_isa())); });
  m.def("set_num_threads", &set_num_threads, py::arg("n"));
  m.def("get_num_threads", &num_threads);
}

}  // namespace bind
}  // namespace kg
