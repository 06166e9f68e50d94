"""moemerge.sources.arrays against torch: decoding stored bytes and encoding float32 give torch's bits exactly, edge values
(Inf, NaN, subnormals, rounding ties, overflow to Inf) included."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from moemerge.sources import arrays


def _values() -> torch.Tensor:
    rng = torch.Generator().manual_seed(0)
    normal = torch.randn(10_000, generator=rng) * torch.logspace(-40, 38, 10_000).float()
    special = torch.tensor([0.0, -0.0, float("inf"), float("-inf"), float("nan"), -float("nan"), 1e-45, -1e-45,
                            1.17549435e-38, 3.4028235e38, -3.4028235e38, 65504.0, 65520.0, 1e-8, 6e-8])  # fmt: skip
    ties = torch.tensor([0x3F808000, 0x3F818000, 0x3F80C000, 0x3F807FFF, 0x7F7F8000, 0xFF7FFFFF], dtype=torch.int64)
    return torch.cat([normal, special, ties.to(torch.int32).view(torch.float32)])


@pytest.mark.parametrize("dtype", arrays.DTYPES)
def test_encode_is_torch_to(dtype):
    values = _values()
    ours = arrays.encode(values.numpy(), dtype)
    theirs = values.to(getattr(torch, dtype)).view(torch.uint8).numpy()
    assert ours.dtype == np.uint8
    _same_bits(ours, theirs, dtype)


def _same_bits(ours: np.ndarray, theirs: np.ndarray, dtype: str) -> None:
    """Equal bytes, except that a NaN may be any NaN (torch's own paths differ: 0x7FC0 scalar, 0xFFFF vectorised;
    a merge never writes one: NaN sources are refused)."""
    if dtype != "bfloat16":
        assert ours.tobytes() == theirs.tobytes()
        return
    a, b = ours.view(np.uint16), theirs.view(np.uint16)
    nan_a, nan_b = (a & 0x7FFF) > 0x7F80, (b & 0x7FFF) > 0x7F80
    assert (nan_a == nan_b).all() and (a[~nan_a] == b[~nan_b]).all()


@pytest.mark.parametrize("dtype", arrays.DTYPES)
def test_decode_is_torch_float(dtype):
    stored = _values().to(getattr(torch, dtype))
    raw = stored.view(torch.uint8).numpy().tobytes()
    ours = arrays.decode(raw, dtype, (stored.shape[0],))
    theirs = stored.float().numpy()
    assert ours.dtype == np.float32 and ours.tobytes() == theirs.tobytes()


@pytest.mark.parametrize("source", arrays.DTYPES)
@pytest.mark.parametrize("target", arrays.DTYPES)
def test_dtype_changes_are_torch_to(source, target):
    """A merge's dtype change (source bytes -> float32 -> target bytes) equals torch's direct .to(target)."""
    stored = _values().to(getattr(torch, source))
    raw = stored.view(torch.uint8).numpy().tobytes()
    ours = arrays.encode(arrays.decode(raw, source, (stored.shape[0],)), target)
    _same_bits(ours, stored.to(getattr(torch, target)).view(torch.uint8).numpy(), target)
