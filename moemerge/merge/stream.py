"""Yield output tensors in write order, as chunks read lazily from the sources; knows no architecture. A chunk is, for
a tensor that needs no change (the common case), a ByteRange of a source file; else its bytes in the output dtype: a
uint8 numpy array (routers, zeros, dtype changes: no torch needed) or a torch tensor (noise, scale, .bin sources)."""

from __future__ import annotations

import zlib
from collections.abc import Iterator

from moemerge.errors import MergeFailedError, SourceError
from moemerge.merge.finite import Prechecks, has_nonfinite
from moemerge.merge.tensor_plan import FromModel, FromRouter, PlannedTensor, Zeros
from moemerge.sources.folder import ByteRange, ModelSource

CHUNK_BYTES = 64 * 1024**2  # one read/convert/write (or copy) step; bounds memory whatever the tensor size


def _pieces(where: ByteRange) -> list[ByteRange]:
    """`where` in pieces of CHUNK_BYTES (whole elements: CHUNK_BYTES is a multiple of every element size)."""
    return [ByteRange(where.file, where.offset + start, min(CHUNK_BYTES, where.length - start), where.dtype)
            for start in range(0, where.length, CHUNK_BYTES)]  # fmt: skip


def _checked_pieces(where: ByteRange, error: SourceError, prechecks: Prechecks) -> Iterator[ByteRange]:
    """The pieces of `where` for the writer to copy. Each one's Inf/NaN verdict (tested on a thread, ahead of the
    copy) is awaited when the writer asks for the next piece: a bad piece stops the merge (the writer asks once more
    after the last piece) before anything is published."""
    for piece in _pieces(where):
        yield piece
        if prechecks.nonfinite(piece):
            raise error


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


def _unchanged(tensor: PlannedTensor, sources: list[ModelSource]) -> ByteRange | None:
    """The stored bytes of the source tensor (or row range of a fused one) that the output takes as they are, if so."""
    if not isinstance(tensor.source, FromModel) or tensor.noise_scale or tensor.scale != 1.0:
        return None
    source, name = sources[tensor.source.model], tensor.source.name
    if tensor.dtype != source.tensors[name].dtype:
        return None
    return source.byte_range(name, _source_rows(tensor, source))


def _source_rows(tensor: PlannedTensor, source: ModelSource) -> slice | None:
    """The source rows a tensor takes; None for the whole source tensor."""
    start, info = tensor.source.start, source.tensors[tensor.source.name]
    partial = start != 0 or tensor.shape != info.shape  # a piece of a fused tensor
    return slice(start, start + tensor.shape[0]) if partial else None


def _from_model(tensor: PlannedTensor, sources: list[ModelSource], seed: int, prechecks: Prechecks) -> Iterator:
    source, name = sources[tensor.source.model], tensor.source.name
    error = SourceError(f"model '{source.ref}': tensor {name} contains NaN or Inf; the model is broken")
    where = _unchanged(tensor, sources)
    if where is not None:
        yield from _checked_pieces(where, error, prechecks)
        return
    whole = _source_rows(tensor, source)
    for rows in _row_ranges(tensor):
        if whole is not None:
            rows = rows or slice(0, tensor.shape[0])
            rows = slice(whole.start + rows.start, whole.start + rows.stop)
        yield _converted(tensor, source, name, rows, seed, error)


def _converted(tensor: PlannedTensor, source: ModelSource, name: str, rows: slice | None, seed: int, error):
    """Rows of a source tensor in the output dtype: a dtype change alone in numpy, noise and scale in torch."""
    from moemerge.sources import arrays

    stored_dtype = source.tensors[name].dtype
    plain = tensor.noise_scale == 0.0 and tensor.scale == 1.0 and {stored_dtype, tensor.dtype} <= set(arrays.DTYPES)
    stored = source.read_stored(name, rows) if plain else None
    if stored is not None:
        buffer, shape = stored
        if has_nonfinite(buffer, stored_dtype):
            raise error
        return _computed_finite(arrays.encode(arrays.decode(buffer, stored_dtype, shape), tensor.dtype), tensor)
    import torch

    raw = source.read(name, rows).contiguous()  # a LoRA expert's W + scale * (B @ A) is computed here
    if has_nonfinite(raw.reshape(-1).view(torch.uint8).numpy(), str(raw.dtype).removeprefix("torch.")):
        raise error
    return _computed_finite(_transform(raw, tensor, rows, seed), tensor)


def _computed_finite(chunk, tensor: PlannedTensor):
    """A tensor the merge computed (scaled, noised, converted to a narrower dtype, a router) must hold no Inf/NaN
    either: finite inputs can overflow (float16 tops out at 65504)."""
    if hasattr(chunk, "numpy"):  # a torch tensor (noise, scale, .bin sources); else already bytes in numpy
        import torch

        chunk_bytes = chunk.reshape(-1).view(torch.uint8).numpy()
    else:
        chunk_bytes = chunk
    if has_nonfinite(chunk_bytes, tensor.dtype):
        steps = [f"noise_scale {tensor.noise_scale}"] * bool(tensor.noise_scale)
        steps += [f"residual_scale {tensor.scale}"] * (tensor.scale != 1.0) + [f"the cast to {tensor.dtype}"]
        raise MergeFailedError(f"{tensor.name}: Inf or NaN after {' and '.join(steps)}; the values leave the "
                               "dtype's range: use a smaller scale or a wider dtype")  # fmt: skip
    return chunk


def _chunks(tensor: PlannedTensor, sources: list[ModelSource], routers, seed: int, prechecks: Prechecks) -> Iterator:
    import numpy as np

    from moemerge.sources import arrays

    match tensor.source:
        case FromRouter(layer=layer, group=group):
            yield _computed_finite(arrays.encode(routers[group][layer], tensor.dtype), tensor)
        case Zeros():
            yield np.zeros(tensor.nbytes, dtype=np.uint8)
        case FromModel():
            yield from _from_model(tensor, sources, seed, prechecks)


def stream_tensors(tensors: list[PlannedTensor], *, sources: list[ModelSource], routers, seed: int):
    """(name, iterator of chunks) for each planned tensor; chunks are consecutive pieces of it, each a tensor (row
    block) in the output dtype or a ByteRange to copy as stored.

    `routers` maps a router group (`routed`, `shared`) to a (layers, rows, hidden) tensor.
    """
    copied = (_unchanged(tensor, sources) for tensor in tensors)
    prechecks = Prechecks(piece for where in copied if where is not None for piece in _pieces(where))
    try:
        for tensor in tensors:
            yield tensor.name, _chunks(tensor, sources, routers, seed, prechecks)
    finally:
        prechecks.cancel()
