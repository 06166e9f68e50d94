"""Reading a model folder's metadata without trusting it: small JSON files (config, index) and safetensors headers,
checked as strictly as the safetensors library checks them, before any weight is read."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moemerge.errors import SourceError

MAX_JSON_BYTES = 64 * 2**20
MAX_HEADER = 100_000_000  # the safetensors library's own limit on the header's length
# safetensors dtype code -> (torch dtype name, bytes per element)
ST_DTYPES = {
    "F64": ("float64", 8), "F32": ("float32", 4), "F16": ("float16", 2), "BF16": ("bfloat16", 2),
    "I64": ("int64", 8), "I32": ("int32", 4), "I16": ("int16", 2), "I8": ("int8", 1), "U8": ("uint8", 1),
    "BOOL": ("bool", 1), "F8_E4M3": ("float8_e4m3fn", 1), "F8_E5M2": ("float8_e5m2", 1),
}  # fmt: skip
TORCH_TO_ST = {torch_name: code for code, (torch_name, _) in ST_DTYPES.items()}


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives and what it looks like, from headers only. `dtype` is a torch dtype name."""

    file: Path
    dtype: str
    shape: tuple[int, ...]
    offset: int = 0  # safetensors: where the tensor's bytes start in the file


def read_json(file: Path) -> Any:
    """A model's JSON file (config, index); a device, a pipe or an absurdly large file is refused, not read forever."""
    if not file.is_file() or file.stat().st_size > MAX_JSON_BYTES:
        raise SourceError(f"{file}: not a regular JSON file under {MAX_JSON_BYTES // 2**20} MB")
    return json.loads(file.read_text())


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _entry(file: Path, name: str, entry: Any) -> tuple[str, tuple[int, ...], int, int]:
    """(torch dtype, shape, begin, end) of one header entry; anything malformed is refused, naming the tensor."""
    where = f"{file}: tensor '{name}'"
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
        raise SourceError(f"{where}: header entry lacks dtype, shape or data_offsets; the file is corrupt")
    if entry["dtype"] not in ST_DTYPES:
        raise SourceError(f"{where}: unsupported dtype {str(entry['dtype'])[:20]!r} "
                          f"(supported: {', '.join(ST_DTYPES)})")  # fmt: skip
    shape, offsets = entry["shape"], entry["data_offsets"]
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise SourceError(f"{where}: shape is not a list of non-negative integers; the file is corrupt")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(x) for x in offsets):
        raise SourceError(f"{where}: data_offsets is not a pair of non-negative integers; the file is corrupt")
    return ST_DTYPES[entry["dtype"]][0], tuple(shape), offsets[0], offsets[1]


def read_safetensors_header(file: Path) -> dict[str, TensorInfo]:
    """Parse and validate a safetensors header (8-byte length + JSON object), as the safetensors library does: the
    tensors' byte ranges, in offset order, start at 0, touch without gap or overlap, end exactly at the end of the
    file, and each is exactly shape x dtype size long. Nothing else in the file is read."""
    try:
        size = file.stat().st_size
        with open(file, "rb") as fh:
            length = int.from_bytes(fh.read(8), "little")
            if size < 8 or length < 2 or length > min(MAX_HEADER, size - 8):
                raise SourceError(f"{file}: not a safetensors file (bad header length); re-download it")
            raw = fh.read(length)
        if not raw.startswith(b"{"):
            raise SourceError(f"{file}: not a safetensors file (header is not a JSON object); re-download it")
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise SourceError(f"{file}: corrupt safetensors header (not JSON); re-download it") from None
    except OSError as exc:
        if isinstance(exc, SourceError):
            raise
        raise SourceError(f"{file}: cannot read ({exc.strerror or exc})") from None
    if not isinstance(header, dict):
        raise SourceError(f"{file}: corrupt safetensors header; re-download it")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise SourceError(f"{file}: __metadata__ is not a map of strings; the file is corrupt")
    entries = sorted(((_entry(file, name, e), name) for name, e in header.items()), key=lambda x: x[0][2:])
    out, expected, name = {}, 0, None
    for (dtype, shape, begin, end), name in entries:
        if begin != expected or end < begin:
            problem = "overlaps the previous tensor" if begin < expected else "leaves a gap before it"
            if end < begin:
                problem = "ends before it starts"
            raise SourceError(f"{file}: tensor '{name}' has invalid data_offsets [{begin}, {end}] ({problem}; "
                              f"expected to start at {expected}); the file is corrupt: re-download it")  # fmt: skip
        count = 1
        for dim in shape:
            count *= dim
        if end - begin != count * ST_DTYPES[TORCH_TO_ST[dtype]][1]:
            raise SourceError(f"{file}: tensor '{name}' is {end - begin} bytes but shape {list(shape)} of {dtype} "
                              f"needs {count * ST_DTYPES[TORCH_TO_ST[dtype]][1]}; the file is corrupt")  # fmt: skip
        out[name] = TensorInfo(file, dtype, shape, 8 + length + begin)
        expected = end
    if 8 + length + expected > size:
        raise SourceError(f"{file}: truncated or corrupt (tensor '{name}' runs past the end of the file, "
                          f"{size} bytes); re-download it")  # fmt: skip
    if 8 + length + expected < size:
        after = f"after tensor '{name}'" if name else "after the header"
        raise SourceError(f"{file}: {size - 8 - length - expected} trailing bytes {after} that no tensor covers; "
                          "the file is corrupt: re-download it")  # fmt: skip
    return out
