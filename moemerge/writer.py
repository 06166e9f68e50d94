"""Streaming safetensors writer: header first, then data chunk by chunk; index json. Knows no plan type."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from moemerge.errors import MergeFailedError
from moemerge.sources import ST_DTYPES, TORCH_TO_ST

log = logging.getLogger(__name__)


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


def _write_tensor(fh, name: str, expected: int, chunks: Iterable) -> None:
    import torch

    written = 0
    for chunk in chunks:
        data = chunk.contiguous().reshape(-1).view(torch.uint8).numpy()
        fh.write(memoryview(data))
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
    """Write every shard in order from `stream` (name, chunks), then the index when there are several shards."""
    for layout in layouts:
        log.info("writing %s", layout.filename)
        with open(folder / layout.filename, "wb") as fh:
            fh.write(header_bytes(layout.entries))
            for name, dtype, shape in layout.entries:
                got, chunks = next(stream)
                if got != name:
                    raise MergeFailedError(f"tensor stream out of order: got {got}, expected {name}")
                _write_tensor(fh, name, _nbytes(dtype, shape), chunks)
                on_tensor(name, _nbytes(dtype, shape))
    if len(layouts) > 1:
        write_index(folder, layouts)


def write_index(folder: Path, layouts: list[ShardLayout]) -> None:
    total = sum(_nbytes(dtype, shape) for layout in layouts for _, dtype, shape in layout.entries)
    weight_map = {name: layout.filename for layout in layouts for name, _, _ in layout.entries}
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
