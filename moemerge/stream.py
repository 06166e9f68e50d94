"""Yield output tensors in write order, as chunks read lazily from the sources; knows no architecture. A chunk is a
tensor in the output dtype, or, for a tensor that needs no change (the common case), a ByteRange of a source file."""

from __future__ import annotations

import mmap
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import cache

from moemerge.errors import SourceError
from moemerge.plan import FromModel, FromRouter, PlannedTensor, Zeros
from moemerge.sources import ByteRange, ModelSource

CHUNK_BYTES = 64 * 1024**2  # one read/convert/write step; bounds memory whatever the tensor size
CHECK_BLOCK = 2**18  # elements per Inf/NaN test: its temporary stays in the CPU cache
# float dtype -> (integer view, mask that drops the sign bit, smallest masked value that is Inf or NaN)
NONFINITE = {
    "float64": ("<u8", 0x7FFF_FFFF_FFFF_FFFF, 0x7FF0_0000_0000_0000),
    "float32": ("<u4", 0x7FFF_FFFF, 0x7F80_0000),
    "float16": ("<u2", 0x7FFF, 0x7C00),
    "bfloat16": ("<u2", 0x7FFF, 0x7F80),
    "float8_e5m2": ("u1", 0x7F, 0x7C),
    "float8_e4m3fn": ("u1", 0x7F, 0x7F),  # no Inf; S.1111.111 is NaN
}


def has_nonfinite(buffer, dtype: str) -> bool:
    """Whether the `dtype` elements in `buffer` include an Inf or NaN: every exponent bit set (and, for e4m3fn, every
    mantissa bit), tested on the integer bits, which costs a fraction of `isfinite()`."""
    if dtype not in NONFINITE:
        return False
    import numpy as np

    code, mask, limit = NONFINITE[dtype]
    values = np.frombuffer(buffer, dtype=code)
    return any((values[i : i + CHECK_BLOCK] & mask).max() >= limit for i in range(0, values.size, CHECK_BLOCK))


def _mapped_nonfinite(piece: ByteRange) -> bool:
    """The Inf/NaN test on a read-only map of the file's pages, unmapped on return: nothing is copied into this process
    and its resident memory does not grow."""
    aligned = piece.offset - piece.offset % mmap.ALLOCATIONGRANULARITY
    with (
        open(piece.file, "rb", buffering=0) as fh,
        mmap.mmap(fh.fileno(), piece.offset + piece.length - aligned, prot=mmap.PROT_READ, offset=aligned) as mapped,
    ):
        view = memoryview(mapped)[piece.offset - aligned :]
        try:
            return has_nonfinite(view, piece.dtype)
        finally:
            view.release()


@cache
def _checker() -> ThreadPoolExecutor:
    """One background thread for the Inf/NaN tests, for the life of the process."""
    return ThreadPoolExecutor(1, thread_name_prefix="moemerge-check")


def _checked_pieces(where: ByteRange, error: SourceError) -> Iterator[ByteRange]:
    """`where` in pieces of CHUNK_BYTES (whole elements). Each piece's Inf/NaN test runs on a thread while the writer
    copies that piece (both release the GIL; they read the same pages once from disk), and its verdict is awaited when
    the writer asks for the next piece: a bad piece stops the merge (the writer asks once more after the last piece)
    before anything is published."""
    for start in range(0, where.length, CHUNK_BYTES):
        piece = ByteRange(where.file, where.offset + start, min(CHUNK_BYTES, where.length - start), where.dtype)
        verdict = _checker().submit(_mapped_nonfinite, piece) if piece.dtype in NONFINITE else None
        yield piece
        if verdict is not None and verdict.result():
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


def _unchanged(tensor: PlannedTensor, source: ModelSource, name: str, rows: slice | None) -> ByteRange | None:
    """The stored bytes of a source tensor (or row range) that the output takes as they are, if it does."""
    if tensor.noise_scale or tensor.scale != 1.0 or tensor.dtype != source.tensors[name].dtype:
        return None
    return source.byte_range(name, rows)


def _from_model(tensor: PlannedTensor, source: ModelSource, name: str, start: int, seed: int) -> Iterator:
    import torch

    error = SourceError(f"model '{source.ref}': tensor {name} contains NaN or Inf; the model is broken")
    partial = start != 0 or tensor.shape != source.tensors[name].shape  # a piece of a fused tensor
    where = _unchanged(tensor, source, name, slice(start, start + tensor.shape[0]) if partial else None)
    if where is not None:
        yield from _checked_pieces(where, error)
        return
    for rows in _row_ranges(tensor):
        if partial:
            rows = rows or slice(0, tensor.shape[0])
            rows = slice(start + rows.start, start + rows.stop)
        raw = source.read(name, rows).contiguous()
        if has_nonfinite(raw.reshape(-1).view(torch.uint8).numpy(), str(raw.dtype).removeprefix("torch.")):
            raise error
        yield _transform(raw, tensor, rows, seed)


def _chunks(tensor: PlannedTensor, sources: list[ModelSource], routers, seed: int) -> Iterator:
    import torch

    match tensor.source:
        case FromRouter(layer=layer, group=group):
            yield routers[group][layer].to(getattr(torch, tensor.dtype))
        case Zeros():
            yield torch.zeros(tensor.shape, dtype=getattr(torch, tensor.dtype))
        case FromModel(model=model, name=name, start=start):
            yield from _from_model(tensor, sources[model], name, start, seed)


def stream_tensors(tensors: list[PlannedTensor], *, sources: list[ModelSource], routers, seed: int):
    """(name, iterator of chunks) for each planned tensor; chunks are consecutive pieces of it, each a tensor (row
    block) in the output dtype or a ByteRange to copy as stored.

    `routers` maps a router group (`routed`, `shared`) to a (layers, rows, hidden) tensor.
    """
    for tensor in tensors:
        yield tensor.name, _chunks(tensor, sources, routers, seed)
