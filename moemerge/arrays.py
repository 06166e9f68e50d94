"""float32 / float16 / bfloat16 values as numpy arrays: stored bytes to float32 and float32 to stored bytes, bit for
bit as torch's `.to(dtype)` converts them (round to nearest even, overflow to Inf; a NaN becomes some NaN: a merge
never writes one, sources with NaN are refused). A merge whose tensors only change dtype and whose routers are cheap
(`cheap_embed`, `uniform_random`) needs no torch (~1 s to import). tests/test_arrays.py checks them against torch."""

from __future__ import annotations

from typing import Any

import numpy as np

DTYPES = ("float32", "float16", "bfloat16")  # what decode() and encode() handle
_LITTLE = {"float32": "<f4", "float16": "<f2", "bfloat16": "<u2"}


def decode(buffer: Any, dtype: str, shape: tuple[int, ...] | list[int]) -> np.ndarray:
    """Stored little-endian `dtype` elements as a float32 array of `shape` (a new array)."""
    stored = np.frombuffer(buffer, dtype=_LITTLE[dtype]).reshape(shape)
    if dtype == "bfloat16":
        return (stored.astype(np.uint32) << 16).view(np.float32)
    return stored.astype(np.float32)


def encode(values: np.ndarray, dtype: str) -> np.ndarray:
    """float32 values as the bytes of `dtype` elements (a flat little-endian uint8 array)."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    if dtype == "bfloat16":
        bits = values.view(np.uint32)
        stored = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
        stored[np.isnan(values)] = 0x7FC0
    else:
        with np.errstate(over="ignore"):  # float16 overflow gives Inf, as torch's does
            stored = values.astype(_LITTLE[dtype])
    return stored.astype(stored.dtype.newbyteorder("<"), copy=False).reshape(-1).view(np.uint8)
