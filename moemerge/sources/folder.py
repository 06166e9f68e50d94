"""A model source (local folder or Hub snapshot): its config.json, tensor headers, and lazy tensor reads."""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moemerge.errors import SourceError
from moemerge.sources import hub
from moemerge.sources.headers import ST_DTYPES, TORCH_TO_ST, TensorInfo, read_json, read_safetensors_header

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ByteRange:
    """`length` bytes of `file` from `offset`: a tensor (or some of its rows) exactly as stored, elements of torch
    dtype `dtype`; what a copy that changes nothing needs to know."""

    file: Path
    offset: int
    length: int
    dtype: str


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

    @property
    def origins(self) -> list[dict[str, Any]]:
        """Where the files came from, for moemerge.yml and the card (a LoRA expert has two: model and adapter)."""
        return [{"model": self.ref, "path": str(self.path), "revision": self.revision}]

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
        buffer, shape = self._stored(name, rows)
        flat = torch.frombuffer(buffer, dtype=torch.uint8) if buffer else torch.empty(0, dtype=torch.uint8)
        return flat.view(getattr(torch, info.dtype)).reshape(shape)

    def read_stored(self, name: str, rows: slice | None = None) -> tuple[bytearray, list[int]] | None:
        """The bytes read() decodes and their shape, without torch; None where read() computes its tensor (a .bin
        file, a source type that overrides read())."""
        if self.byte_range(name, rows) is None:
            return None
        return self._stored(name, rows)

    def read_float32(self, name: str, rows: slice | None = None):
        """read(name, rows) as a float32 numpy array; without torch for float32/float16/bfloat16 safetensors."""
        from moemerge.sources import arrays

        dtype = self.tensors[name].dtype
        stored = self.read_stored(name, rows) if dtype in arrays.DTYPES else None
        if stored is None:
            return self.read(name, rows).float().numpy()
        buffer, shape = stored
        return arrays.decode(buffer, dtype, shape)

    def _stored(self, name: str, rows: slice | None) -> tuple[bytearray, list[int]]:
        info = self.tensors[name]
        where = _stored_range(info, rows)
        shape = list(info.shape)
        if shape and rows is not None:
            shape[0] = rows.stop - rows.start
        buffer = bytearray(where.length)
        fh = self._handle(info.file)
        fh.seek(where.offset)
        if fh.readinto(buffer) != len(buffer):
            raise SourceError(f"{info.file}: file ended early while reading {name}; re-download the model")
        return buffer, shape

    def byte_range(self, name: str, rows: slice | None = None) -> ByteRange | None:
        """Where the bytes that read(name, rows) returns lie, for a copy that changes nothing; None where read()
        decodes or computes them (a .bin file, or a source type that overrides read() but not this)."""
        info = self.tensors[name]
        if info.file.suffix == ".bin" or type(self).read is not ModelSource.read:
            return None
        return _stored_range(info, rows)

    def _handle(self, file: Path):
        if file not in self._handles:
            self._handles[file] = _open_weights(file)
        return self._handles[file]

    def close(self) -> None:
        for handle in self._handles.values():
            if hasattr(handle, "close"):
                handle.close()
        self._handles.clear()


def _row_bytes(info: TensorInfo) -> int:
    size = ST_DTYPES[TORCH_TO_ST[info.dtype]][1]
    for dim in info.shape[1:]:
        size *= dim
    return size


def _stored_range(info: TensorInfo, rows: slice | None) -> ByteRange:
    """Rows of a safetensors tensor are stored one after the other (row-major), so any row range is one byte range."""
    start, stop = (0, info.shape[0] if info.shape else 1) if rows is None else (rows.start, rows.stop)
    size = _row_bytes(info)
    return ByteRange(info.file, info.offset + start * size, (stop - start) * size, info.dtype)


def _open_weights(file: Path):
    """A .bin file's lazily loaded state dict, or an unbuffered handle on a safetensors file."""
    if file.suffix != ".bin":
        return open(file, "rb", buffering=0)
    import torch

    try:
        return torch.load(file, map_location="cpu", mmap=True, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle/zip failures of a user file become one line
        raise SourceError(f"{file}: cannot read this .bin file safely ({str(exc).splitlines()[0][:160]})") from None


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
    """A local folder for `ref` (as given, then relative to the config file's folder), or None. A revision on a
    local folder (`folder@main`, as a mergekit mapping with `revision:` writes it) is ignored, with a warning."""
    found = _local_folder(ref, base_dir)
    if found is None and "@" in ref:
        folder, _, revision = ref.rpartition("@")
        found = _local_folder(folder, base_dir) if folder else None
        if found is not None:
            _ignored_revision(ref, revision, found)
    return found


def _local_folder(ref: str, base_dir: Path | None) -> Path | None:
    candidates = [Path(ref).expanduser()]
    if base_dir is not None and not Path(ref).is_absolute():
        candidates.append(base_dir / ref)
    return next((c.resolve() for c in candidates if c.is_dir()), None)


@functools.cache  # once per reference, however often it is resolved
def _ignored_revision(ref: str, revision: str, folder: Path) -> None:
    log.warning("'%s': revision '%s' ignored: %s is a local folder, read as it is (a revision names a Hub commit, "
                "branch or tag)", ref, revision, folder)  # fmt: skip


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
