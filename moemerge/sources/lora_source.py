"""LoRA experts (`source_model: BASE+ADAPTER`): a model source whose MLP reads return W + scale * (B @ A), computed
per row chunk in float32, so plan, stream and writer never learn what an adapter is. Everything here is checked from
adapter_config.json and the weight headers before any weight is read."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moemerge.errors import SourceError, problems_error
from moemerge.sources import hub
from moemerge.sources.folder import (
    ST_DTYPES,
    ModelSource,
    TensorInfo,
    open_source,
    read_safetensors_header,
    resolve_path,
)
from moemerge.sources.headers import read_json
from moemerge.sources.lora_config import ELEMENT_SIZE, Lora, config_problems, match_modules, numel

log = logging.getLogger(__name__)


@dataclass(eq=False)
class LoraSource(ModelSource):
    """The model side's tensors, with `loras` (weight name -> Lora) added on read. `path` is the adapter's folder,
    so two adapters on one base are two different experts."""

    model: ModelSource | None = None
    adapter: ModelSource | None = None  # adapter_config.json as its config, the LoRA tensors as its tensors
    loras: dict[str, Lora] = field(default_factory=dict)
    ignored: tuple[str, ...] = ()  # non-MLP modules the adapter also changes (not used)
    _a: tuple[str, Any] | None = field(default=None, repr=False)  # the last lora_A read, (name, float32 tensor)

    @property
    def has_files(self) -> bool:
        return self.model.has_files and self.adapter.has_files

    @property
    def origins(self) -> list[dict[str, Any]]:
        lora = {"model": self.adapter.ref, "path": str(self.adapter.path), "revision": self.adapter.revision,
                "lora_on": self.model.ref, "ranks": self.ranks, "targets": self.targets}  # fmt: skip
        return [*self.model.origins, lora]

    @property
    def ranks(self) -> list[int]:
        return sorted({lora.rank for lora in self.loras.values()})

    @property
    def targets(self) -> list[str]:
        """Targeted MLP projections, without layer numbers: gate_proj, up_proj, down_proj."""
        return sorted({name.removesuffix(".weight").rsplit(".", 1)[-1] for name in self.loras})

    @property
    def adapter_bytes(self) -> int:
        """Bytes of LoRA tensors a merge reads besides the model side's weights."""
        infos = [self.adapter.tensors[n] for lora in self.loras.values() for n in (lora.a, lora.b)]
        return sum(numel(i.shape) * ELEMENT_SIZE[i.dtype] for i in infos)

    def read(self, name: str, rows: slice | None = None):
        """The model side's rows of `name`, plus scale * (B[rows] @ A) in float32 where the adapter targets it."""
        weight = self.model.read(name, rows)
        lora = self.loras.get(name)
        if lora is None:
            return weight
        if self._a is None or self._a[0] != lora.a:  # A (rank, in) is small; keep it while a tensor's rows stream
            self._a = (lora.a, self.adapter.read(lora.a).float())
        # W[rows] + (B[rows] @ A) * scale, rounded step by step in peft's order: a fused addmm rounds once, which
        # differs from merge_and_unload() in the last bit wherever the scale is not a power of two
        delta = self.adapter.read(lora.b, rows).float() @ self._a[1]  # (rows, rank) @ (rank, in)
        delta *= lora.scale
        return weight.float() + delta  # not in place: read() does not promise a private buffer

    def byte_range(self, name: str, rows: slice | None = None):
        """Weights the adapter leaves alone are the model side's bytes, copied as stored."""
        return None if name in self.loras else self.model.byte_range(name, rows)

    def close(self) -> None:
        self._a = None
        self.model.close()
        self.adapter.close()


def split_ref(ref: str, *, base_dir: Path | None) -> tuple[str, str] | None:
    """`BASE+ADAPTER` -> (BASE, ADAPTER); None for a plain model reference (an existing folder whose name has a `+`
    is a plain model). Where several `+` could split, the first split whose sides both exist locally wins."""
    if "+" not in ref or resolve_path(ref, base_dir=base_dir) is not None:
        return None
    splits = [(ref[:i], ref[i + 1 :]) for i, c in enumerate(ref) if c == "+"]
    local = [s for s in splits if all(resolve_path(p, base_dir=base_dir) or hub.looks_like_hub_id(p) for p in s)]
    return (local or splits)[0]


