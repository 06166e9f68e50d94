"""A model source (local folder or Hub snapshot): its config.json, tensor headers, and lazy tensor reads."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moemerge import hub
from moemerge.errors import SourceError
from moemerge.files import read_json

log = logging.getLogger(__name__)

# safetensors dtype code -> (torch dtype name, bytes per element)
ST_DTYPES = {
    "F64": ("float64", 8), "F32": ("float32", 4), "F16": ("float16", 2), "BF16": ("bfloat16", 2),
    "I64": ("int64", 8), "I32": ("int32", 4), "I16": ("int16", 2), "I8": ("int8", 1), "U8": ("uint8", 1),
    "BOOL": ("bool", 1), "F8_E4M3": ("float8_e4m3fn", 1), "F8_E5M2": ("float8_e5m2", 1),
}  # fmt: skip
TORCH_TO_ST = {torch_name: code for code, (torch_name, _) in ST_DTYPES.items()}
MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives and what it looks like, from headers only. `dtype` is a torch dtype name."""

    file: Path
    dtype: str
    shape: tuple[int, ...]
    offset: int = 0  # safetensors: where the tensor's bytes start in the file


@dataclass(eq=False)
class ModelSource:
    """One model as the config names it; tensors are read lazily (memory-mapped) on demand."""

    ref: str
    path: Path
    config: dict[str, Any]
    tensors: dict[str, TensorInfo]
    revision: str | None = None
    download_bytes: int = 0  # dry run of a Hub model: bytes of needed weights not in the local cache yet
    _handles: dict[Path, Any] = field(default_factory=dict, repr=False)

    @property
    def has_files(self) -> bool:
        """False for a dry run's Hub model, known by its remote headers only."""
        return all(info.file.is_absolute() for info in self.tensors.values())

    @property
    def model_type(self) -> str:
        return str(self.config.get("model_type", "?"))

    def read(self, name: str, rows: slice | None = None):
        """The tensor `name` (or a range of its first dimension) as a torch tensor; reads only those bytes.

        safetensors data is read with plain positioned reads, not a memory map, so pages of the source files never
        count towards (or pile up in) this process's resident memory.
        """
        import torch

        info = self.tensors[name]
        if info.file.suffix == ".bin":
            tensor = self._handle(info.file)[name]
            return (tensor if rows is None else tensor[rows]).clone()
        shape = list(info.shape)
        row_bytes = _element_size(info.dtype)
        for dim in shape[1:]:
            row_bytes *= dim
        start, stop = (0, shape[0] if shape else 1) if rows is None else (rows.start, rows.stop)
        if shape:
            shape[0] = stop - start
        buffer = bytearray((stop - start) * row_bytes)
        fh = self._handle(info.file)
        fh.seek(info.offset + start * row_bytes)
        if fh.readinto(buffer) != len(buffer):
            raise SourceError(f"{info.file}: file ended early while reading {name}; re-download the model")
        flat = torch.frombuffer(buffer, dtype=torch.uint8) if buffer else torch.empty(0, dtype=torch.uint8)
        return flat.view(getattr(torch, info.dtype)).reshape(shape)

    def _handle(self, file: Path):
        if file not in self._handles:
            self._handles[file] = _open_weights(file)
        return self._handles[file]

    def close(self) -> None:
        for handle in self._handles.values():
            if hasattr(handle, "close"):
                handle.close()
        self._handles.clear()


def _element_size(dtype: str) -> int:
    return ST_DTYPES[TORCH_TO_ST[dtype]][1]


