"""FlatBuffer: one contiguous float32 array with named, shaped views into it.

Like llm.c, the model keeps all its parameters in one buffer, their gradients in a second of
the same layout, and the activations a training step saves for the backward pass in a third:
one allocation each, AdamW runs over each parameter range in one call, a checkpoint is one
copy, and moving a model to a GPU moves three arrays.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import numpy as np

__all__ = ["FlatBuffer"]


class FlatBuffer:
    """One contiguous float32 array with named, shaped views into it."""

    def __init__(self, layout: List[Tuple[str, Tuple[int, ...]]], data: Optional[np.ndarray] = None,
                 dtype=np.float32, xp=np):
        self.layout = list(layout)
        self.offsets: Dict[str, Tuple[int, Tuple[int, ...]]] = {}
        offset = 0
        for name, shape in self.layout:
            self.offsets[name] = (offset, tuple(shape))
            offset += int(np.prod(shape))
        self.size = offset
        if data is None:
            data = xp.zeros(offset, dtype=dtype)  # xp: numpy, cupy or kernelgpt.cuda_emu
        if data.dtype != dtype or data.shape != (offset,) or not data.flags.c_contiguous:
            raise ValueError(f"FlatBuffer: data must be contiguous {np.dtype(dtype).name} of "
                             f"shape ({offset},)")
        self.data = data
        self.views = {name: self.view(name) for name, _ in self.layout}

    def view(self, name: str) -> np.ndarray:
        offset, shape = self.offsets[name]
        return self.data[offset: offset + int(np.prod(shape))].reshape(shape)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.views[name]

    def __setitem__(self, name: str, value) -> None:
        view = self.views[name]  # `buf[name] += x` updates the view in place, then lands here
        if value is not view:
            view[...] = value

    def __contains__(self, name: str) -> bool:
        return name in self.views

    def names(self) -> List[str]:
        return [name for name, _ in self.layout]

    def zero(self) -> None:
        self.data.fill(0.0)
