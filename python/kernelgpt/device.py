"""Where arrays live, and the one place that tells them apart.

    "cpu"   numpy arrays; the C++ kernels (kernelgpt._C)
    "cuda"  CuPy arrays on an NVIDIA GPU; the CUDA kernels compiled into kernelgpt._C
    "emu"   kernelgpt.cuda_emu arrays (numpy subclasses); the same CUDA kernels run on the CPU
            by an emulator (kernelgpt._cuda_emu), for checking the GPU path without a GPU

Every kernel in ``kernelgpt.kernels`` looks at its first array argument: a device array
("cuda" or "emu") goes to the CUDA kernels through a :class:`Device`, anything else to the
C++ kernels or the numpy reference. A model moves between devices with ``GPT.to(device)``,
which uses :func:`array_module` and :func:`move`. CuPy is imported only when a CuPy array
arrives or device "cuda" is asked for.
"""
from __future__ import annotations

import numpy as np

from . import _C, cuda_emu

__all__ = ["DEVICES", "is_device_array", "device_of", "array_module", "to_numpy", "move",
           "cuda_available", "Device", "device_for"]

DEVICES = ("cpu", "cuda", "emu")


def device_of(x) -> str:
    """"cuda" for a CuPy array, "emu" for a kernelgpt.cuda_emu array, "cpu" otherwise."""
    module = type(x).__module__
    if module == "kernelgpt.cuda_emu":
        return "emu"
    if module.split(".")[0] == "cupy":
        return "cuda"
    return "cpu"


def is_device_array(x) -> bool:
    """True for CuPy and kernelgpt.cuda_emu arrays (the arrays the CUDA kernels take)."""
    return device_of(x) != "cpu"


def cuda_available() -> bool:
    """True when the kernels were compiled with CUDA, CuPy imports and a GPU is visible."""
    if not hasattr(_C, "cuda_device_count") or _C.cuda_device_count() == 0:
        return False
    try:
        import cupy  # noqa: F401
    except Exception:
        return False
    return True


def array_module(device: str):
    """The array module of a device: numpy ("cpu"), cupy ("cuda"), kernelgpt.cuda_emu ("emu")."""
    if device == "cpu":
        return np
    if device == "emu":
        if not cuda_emu.available():
            raise RuntimeError("device 'emu': kernelgpt was built without the CUDA emulator")
        return cuda_emu
    if device == "cuda":
        if not cuda_available():
            raise RuntimeError("device 'cuda' needs a CUDA build of kernelgpt, CuPy "
                               "(pip install kernelgpt[cuda]) and an NVIDIA GPU; none was found "
                               "(device='emu' runs the CUDA kernels on the CPU instead)")
        import cupy
        return cupy
    raise ValueError(f"device must be 'cpu', 'cuda' or 'emu', got {device!r}")


def to_numpy(a) -> np.ndarray:
    """A host numpy array of a numpy, CuPy or cuda_emu array (a copy for device arrays)."""
    return np.asarray(a.get()) if is_device_array(a) else np.asarray(a)


def move(a, xp):
    """Array `a` on the device of array module xp (no copy when it is already there)."""
    if xp is np:
        return to_numpy(a)
    return xp.asarray(a)


class Device:
    """Where the arrays of one kernel call live: the array module (cupy or kernelgpt.cuda_emu),
    the compiled CUDA launchers (kernelgpt._C or kernelgpt._cuda_emu) and a name for error
    messages. ``stream()`` is the current CUDA stream, on which the kernels are launched."""

    def __init__(self, xp, lib, what: str):
        self.xp, self.lib, self.what = xp, lib, what

    def stream(self) -> int:
        return self.xp.cuda.get_current_stream().ptr


def device_for(x, fn: str) -> Device:
    """The Device of array x (the first array argument of a call to kernel `fn`)."""
    where = device_of(x)
    if where == "emu":
        return Device(cuda_emu, cuda_emu._lib(), "emulated-GPU (kernelgpt.cuda_emu)")
    if where != "cuda":
        raise TypeError(f"{fn}: expected a CuPy or kernelgpt.cuda_emu array, got "
                        f"{type(x).__name__}")
    if not hasattr(_C, "cuda_device_count"):
        raise RuntimeError("kernelgpt was built without CUDA (no nvcc was found at build time); "
                           "kernelgpt.cuda_emu runs the kernels on the CPU instead")
    import cupy
    return Device(cupy, _C, "CuPy")
