#include "kernels/embedding.h"

#include "bindings/args.h"
#include "bindings/registry.h"
#include "common/cpu.h"

namespace kg {
namespace bind {

static py::array embedding(py::handle ids_obj, py::handle table_obj, py::handle out_obj,
                           int version) {
  const char* fn = "embedding";
  int v = check_version(fn, version, {{1, "naive"}, {2, "fast"}});
  Array table = f32(table_obj, fn, "table", {2});
  Array ids = kg::bind::ids(ids_obj, fn, "ids", table.dim(0));
  Shape out_shape = ids.shape;
  out_shape.push_back(table.dim(1));
  Array out = output(out_obj, out_shape, fn, {&table, &ids});

  EmbeddingArgs args;
  args.ids = ids.ids();
  args.table = table.cf32();
  args.out = out.f32();
  args.n = ids.size;
  args.vocab = table.dim(0);
  args.channels = table.dim(1);
  const EmbeddingKernels& kernels = KG_DISPATCH(embedding_kernels);
  {
    py::gil_scoped_release release;
    (v == 1 ? kernels.forward_naive : kernels.forward_fast)(args);
  }
  return out.array;
}

static py::array embedding_backward(py::handle dout_obj, py::handle ids_obj,
                                    int64_t num_embeddings, py::handle out_obj, bool accumulate,
                                    int version) {
  const char* fn = "embedding_backward";
  int v = check_version(fn, version, {{1, "naive"}, {2, "fast"}});
  if (num_embeddings < 1)
    value_error(std::string(fn) + ": num_embeddings must be >= 1, got " +
                std::to_string(num_embeddings));
  Array dout = f32(dout_obj, fn, "dout");
  if (dout.ndim() < 1) value_error(std::string(fn) + ": dout must have shape ids.shape + (C,), got a 0-D array");
  Array ids = kg::bind::ids(ids_obj, fn, "ids", num_embeddings);
  const int64_t C = dout.dim(-1);
  Shape expected = ids.shape;
  expected.push_back(C);
  if (dout.shape != expected)
    value_error(std::string(fn) + ": dout has shape " + shape_str(dout.shape) +
                ", expected ids.shape + (C,) = " + shape_str(expected));
  if (accumulate && out_obj.is_none())
    value_error(std::string(fn) + ": accumulate=True needs out= (the array to add to)");
  Array out;
  if (out_obj.is_none()) {
    // Fresh zeros from numpy (calloc: the OS hands out zero pages, which costs nothing until
    // a page is first written), then the kernel only adds.
    out.array = py::module_::import("numpy").attr("zeros")(
        py::make_tuple(num_embeddings, C), "float32");
    out.present = true;
    out.shape = {num_embeddings, C};
    out.size = num_embeddings * C;
    accumulate = true;
  } else {
    out = output(out_obj, {num_embeddings, C}, fn, {&dout, &ids});
  }

  EmbeddingArgs args;
  args.ids = ids.ids();
  args.dout = dout.cf32();
  args.dtable = out.f32();
  args.n = ids.size;
  args.vocab = num_embeddings;
  args.channels = C;
  args.accumulate = accumulate;
  const EmbeddingKernels& kernels = KG_DISPATCH(embedding_kernels);
  {
    py::gil_scoped_release release;
    (v == 1 ? kernels.backward_naive : kernels.backward_fast)(args);
  }
  return out.array;
}

void register_embedding(py::module_& m) {
  m.def("embedding", &embedding, py::arg("ids"), py::arg("table"), py::arg("out") = py::none(),
        py::arg("version") = 2);
  m.def("embedding_backward", &embedding_backward, py::arg("dout"), py::arg("ids"),
        py::arg("num_embeddings"), py::arg("out") = py::none(), py::arg("accumulate") = false,
        py::arg("version") = 2);
  m.def("embedding_path",
        [] { return std::string(KG_DISPATCH(embedding_kernels).description); });
}

}  // namespace bind
}  // namespace kg
