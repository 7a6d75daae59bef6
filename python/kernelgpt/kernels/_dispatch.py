"""What every kernel family shares: which route a call takes, which numbered version runs,
and the argument checks of the routes that have no C++ binding to check them.

A call goes one of three ways (``route``):

    "device"  a CuPy or kernelgpt.cuda_emu array came in: the CUDA kernel of csrc/cuda/<family>.cu
              through the launcher in kernelgpt._C (or kernelgpt._cuda_emu)
    "numpy"   backend="numpy": the plain numpy formula in kernelgpt.reference (the baseline)
    "cpu"     anything else: the C++ kernel of csrc/kernels/<family>.cpp through kernelgpt._C

The C++ bindings (csrc/bindings/<family>.cpp) check their arguments themselves, because they
must be safe to call directly; the "numpy" and "device" routes are checked here, by each
family's own check function, with the same messages: a float array that is not float32 is a
TypeError (nothing is cast behind your back), an empty one (or, on a device, a non-contiguous
one) a ValueError, a shape that does not fit a ValueError naming the argument and the expected
shape.
"""
from __future__ import annotations

from typing import Dict, Iterable, Optional, Sequence, Tuple

import numpy as np

from ..device import Device, device_for, device_of

# The numpy reference's "device": host arrays, no launchers.
HOST = Device(np, None, "numpy")


def route(backend, *arrays) -> str:
    """"device", "numpy" or "cpu" (see the module docstring) for a call with these arrays."""
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a string, got {type(backend).__name__}")
    for a in arrays:
        if a is not None and device_of(a) != "cpu":
            return "device"
    return "numpy" if backend == "numpy" else "cpu"


def where_of(fn: str, backend, first, *others) -> Tuple[str, Device]:
    """(route, Device) of a call: "device" if any of the arrays is a device array, and then the
    Device of the first one (a TypeError if that one is not); HOST for the other routes."""
    where = route(backend, first, *others)
    return where, (device_for(first, fn) if where == "device" else HOST)


class Versions:
    """The numbered versions of one kernel, llm.c-style. One numbering for the C++ kernel
    (csrc/kernels), the CUDA kernel (csrc/cuda) and ``backend=`` names: version n is one idea,
    whichever processor runs it; some exist only on one of them.

        Versions("softmax", {1: ("naive", "cpu cuda"), 2: ("online", "cpu cuda")},
                 auto={"cpu": 2, "cuda": 2})

    ``number(backend, where)`` turns a backend= name ("auto" and "fast" mean the fastest, as
    given by ``auto``) into the version number, or raises ValueError naming the versions that
    exist on that processor. ``names(where)`` lists them, slowest idea first.

    The number is what every layer below takes: the C++ binding in kernelgpt._C (``version=``,
    checked against the numbers it runs) and the CUDA launcher (its first argument). The one
    number outside a table is 0, which the quant and bf16 C++ bindings take as "auto, by
    shape" (``auto={"cpu": 0}``): the kernel picks its version from the number of rows, as the
    decode runner does.
    """

    def __init__(self, kernel: str, table: Dict[int, Tuple[str, str]], auto: Dict[str, int],
                 aliases: Optional[Dict[str, str]] = None):
        self.kernel = kernel
        self.table = {n: (name, tuple(where.split())) for n, (name, where) in table.items()}
        self.auto = dict(auto)
        self.aliases = dict(aliases or {})

    def names(self, where: str) -> list:
        """The backend= names of the versions that run on `where` ("cpu" or "cuda")."""
        return [name for _, (name, places) in sorted(self.table.items()) if where in places]

    def numbers(self, where: str) -> list:
        return [n for n, (_, places) in sorted(self.table.items()) if where in places]

    def name(self, number: int) -> str:
        return self.table[number][0]

    def number(self, backend, where: str) -> int:
        """The version number that backend= selects on `where` ("cpu" or "cuda")."""
        if not isinstance(backend, str):
            raise TypeError(f"{self.kernel}: backend must be a string, got "
                            f"{type(backend).__name__}")
        if backend in ("auto", "fast") and where in self.auto:
            return self.auto[where]
        name = self.aliases.get(backend, backend)
        for n, (version_name, places) in self.table.items():
            if version_name == name and where in places:
                return n
        known = ", ".join(repr(x) for x in self.names(where) + ["auto"])
        processor = "CUDA" if where == "cuda" else "C++"
        raise ValueError(f"{self.kernel}: unknown version {backend!r} for the {processor} "
                         f"kernel, expected one of {known}")

    def describe(self) -> str:
        """One line per version: number, name, where it runs (for docs and `kernelgpt bench`)."""
        return "\n".join(f"{n} {name:10s} {' '.join(places)}"
                         for n, (name, places) in sorted(self.table.items()))


# ---- numpy results into out= ----------------------------------------------------------------

def into(out, result):
    """A reference result as float32, put into out= (if given) with the kernels' checks."""
    result = np.asarray(result, dtype=np.float32)
    if out is None:
        return result
    if not isinstance(out, np.ndarray) or out.dtype != np.float32:
        raise TypeError("out must be a float32 numpy array")
    if out.shape != result.shape:
        raise ValueError(f"out has shape {out.shape}, expected {result.shape}")
    out[...] = result
    return out


def accumulate_into(fn, out, result, accumulate):
    """into(), adding to out when accumulate=True (which then needs out=)."""
    if accumulate:
        if out is None:
            raise ValueError(f"{fn}: accumulate=True needs out= (the array to add to)")
        result = out + result
    return into(out, result)


# ---- scalar options ------------------------------------------------------------------------

