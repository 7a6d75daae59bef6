"""An emulated GPU: kernelgpt's CUDA kernels, unchanged, run on the CPU.

The kernels of ``csrc/cuda`` are compiled a second time with the host compiler against a small
CUDA emulator (``csrc/cuda_emu/emu.h``): every CUDA thread is a fiber, ``__syncthreads()`` and
warp shuffles are barriers, and what CUDA leaves undefined (a barrier some threads never reach,
a shuffle naming a lane that returned, too much shared memory) raises a RuntimeError. It is
slow (each CPU core runs the threads of one block in turn) and says nothing about GPU speed, but
it runs the real kernel code, so the CUDA path can be read, stepped through and tested on any
machine.

Use it like CuPy::

    from kernelgpt import cuda_emu, ops
    x = cuda_emu.asarray(np.random.randn(4, 1000).astype(np.float32))   # "upload"
    y = ops.softmax(x)                  # runs csrc/cuda/softmax.cu, version "online"
    cuda_emu.asnumpy(y)                 # "download"

Arrays of this module are numpy arrays of the subclass ``cuda_emu.ndarray``; ``kernelgpt.ops``
sends them to the CUDA launchers exactly as it sends CuPy arrays. Other numpy functions work
on them as on any numpy array (results stay on the "device").

``set_order("reverse")`` (or ``"shuffle"``) changes the order in which the threads of a block
run between barriers; a kernel that reads shared memory another thread wrote without a
``__syncthreads()`` in between gives a different answer in one of the orders.
"""
from __future__ import annotations

import types

import numpy as np

__all__ = ["ndarray", "asarray", "asnumpy", "empty", "zeros", "set_order", "get_order",
           "set_workers", "get_workers", "available"]


def _lib():
    try:
        from . import _cuda_emu
    except ImportError as e:  # built with -DKG_CUDA_EMU=OFF
        raise RuntimeError("kernelgpt was built without the CUDA emulator (KG_CUDA_EMU=OFF)") \
            from e
    return _cuda_emu


def available() -> bool:
    """True when the emulator module was built (the default)."""
    try:
        _lib()
    except RuntimeError:
        return False
    return True


class _Pointer:
    __slots__ = ("ptr",)

    def __init__(self, ptr):
        self.ptr = ptr


class Device:
    """The one emulated device (id 0), shaped like cupy.cuda.Device."""

    def __init__(self, id=0):
        self.id = id

    def __repr__(self):
        return f"<emulated CUDA Device {self.id}>"


class Graph:
    """A captured sequence of kernel launches (as cupy.cuda.Graph): launch() replays them with
    the arguments they had when captured, as a CUDA graph does."""

    def __init__(self, graph_id):
        self._id = graph_id

    def __len__(self):
        return _lib().graph_size(self._id)

    def launch(self, stream=None):
        _lib().launch_graph(self._id)

    def __del__(self):
        try:
            _lib().free_graph(self._id)
        except Exception:
            pass


class Stream:
    """The emulator's one stream (as cupy.cuda.Stream): every launch runs to completion at
    once, except between begin_capture() and end_capture(), which record them into a Graph."""
    ptr = 0

    def __init__(self, non_blocking=False):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def begin_capture(self, mode=None):
        _lib().begin_capture()

    def end_capture(self):
        return Graph(_lib().end_capture())

    def synchronize(self):
        pass


cuda = types.SimpleNamespace(Device=Device, Stream=Stream, Graph=Graph,
                             get_current_stream=lambda: Stream())


class ndarray(np.ndarray):
    """A numpy array that kernelgpt treats as living on the emulated GPU.

    ``.data.ptr`` is the address of the first element (as CuPy's device pointer) and
    ``.device`` is the emulated device."""

    @property
    def data(self):
        return _Pointer(self.__array_interface__["data"][0])

    @property
    def device(self):
        return Device(0)

    def get(self):
        """A numpy copy (as cupy.ndarray.get)."""
        return asnumpy(self)


ndarray.__module__ = __name__


def _wrap(r):
    if isinstance(r, np.ndarray) and not isinstance(r, ndarray):
        return r.view(ndarray)
    return r


def asarray(a, dtype=None):
    """An emulated-device array: `a` itself if it already is one with that dtype, else a copy
    (as cupy.asarray copies host data to the GPU)."""
    if isinstance(a, ndarray) and (dtype is None or a.dtype == np.dtype(dtype)):
        return a
    return np.array(a, dtype=dtype, copy=True).view(ndarray)


def asnumpy(a):
    """A plain numpy copy of an emulated-device array."""
    return np.array(a, copy=True).view(np.ndarray)


def empty(shape, dtype=np.float32):
    """Uninitialized like cudaMalloc'd memory: filled with NaN (float) or a pattern."""
    a = np.empty(shape, dtype)
    if a.dtype.kind == "f":
        a.fill(np.nan)
    else:
        a.view(np.uint8).fill(0xA5)
    return a.view(ndarray)


def zeros(shape, dtype=np.float32):
    return np.zeros(shape, dtype).view(ndarray)


def set_order(order: str, seed: int = 0) -> None:
    """The order of the threads of a block between barriers: 'forward', 'reverse', 'shuffle'."""
    _lib().set_order(order, seed)


def get_order() -> str:
    return _lib().get_order()


def set_workers(n: int) -> None:
    """OS threads that run blocks in parallel (0: one per CPU, at most 8). Blocks are
    independent on a GPU too, so this changes only the speed (and the order of atomics)."""
    _lib().set_workers(n)


def get_workers() -> int:
    return _lib().get_workers()


def __getattr__(name):
    """Everything else numpy has (dtypes, where, maximum, argsort, ...), with array results on
    the emulated device, so that this module stands in for ``cupy`` in kernelgpt._cuda."""
    attr = getattr(np, name)
    if isinstance(attr, type) or not callable(attr):
        return attr

    def call(*args, **kwargs):
        r = attr(*args, **kwargs)
        if isinstance(r, tuple):
            return tuple(_wrap(x) for x in r)
        return _wrap(r)

    call.__name__ = name
    call.__doc__ = attr.__doc__
    return call
