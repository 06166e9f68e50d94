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
        wide = stored.astype(np.uint32)
        wide <<= 16  # in place: one temporary of the output's size
        return wide.view(np.float32)
    return stored.astype(np.float32)


def encode(values: np.ndarray, dtype: str) -> np.ndarray:
    """float32 values as the bytes of `dtype` elements (a flat little-endian uint8 array)."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    if dtype == "bfloat16":  # round to nearest even: add 0x7FFF plus the lowest kept bit, keep the top 16 bits
        bits = values.view(np.uint32)
        rounded = bits >> 16
        rounded &= 1
        rounded += 0x7FFF
        rounded += bits
        rounded >>= 16
        stored = rounded.astype(np.uint16)
        nan = np.isnan(values)
        if nan.any():
            stored[nan] = 0x7FC0
    else:
        with np.errstate(over="ignore"):  # float16 overflow gives Inf, as torch's does
            stored = values.astype(_LITTLE[dtype])
    return stored.astype(stored.dtype.newbyteorder("<"), copy=False).reshape(-1).view(np.uint8)