def int_option(x, fn, name) -> int:
    """An integer option (Python or numpy int, not bool): TypeError otherwise."""
    if isinstance(x, bool) or not isinstance(x, (int, np.integer)):
        raise TypeError(f"{fn}: {name} must be an int, got {type(x).__name__}")
    x = int(x)
    if not -(1 << 62) <= x < (1 << 62):
        raise ValueError(f"{fn}: {name} = {x} is out of range")
    return x


def float_option(x, fn, name) -> float:
    """A real-number option (int or float, not bool): TypeError otherwise."""
    if isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating)):
        raise TypeError(f"{fn}: {name} must be a number, got {type(x).__name__}")
    return float(x)


# ---- array checks of the numpy and device routes ---------------------------------------------

def _kind_of(dev: Device, x, fn, name):
    xp = dev.xp
    if not isinstance(x, xp.ndarray) or (dev is HOST and device_of(x) != "cpu"):
        if dev is HOST:
            raise TypeError(f"{fn}: {name} must be a numpy array, got {type(x).__name__}")
        raise TypeError(f"{fn}: {name} must be a {dev.what} array like the other arguments, "
                        f"got {type(x).__name__} (mixing numpy and device arrays is not allowed)")


def _on_current_device(dev: Device, x, fn, name):
    if dev is not HOST and x.device.id != dev.xp.cuda.Device().id:
        raise ValueError(f"{fn}: {name} is on device {x.device.id}, "
                         f"the current device is {dev.xp.cuda.Device().id}")


def check_f32(dev: Device, x, fn, name, ranks: Sequence[int] = ()):
    """x is a float32, non-empty array of `dev` with one of the ranks given, C-contiguous on a
    device (the numpy formulas read any layout, so the numpy route takes views as they are)."""
    _kind_of(dev, x, fn, name)
    if x.dtype != np.float32:
        raise TypeError(f"{fn}: {name} must be float32, got {x.dtype}")
    if ranks and x.ndim not in ranks:
        raise ValueError(f"{fn}: {name} must be " + " or ".join(f"{r}-D" for r in ranks) +
                         f", got shape {tuple(x.shape)}")
    if dev is not HOST and not x.flags.c_contiguous:
        raise ValueError(f"{fn}: {name} must be C-contiguous (cupy.ascontiguousarray makes a "
                         f"contiguous copy)")
    if x.size == 0:
        raise ValueError(f"{fn}: {name} has a zero-size dimension, shape {tuple(x.shape)}")
    _on_current_device(dev, x, fn, name)
    return x


def check_typed(dev: Device, x, dtype, fn, name, what: str):
    """x is a non-empty `dtype` array of `dev` (uint8 blocks, uint16 bf16 bits), C-contiguous
    (the packed formats are read as flat bytes)."""
    if not isinstance(x, dev.xp.ndarray) or x.dtype != dtype or \
            (dev is HOST and device_of(x) != "cpu"):
        raise TypeError(f"{fn}: {name} must be a {dev.what} {np.dtype(dtype).name} array "
                        f"({what}) like the other arguments, got {type(x).__name__} "
                        f"{getattr(x, 'dtype', '')}")
    if not x.flags.c_contiguous:
        raise ValueError(f"{fn}: {name} must be C-contiguous")
    if x.size == 0:
        raise ValueError(f"{fn}: {name} has a zero-size dimension, shape {tuple(x.shape)}")
    _on_current_device(dev, x, fn, name)
    return x


def check_ints(dev: Device, x, fn, name):
    """An integer array of `dev`, returned as C-contiguous int64 (on a device: an explicit copy
    when it is another integer type; on the host numpy converts without a copy for int64)."""
    if dev is HOST:
        x = np.asarray(x)
    else:
        _kind_of(dev, x, fn, name)
    if x.dtype.kind not in "iu":
        raise TypeError(f"{fn}: {name} must be an integer array, got {x.dtype}")
    if x.size == 0:
        raise ValueError(f"{fn}: {name} has a zero-size dimension, shape {tuple(x.shape)}")
    _on_current_device(dev, x, fn, name)
    return dev.xp.ascontiguousarray(x, dtype=np.int64)


def check_range(dev: Device, ids, hi, fn, name, ignore=None):
    """ValueError naming the first value of ids outside [0, hi) (other than `ignore`). On a
    device this reads one boolean back to the host: an out-of-range id must be an error, not
    garbage (the kernels never read out of bounds either way)."""
    bad = (ids < 0) | (ids >= hi)
    if ignore is not None:
        bad &= ids != ignore
    if bool(bad.any()):
        i = int(dev.xp.argmax(bad.ravel()))
        raise ValueError(f"{fn}: {name}[{i}] = {int(ids.ravel()[i])} is out of range [0, {hi})")


def check_shape(x, shape, fn, name):
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"{fn}: {name} has shape {tuple(x.shape)}, expected {tuple(shape)}")


def output(dev: Device, out, shape, fn, inputs: Iterable = (), dtype=np.float32):
    """out= checked (dtype, shape, no overlap with an input), or a new array of `dev`."""
    xp = dev.xp
    if out is None:
        return xp.empty(shape, dtype=dtype)
    if dtype == np.float32:
        check_f32(dev, out, fn, "out")
    else:
        check_typed(dev, out, dtype, fn, "out", "the output")
    check_shape(out, shape, fn, "out")
    for x in inputs:
        if x is not None and xp.may_share_memory(out, x):
            raise ValueError(f"{fn}: out must not overlap an input array")
    return out


def ptr(x) -> int:
    """The device address of array x (0 for None), as the CUDA launchers take it."""
    return 0 if x is None else x.data.ptr
