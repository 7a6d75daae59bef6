"""embedding: the row lookup out[...] = table[ids[...]] and its backward, a scatter-add.

Versions (one numbering: csrc/kernels/embedding.cpp, csrc/cuda/embedding.cu, backend= names)
  forward
    1 naive  C++, CUDA  one row copied at a time (CUDA: a thread per output value, coalesced)
    2 fast   C++        ids split over threads, rows copied with full vectors, prefetching
  backward
    1 naive  C++, CUDA  C++: one loop over the ids adding rows; CUDA: a thread per dout value,
                        atomicAdd into the table (the order of the additions varies by run)
    2 fast   C++, CUDA  deterministic in parallel: every row receives its additions in position
                        order, bit-identical to version 1 on the CPU for any thread count.
                        C++: each thread owns a range of table rows (cut from a histogram of
                        the ids); CUDA ("sorted"): positions sorted by id, a thread per run
backend="auto": the fastest on each processor (forward: 2 on the CPU, 1 on a GPU; backward: 2);
"numpy": kernelgpt.reference.

ids: an integer array of any shape (any integer dtype; int64 is used without a copy), every
value in [0, V) (ValueError naming the flat index and the value otherwise).
"""
from __future__ import annotations

from .. import _C, reference
from ._dispatch import (Versions, accumulate_into, check_f32, check_ints, check_range,
                        check_shape, int_option, into, output, ptr, where_of)

__all__ = ["embedding", "embedding_backward", "VERSIONS", "BACKWARD_VERSIONS"]

VERSIONS = Versions("embedding", {1: ("naive", "cpu cuda"), 2: ("fast", "cpu")},
                    auto={"cpu": 2, "cuda": 1})
BACKWARD_VERSIONS = Versions("embedding_backward", {1: ("naive", "cpu cuda"),
                                                    2: ("fast", "cpu cuda")},
                             auto={"cpu": 2, "cuda": 2}, aliases={"sorted": "fast"})


def embedding(ids, table, *, out=None, backend="auto"):
    """Row lookup: out[..., :] = table[ids[...], :].

    ids: [...] integers in [0, V); table: [V, C] float32.  Returns [..., C] float32.
    NaN / inf in table rows are copied like any other value.
    """
    fn = "embedding"
    where, dev = where_of(fn, backend, table)
    if where == "cpu":
        return _C.embedding(ids, table, out, VERSIONS.number(backend, "cpu"))
    ids = check_ints(dev, ids, fn, "ids")
    check_f32(dev, table, fn, "table", (2,))
    V, C = table.shape
    check_range(dev, ids, V, fn, "ids")
    if where == "numpy":
        return into(out, reference.embedding(ids, table))
    version = VERSIONS.number(backend, "cuda")
    y = output(dev, out, ids.shape + (C,), fn, (table,))
    dev.lib.cuda_embedding(version, ids.data.ptr, table.data.ptr, y.data.ptr,
                           ids.size, V, C, dev.stream())
    return y


def embedding_backward(dout, ids, num_embeddings, *, out=None, accumulate=False, backend="auto"):
    """Gradient of embedding with respect to the table: a scatter-add.

    dout: [..., C] float32 (ids.shape + (C,)); ids: [...] integers in [0, num_embeddings).
    Returns dtable [num_embeddings, C]: row v = sum of dout[j] over the positions j with
    ids[j] == v (repeated ids add up; rows never named are 0). ``accumulate=True`` adds into
    ``out`` instead (gradient accumulation). The fast version gives each thread a disjoint
    range of table rows and adds in id order, so the result is bit-identical to the naive one
    (and the same for every thread count).
    """
    fn = "embedding_backward"
    num_embeddings = int_option(num_embeddings, fn, "num_embeddings")
    where, dev = where_of(fn, backend, dout)
    if where == "cpu":
        return _C.embedding_backward(dout, ids, num_embeddings, out, bool(accumulate),
                                     BACKWARD_VERSIONS.number(backend, "cpu"))
    ids = check_ints(dev, ids, fn, "ids")
    check_f32(dev, dout, fn, "dout")
    if num_embeddings < 1:
        raise ValueError(f"{fn}: num_embeddings must be >= 1, got {num_embeddings}")
    C = dout.shape[-1]
    check_shape(dout, ids.shape + (C,), fn, "dout")
    check_range(dev, ids, num_embeddings, fn, "ids")
    if where == "numpy":
        return accumulate_into(fn, out, reference.embedding_backward(dout, ids, num_embeddings),
                               accumulate)
    version = BACKWARD_VERSIONS.number(backend, "cuda")
    if accumulate and out is None:
        raise ValueError(f"{fn}: accumulate=True needs out= (the array to add to)")
    xp = dev.xp
    dtable = output(dev, out, (num_embeddings, C), fn, (dout,))
    if not accumulate:
        dtable.fill(0)
    flat = ids.ravel()
    order = None
    if version == 2:  # unique keys (id, position): any sort gives the same order
        order = xp.argsort(flat * flat.size + xp.arange(flat.size, dtype=xp.int64))
    dev.lib.cuda_embedding_backward(version, dout.data.ptr, flat.data.ptr,
                                    ptr(order), dtable.data.ptr, flat.size, num_embeddings, C,
                                    dev.stream())
    return dtable