def _open_weights(file: Path):
    """A .bin file's lazily loaded state dict, or an unbuffered handle on a safetensors file."""
    import torch

    if file.suffix != ".bin":
        return open(file, "rb", buffering=0)
    try:
        return torch.load(file, map_location="cpu", mmap=True, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle/zip failures of a user file become one line
        raise SourceError(f"{file}: cannot read this .bin file safely ({str(exc).splitlines()[0][:160]})") from None


def read_safetensors_header(file: Path) -> dict[str, TensorInfo]:
    """Parse a safetensors header (8-byte length + JSON) and check every tensor's bytes are inside the file."""
    try:
        size = file.stat().st_size
        with open(file, "rb") as fh:
            length = int.from_bytes(fh.read(8), "little")
            if size < 8 or length <= 1 or length > min(MAX_HEADER, size - 8):
                raise SourceError(f"{file}: not a safetensors file (bad header length); re-download it")
            header = json.loads(fh.read(length))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise SourceError(f"{file}: corrupt safetensors header (not JSON); re-download it") from None
    except OSError as exc:
        raise SourceError(f"{file}: cannot read ({exc.strerror or exc})") from None
    if not isinstance(header, dict):
        raise SourceError(f"{file}: corrupt safetensors header; re-download it")
    data_size = size - 8 - length
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, elem = ST_DTYPES[entry["dtype"]]
            shape = tuple(int(d) for d in entry["shape"])
            begin, end = (int(x) for x in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise SourceError(f"{file}: corrupt safetensors header entry for '{name}'; re-download it") from None
        count = 1
        for dim in shape:
            count *= dim
        if end - begin != count * elem or end > data_size or begin < 0:
            raise SourceError(f"{file}: truncated or corrupt (tensor '{name}' runs past the data); re-download it")
        out[name] = TensorInfo(file, dtype, shape, 8 + length + begin)
    return out


def _read_bin_header(file: Path) -> dict[str, TensorInfo]:
    state = _open_weights(file)
    if not isinstance(state, dict):
        raise SourceError(f"{file}: not a state dict")
    return {name: TensorInfo(file, str(t.dtype).removeprefix("torch."), tuple(t.shape)) for name, t in state.items()}


def _weight_files(path: Path) -> list[Path]:
    for index_name, single_name in hub.WEIGHT_LAYOUTS:
        index = path / index_name
        if index.is_file():
            try:
                weight_map = read_json(index)["weight_map"]
                files = sorted(set(weight_map.values()))
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
                raise SourceError(f"{index}: corrupt index (no weight_map); re-download the model") from None
            outside = [f for f in files if not isinstance(f, str) or Path(f).name != f or f in (".", "..")]
            if outside:
                raise SourceError(f"{index}: names {outside[0]!r}, which is not a file in the model folder; "
                                  "the index is corrupt or hostile")  # fmt: skip
            return [path / f for f in files]
        if (path / single_name).is_file():
            return [path / single_name]
    raise SourceError(f"{path}: no model weights found (model.safetensors, a sharded index, or pytorch_model.bin)")


def _read_tensors(path: Path, wanted: Callable[[str], bool], *, partial: bool) -> dict[str, TensorInfo]:
    tensors: dict[str, TensorInfo] = {}
    for file in _weight_files(path):
        if not file.is_file():
            # a Hub snapshot holds only the shards with wanted tensors; locally a missing shard is an error
            if partial:
                continue
            raise SourceError(f"{file}: listed in the model's index but missing; re-download the model")
        header = read_safetensors_header(file) if file.suffix == ".safetensors" else _read_bin_header(file)
        tensors.update({k: v for k, v in header.items() if wanted(k)})
    return tensors


def _read_config(path: Path) -> dict[str, Any]:
    file = path / "config.json"
    if not file.is_file():
        raise SourceError(f"{path}: no config.json; point at a Hugging Face model folder")
    try:
        config = read_json(file)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SourceError(f"{file}: invalid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise SourceError(f"{file}: not a JSON object")
    return config


def _remote_source(ref: str, wanted: Callable[[str], bool]) -> ModelSource:
    """A Hub model known by its remote headers only: enough to plan, not to read (its weights are not here)."""
    folder, commit, files = hub.remote_headers(ref)
    tensors, sizes = {}, {}
    for file, header in files.items():
        for name, (code, shape, start) in header.items():
            if wanted(name) and code in ST_DTYPES:
                tensors[name] = TensorInfo(Path(file), ST_DTYPES[code][0], tuple(shape), start)
                count = 1
                for dim in shape:
                    count *= dim
                sizes[file] = max(sizes.get(file, 0), start + count * ST_DTYPES[code][1])
    source = ModelSource(ref, folder, _read_config(folder), tensors, commit)
    source.download_bytes = hub.missing_bytes(ref, commit, sizes)
    return source


def resolve_path(ref: str, *, base_dir: Path | None) -> Path | None:
    """A local folder for `ref` (as given, then relative to the config file's folder), or None."""
    candidates = [Path(ref).expanduser()]
    if base_dir is not None and not Path(ref).is_absolute():
        candidates.append(base_dir / ref)
    return next((c.resolve() for c in candidates if c.is_dir()), None)


def open_source(
    ref: str,
    *,
    base_dir: Path | None = None,
    wanted: Callable[[str], bool] = lambda _: True,
    side_files: bool = False,
    headers_only: bool = False,
) -> ModelSource:
    """Open a model by local path or Hub id; only tensors for which `wanted(name)` is true are indexed.
    `headers_only`: a Hub model's headers are read remotely and no weight is downloaded (a dry run)."""
    path = resolve_path(ref, base_dir=base_dir)
    revision = None
    if path is None:
        if not hub.looks_like_hub_id(ref) or ref.startswith((".", "/", "~")) or os.sep + os.sep in ref:
            raise SourceError(f"model '{ref}': no such folder")
        if headers_only:
            return _remote_source(ref, wanted)
        path, revision = hub.fetch_model(ref, wanted=wanted, side_files=side_files)
    config = _read_config(path)  # first: a folder without config.json is not a model at all
    tensors = _read_tensors(path, wanted, partial=revision is not None)
    return ModelSource(ref, path, config, tensors, revision)
