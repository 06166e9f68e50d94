"""Streaming safetensors writer: header first, then data chunk by chunk (tensors written from memory, byte ranges of
source files copied by the kernel); index json. Knows no plan type."""

from __future__ import annotations

import errno
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from moemerge.errors import MergeFailedError, SourceError
from moemerge.sources.folder import ByteRange
from moemerge.sources.headers import ST_DTYPES, TORCH_TO_ST

log = logging.getLogger(__name__)
# copy_file_range refusals that mean "not here" (old kernel, other filesystem, special file), not a failed copy
NO_KERNEL_COPY = {errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL}
BUFFER_BYTES = 16 * 2**20


@dataclass(frozen=True)
class ShardLayout:
    """One output file and the tensors it holds, in write order: (name, torch dtype name, shape)."""

    filename: str
    entries: list[tuple[str, str, tuple[int, ...]]]


def _nbytes(dtype: str, shape: tuple[int, ...]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count * ST_DTYPES[TORCH_TO_ST[dtype]][1]


def header_bytes(entries: list[tuple[str, str, tuple[int, ...]]]) -> bytes:
    """The safetensors header for these tensors laid out back to back, padded to 8 bytes."""
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, dtype, shape in entries:
        end = offset + _nbytes(dtype, shape)
        header[name] = {"dtype": TORCH_TO_ST[dtype], "shape": list(shape), "data_offsets": [offset, end]}
        offset = end
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw


def _write_all(fh, data) -> None:
    """All of `data` to an unbuffered file (whose write may take less than it is given)."""
    view = memoryview(data).cast("B")
    while view:
        view = view[fh.write(view) :]


@dataclass
class _Copier:
    """Copies byte ranges of source files to the output's current position: in the kernel (copy_file_range) where
    the system allows it, else through one reused buffer."""

    kernel: bool = field(default_factory=lambda: hasattr(os, "copy_file_range"))
    fds: dict[Path, int] = field(default_factory=dict)
    buffer: bytearray | None = None

    def copy(self, piece: ByteRange, fh) -> int:
        if piece.file not in self.fds:
            self.fds[piece.file] = os.open(piece.file, os.O_RDONLY)
        src, done = self.fds[piece.file], 0
        while self.kernel and done < piece.length:
            try:
                copied = os.copy_file_range(src, fh.fileno(), piece.length - done, piece.offset + done)
            except OSError as exc:
                if exc.errno not in NO_KERNEL_COPY:
                    raise
                log.info("in-kernel copy unavailable (%s); copying through memory", exc.strerror or exc)
                self.kernel = False
                break
            if copied == 0:
                raise SourceError(f"{piece.file}: file ended early (was it changed during the merge?)")
            done += copied
        while done < piece.length:
            self.buffer = self.buffer or bytearray(BUFFER_BYTES)
            view = memoryview(self.buffer)[: min(BUFFER_BYTES, piece.length - done)]
            os.lseek(src, piece.offset + done, os.SEEK_SET)
            got = os.readv(src, [view])
            if got == 0:
                raise SourceError(f"{piece.file}: file ended early (was it changed during the merge?)")
            _write_all(fh, view[:got])
            done += got
        return done

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


def _write_tensor(fh, name: str, expected: int, chunks: Iterable, copier: _Copier) -> None:
    import numpy as np

    written = 0
    for chunk in chunks:
        if isinstance(chunk, ByteRange):
            written += copier.copy(chunk, fh)
            continue
        if isinstance(chunk, np.ndarray):  # the bytes already (uint8)
            data = chunk
        else:  # a torch tensor in the output dtype
            import torch

            data = chunk.contiguous().reshape(-1).view(torch.uint8).numpy()
        _write_all(fh, data)
        written += data.nbytes
    if written != expected:
        raise MergeFailedError(f"tensor {name}: wrote {written} bytes, expected {expected}")


def write_shards(
    folder: Path,
    layouts: list[ShardLayout],
    stream: Iterator[tuple[str, Iterable]],
    *,
    on_tensor: Callable[[str, int], None] = lambda name, nbytes: None,
) -> None:
    """Write every shard in order from `stream` (name, chunks: tensors or ByteRanges), then the index when there are
    several shards."""
    copier = _Copier()
    try:
        for layout in layouts:
            log.info("writing %s", layout.filename)
            with open(folder / layout.filename, "wb", buffering=0) as fh:
                _write_all(fh, header_bytes(layout.entries))
                for name, dtype, shape in layout.entries:
                    got, chunks = next(stream)
                    if got != name:
                        raise MergeFailedError(f"tensor stream out of order: got {got}, expected {name}")
                    _write_tensor(fh, name, _nbytes(dtype, shape), chunks, copier)
                    on_tensor(name, _nbytes(dtype, shape))
    finally:
        copier.close()
    if len(layouts) > 1:
        write_index(folder, layouts)


def write_index(folder: Path, layouts: list[ShardLayout]) -> None:
    total = sum(_nbytes(dtype, shape) for layout in layouts for _, dtype, shape in layout.entries)
    weight_map = {name: layout.filename for layout in layouts for name, _, _ in layout.entries}
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
