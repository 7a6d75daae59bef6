"""The KV cache: what attention remembers between generated tokens.

Generating token t+1 needs the keys and values of tokens 0..t at every layer. Recomputing
them would make every step cost as much as the whole prompt; keeping them makes a step cost
one token. The cache holds, per layer, preallocated K and V buffers [B, Hkv, max_len, head_dim]
filled left to right, and the token ids they came from, so a new prompt that starts with the
same tokens (the next turn of a chat) only computes the part that is new (prompt caching).

dtype: float32, or float16 to halve the bytes every decode step reads (at a few thousand
tokens of context the cache outweighs a small model's weights). A half cache stores K and V
rounded to nearest even and every attention kernel widens them back to float32 (exactly) before
any arithmetic, as llama.cpp's default f16 cache does.
"""
from __future__ import annotations

from typing import List, Sequence

import numpy as np

from .device import array_module

__all__ = ["KVCache", "kv_dtype"]

def kv_dtype(dtype) -> np.dtype:
    """The np.dtype of a KV cache: 'float32' or 'float16' (a name or a numpy dtype)."""
    try:
        dt = np.dtype(dtype) if dtype is not None else None
    except TypeError:
        dt = None
    if dt not in (np.float32, np.float16):
        raise ValueError(f"KV cache dtype must be 'float32' or 'float16', got {dtype!r}")
    return dt


class KVCache:
    def __init__(self, n_layer: int, n_kv_head: int, head_dim: int, max_len: int, batch: int = 1,
                 device: str = "cpu", dtype="float32"):
        if min(n_layer, n_kv_head, head_dim, max_len, batch) < 1:
            raise ValueError("KVCache: every dimension must be >= 1")
        dtype = kv_dtype(dtype)
        if dtype != np.float32 and device != "cpu":
            raise ValueError(f"KVCache: a {dtype.name} cache runs on the CPU only, not on "
                             f"{device!r} (use dtype='float32')")
        xp = array_module(device)  # the buffers live where the model runs (GPT.to)
        self.max_len, self.device, self.dtype = max_len, device, dtype
        shape = (batch, n_kv_head, max_len, head_dim)
        # one buffer, layer after layer (K then V): large enough for numpy to ask for huge pages,
        # which spares a decode step's reads of the cache TLB misses
        buf = xp.zeros((n_layer, 2) + shape, dtype)
        self.k: List[np.ndarray] = [buf[i, 0] for i in range(n_layer)]
        self.v: List[np.ndarray] = [buf[i, 1] for i in range(n_layer)]
        self.length = 0          # positions filled (the same for every layer)
        self.tokens: List[int] = []  # the ids at those positions (batch entry 0)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.k) + sum(a.nbytes for a in self.v)

    def write(self, layer: int, k_new: np.ndarray, v_new: np.ndarray) -> None:
        """Stores k_new, v_new [B, Hkv, T, hd] at positions length .. length+T-1 of a layer
        (call ``advance(T)`` once every layer has written); a float16 cache rounds them to
        nearest even (values beyond +-65504 become inf)."""
        T = k_new.shape[2]
        if self.length + T > self.max_len:
            raise ValueError(f"KV cache full: {self.length} + {T} tokens > max_len {self.max_len}")
        with np.errstate(over="ignore"):  # a float16 cache: inf past 65504, as the kernels do
            self.k[layer][:, :, self.length: self.length + T] = k_new
            self.v[layer][:, :, self.length: self.length + T] = v_new

    def advance(self, token_ids: Sequence[int]) -> None:
        n = len(token_ids)
        if self.length + n > self.max_len:
            raise ValueError(f"KV cache full: {self.length} + {n} tokens > max_len {self.max_len}")
        self.length += n
        self.tokens.extend(int(t) for t in token_ids)

    def truncate(self, length: int) -> None:
        """Forgets every position from `length` on (the buffers are reused, not cleared)."""
        if not 0 <= length <= self.length:
            raise ValueError(f"truncate: length must be in [0, {self.length}], got {length}")
        self.length = length
        del self.tokens[length:]

    def reset(self) -> None:
        self.truncate(0)

    def common_prefix(self, token_ids: Sequence[int]) -> int:
        """How many leading tokens of token_ids are already cached."""
        n = 0
        for cached, new in zip(self.tokens, token_ids):
            if cached != int(new):
                break
            n += 1
        return n
