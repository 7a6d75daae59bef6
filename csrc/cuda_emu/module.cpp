// kernelgpt._cuda_emu: the launchers of csrc/cuda (the same bindings as the CUDA build of _C,
// csrc/bindings/cuda.cpp) compiled against the CPU emulator of csrc/cuda_emu/emu.h. Device
// pointers are host addresses; kernelgpt.cuda_emu wraps numpy arrays for it.
#include <pybind11/pybind11.h>

#include "bindings/registry.h"
#include "cuda_emu/emu_control.h"

void register_selftest(pybind11::module_& m);  // selftest.cpp

PYBIND11_MODULE(_cuda_emu, m) {
  m.doc() = "kernelgpt's CUDA kernels run on the CPU by an emulator (see kernelgpt.cuda_emu)";
  kg::bind::register_cuda(m);
  m.def("set_order", &kg_emu::set_order, pybind11::arg("order"), pybind11::arg("seed") = 0,
        "Order of the fibers of a block between barriers: 'forward', 'reverse' or 'shuffle'.");
  m.def("get_order", &kg_emu::get_order);
  m.def("set_workers", &kg_emu::set_workers, pybind11::arg("n"),
        "OS threads running blocks in parallel (0: one per CPU, at most 8).");
  m.def("get_workers", &kg_emu::get_workers);
  m.def("begin_capture", &kg_emu::begin_capture);
  m.def("end_capture", &kg_emu::end_capture);
  m.def("launch_graph", &kg_emu::launch_graph, pybind11::call_guard<pybind11::gil_scoped_release>());
  m.def("graph_size", &kg_emu::graph_size);
  m.def("free_graph", &kg_emu::free_graph);
  register_selftest(m);
}