def _bin_header(file: Path) -> dict[str, TensorInfo]:
    """An adapter_model.bin's tensors, loaded with weights_only (no code in the pickle runs) and memory-mapped."""
    import torch

    try:
        state = torch.load(file, map_location="cpu", mmap=True, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle/zip failures of a user file become one line
        raise SourceError(f"{file}: cannot read this .bin file safely ({str(exc).splitlines()[0][:160]})") from None
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise SourceError(f"{file}: not a state dict of tensors")
    return {name: TensorInfo(file, str(t.dtype).removeprefix("torch."), tuple(t.shape)) for name, t in state.items()}


def _remote_adapter(ref: str) -> ModelSource:
    """A Hub adapter for a dry run: adapter_config.json (small) and the weights' header, read remotely."""
    folder, commit, header, missing = hub.remote_adapter(ref)
    tensors = {name: TensorInfo(Path(hub.ADAPTER_WEIGHTS[0]), ST_DTYPES[code][0], tuple(shape), start)
               for name, (code, shape, start) in header.items() if code in ST_DTYPES}  # fmt: skip
    return ModelSource(ref, folder, _adapter_config(ref, folder), tensors, commit, download_bytes=missing)


def _adapter_config(ref: str, folder: Path) -> dict[str, Any]:
    file = folder / hub.ADAPTER_CONFIG
    if not file.is_file():
        raise SourceError(f"adapter '{ref}': no {hub.ADAPTER_CONFIG} in {folder}; the part after '+' must be a PEFT "
                          "LoRA adapter (adapter_config.json and adapter_model.safetensors)")  # fmt: skip
    try:
        config = read_json(file)
    except (ValueError, UnicodeDecodeError) as exc:
        raise SourceError(f"{file}: invalid JSON ({exc})") from None
    if problems := config_problems(config):
        raise problems_error(SourceError, [f"adapter '{ref}': {p}" for p in problems])
    return config


def open_adapter(ref: str, *, base_dir: Path | None, headers_only: bool = False) -> ModelSource:
    """The adapter side: its config (checked first) and the header of adapter_model.safetensors (or .bin)."""
    path = resolve_path(ref, base_dir=base_dir)
    revision = None
    if path is None:
        if not hub.looks_like_hub_id(ref) or ref.startswith((".", "/", "~")):
            raise SourceError(f"adapter '{ref}': no such folder")
        if headers_only:
            return _remote_adapter(ref)
        path, revision = hub.fetch_adapter(ref)
    config = _adapter_config(ref, path)
    for name in hub.ADAPTER_WEIGHTS:
        if (path / name).is_file():
            file = path / name
            tensors = read_safetensors_header(file) if file.suffix == ".safetensors" else _bin_header(file)
            return ModelSource(ref, path, config, tensors, revision)
    raise SourceError(f"adapter '{ref}': no {' or '.join(hub.ADAPTER_WEIGHTS)} in {path}")


def _same_base(recorded: Any, model: ModelSource) -> bool:
    """Whether adapter_config.json's base_model_name_or_path plausibly names the model side (an id or a folder)."""
    if not isinstance(recorded, str) or not recorded.strip():
        return True
    recorded = recorded.strip().rstrip("/")
    repo = hub.split_ref(model.ref)[0].rstrip("/")
    names = {repo.lower(), Path(repo).name.lower(), model.path.name.lower()}
    return recorded.lower() in names or Path(recorded).name.lower() in names


def open_lora(
    ref: str, *, base_dir: Path | None, wanted: Callable[[str], bool], headers_only: bool = False
) -> LoraSource:
    """`BASE+ADAPTER` as one model source: the adapter is opened and checked first (it is small), then the model
    side (indexed for `wanted` tensors only), then every LoRA pair against the model's weights."""
    model_ref, adapter_ref = split_ref(ref, base_dir=base_dir) or (ref, "")
    adapter = open_adapter(adapter_ref, base_dir=base_dir, headers_only=headers_only)
    model = open_source(model_ref, base_dir=base_dir, wanted=wanted, headers_only=headers_only)
    loras, ignored, problems = match_modules(adapter.config, adapter.tensors, model.tensors)
    if problems:
        raise problems_error(SourceError, [f"adapter '{adapter_ref}': {p}" for p in problems])
    if ignored:
        log.warning("adapter '%s': deltas on non-MLP modules ignored (the base supplies them): %s",
                    adapter_ref, ", ".join(ignored))  # fmt: skip
    if adapter.config.get("fan_in_fan_out"):
        log.info("adapter '%s': fan_in_fan_out ignored, as peft does for nn.Linear weights", adapter_ref)
    recorded = adapter.config.get("base_model_name_or_path")
    if not _same_base(recorded, model):
        log.warning("adapter '%s' was trained on '%s' (adapter_config.json base_model_name_or_path), not on '%s'; "
                    "merging it anyway", adapter_ref, recorded, model_ref)  # fmt: skip
    return LoraSource(ref, adapter.path, model.config, model.tensors, adapter.revision,
                      model.download_bytes + adapter.download_bytes, model=model, adapter=adapter, loras=loras,
                      ignored=tuple(ignored))  # fmt: skip
