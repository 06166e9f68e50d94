"""Yield output tensors in write order, each as row chunks read lazily from the sources; knows no architecture."""

from __future__ import annotations

import zlib
from collections.abc import Iterator

from moemerge.errors import SourceError
from moemerge.plan import FromModel, FromRouter, PlannedTensor, Zeros
from moemerge.sources import ModelSource

CHUNK_BYTES = 64 * 1024**2  # one read/convert/write step; bounds memory whatever the tensor size


def _row_ranges(tensor: PlannedTensor) -> list[slice | None]:
    if len(tensor.shape) < 2 or tensor.nbytes <= CHUNK_BYTES:
        return [None]
    rows = tensor.shape[0]
    step = max(1, rows * CHUNK_BYTES // tensor.nbytes)
    return [slice(start, min(start + step, rows)) for start in range(0, rows, step)]


def _transform(raw, tensor: PlannedTensor, rows: slice | None, seed: int):
    import torch

    dtype = getattr(torch, tensor.dtype)
    if tensor.noise_scale == 0.0 and tensor.scale == 1.0:
        return raw.to(dtype)
    work = raw.float()
    if tensor.noise_scale:
        start = 0 if rows is None else rows.start
        generator = torch.Generator().manual_seed(zlib.crc32(f"{seed}:{tensor.name}:{start}".encode()))
        work += torch.randn(work.shape, generator=generator) * tensor.noise_scale
    if tensor.scale != 1.0:
        work *= tensor.scale
    return work.to(dtype)


def _chunks(tensor: PlannedTensor, sources: list[ModelSource], routers, seed: int) -> Iterator:
    import torch

    match tensor.source:
        case FromRouter(layer=layer, group=group):
            yield routers[group][layer].to(getattr(torch, tensor.dtype))
        case Zeros():
            yield torch.zeros(tensor.shape, dtype=getattr(torch, tensor.dtype))
        case FromModel(model=model, name=name, start=start):
            source = sources[model]
            partial = start != 0 or tensor.shape != source.tensors[name].shape  # a piece of a fused tensor
            for rows in _row_ranges(tensor):
                if partial:
                    rows = rows or slice(0, tensor.shape[0])
                    rows = slice(start + rows.start, start + rows.stop)
                raw = source.read(name, rows)
                if raw.is_floating_point() and not raw.isfinite().all():
                    raise SourceError(f"model '{source.ref}': tensor {name} contains NaN or Inf; the model is broken")
                yield _transform(raw, tensor, rows, seed)


def stream_tensors(tensors: list[PlannedTensor], *, sources: list[ModelSource], routers, seed: int):
    """(name, iterator of chunks) for each planned tensor; chunks are consecutive row blocks in the output dtype.

    `routers` maps a router group (`routed`, `shared`) to a (layers, rows, hidden) tensor.
    """
    for tensor in tensors:
        yield tensor.name, _chunks(tensor, sources, routers, seed)
