"""LoRA experts (`source_model: BASE+ADAPTER`): a model source whose MLP reads return W + scale * (B @ A), computed
per row chunk in float32, so plan, stream and writer never learn what an adapter is. Everything here is checked from
adapter_config.json and the weight headers before any weight is read."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moemerge import hub
from moemerge.errors import SourceError, problems_error
from moemerge.files import read_json
from moemerge.sources import (
    ST_DTYPES,
    ModelSource,
    TensorInfo,
    open_source,
    read_safetensors_header,
    resolve_path,
)

log = logging.getLogger(__name__)

PREFIX = "base_model.model."  # how peft names the wrapped model's modules in a saved adapter
LORA_KEY = re.compile(r"^base_model\.model\.(.+)\.lora_([AB])\.weight$")
# LoRA variants whose merge is not W + scale * (B @ A), or which change more than the weights: config key -> name
VARIANTS = {
    "use_dora": "DoRA (use_dora)", "use_qalora": "QA-LoRA (use_qalora)", "use_bdlora": "block-diagonal LoRA",
    "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens)", "arrow_config": "Arrow routing",
    "velora_config": "VeLoRA", "monteclora_config": "MonteCLoRA", "kasa_config": "KaSA",
    "lora_bias": "a bias on lora_B (lora_bias)", "layer_replication": "layer_replication",
    "target_parameters": "LoRA on raw parameters (target_parameters)",
}  # fmt: skip
# initialisations that change the base weights too: the adapter only works on the residual base it came with
RESIDUAL_INITS = ("pissa", "olora", "corda", "loftq", "lora_ga")


@dataclass(frozen=True)
class Lora:
    """One targeted MLP weight: its lora_A (rank, in) and lora_B (out, rank) tensors and the scale of B @ A."""

    a: str
    b: str
    rank: int
    scale: float


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
        return sum(_numel(i.shape) * _ELEMENT[i.dtype] for i in infos)

    def read(self, name: str, rows: slice | None = None):
        """The model side's rows of `name`, plus scale * (B[rows] @ A) in float32 where the adapter targets it."""
        weight = self.model.read(name, rows)
        lora = self.loras.get(name)
        if lora is None:
            return weight
        if self._a is None or self._a[0] != lora.a:  # A (rank, in) is small; keep it while a tensor's rows stream
            self._a = (lora.a, self.adapter.read(lora.a).float())
        delta = self.adapter.read(lora.b, rows).float() @ self._a[1]  # (rows, rank) @ (rank, in)
        return weight.float() + delta * lora.scale  # the same order of operations as peft's merge

    def close(self) -> None:
        self._a = None
        self.model.close()
        self.adapter.close()


_ELEMENT = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2}


def _numel(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def _short(module: str) -> str:
    """`model.layers.3.self_attn.q_proj` -> `self_attn.q_proj`; `lm_head` stays."""
    return re.sub(r"^.*\.layers\.\d+\.", "", module)


def split_ref(ref: str, *, base_dir: Path | None) -> tuple[str, str] | None:
    """`BASE+ADAPTER` -> (BASE, ADAPTER); None for a plain model reference (an existing folder whose name has a `+`
    is a plain model). Where several `+` could split, the first split whose sides both exist locally wins."""
    if "+" not in ref or resolve_path(ref, base_dir=base_dir) is not None:
        return None
    splits = [(ref[:i], ref[i + 1 :]) for i, c in enumerate(ref) if c == "+"]
    local = [s for s in splits if all(resolve_path(p, base_dir=base_dir) or hub.looks_like_hub_id(p) for p in s)]
    return (local or splits)[0]


def _config_problems(config: Any) -> list[str]:
    """What in adapter_config.json rules the adapter out: not LoRA, a LoRA variant, a residual initialisation."""
    if not isinstance(config, dict):
        return ["adapter_config.json is not a JSON object"]
    kind = config.get("peft_type")
    if kind != "LORA":
        return [f"adapter type {kind!r} is not supported: only LoRA adapters (peft_type LORA) can be merged"]
    problems = [f"{what} is not supported: only plain LoRA adapters can be merged" for key, what in VARIANTS.items()
                if config.get(key) not in (None, False, {}, [], "")]  # fmt: skip
    init = str(config.get("init_lora_weights", "")).lower()
    if init.startswith(RESIDUAL_INITS):
        problems.append(f"init_lora_weights {init!r} changes the base weights too; convert it to a plain LoRA "
                        "(peft's save_pretrained(path_initial_model_for_weight_conversion=...)) first")  # fmt: skip
    for key in ("r", "lora_alpha"):
        value = config.get(key, 8)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            problems.append(f"adapter_config.json: {key} must be a positive number")
    for key in ("rank_pattern", "alpha_pattern"):
        pattern = config.get(key) or {}
        if not isinstance(pattern, dict) or not all(isinstance(v, int | float) for v in pattern.values()):
            problems.append(f"adapter_config.json: {key} must map module names to numbers")
        for regex in pattern if isinstance(pattern, dict) else ():
            try:
                re.compile(regex)
            except re.error:
                problems.append(f"adapter_config.json: {key} key {regex!r} is not a valid regular expression")
    return problems


def _pattern(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """peft's rule (utils.other.get_pattern_key): the first key that matches the end of the module's name, after a
    dot or at its start."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _scale(config: dict[str, Any], module: str) -> tuple[int, float]:
    """(rank, scale) of one module as peft computes them: lora_alpha / r, or lora_alpha / sqrt(r) with rsLoRA."""
    rank = _pattern(config.get("rank_pattern") or {}, module, config.get("r", 8))
    alpha = _pattern(config.get("alpha_pattern") or {}, module, config.get("lora_alpha", 8))
    return rank, alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)


def _modules(tensors: dict[str, TensorInfo]) -> tuple[dict[str, dict[str, str]], list[str]]:
    """LoRA modules ({module: {"A": key, "B": key}}) and the other keys (embedding LoRA, modules_to_save copies)."""
    modules: dict[str, dict[str, str]] = {}
    other = []
    for key in tensors:
        match = LORA_KEY.match(key)
        if match:
            modules.setdefault(match.group(1), {})[match.group(2)] = key
        else:
            other.append(key)
    return modules, other


def _lora(config, module: str, keys: dict[str, str], adapter: ModelSource, weight: TensorInfo) -> Lora | str:
    """The Lora for one module, or why its tensors do not fit the model side's weight."""
    if set(keys) != {"A", "B"}:
        return (
            f"{module} has lora_{next(iter(keys))} but no lora_{'B' if 'A' in keys else 'A'}; the adapter is incomplete"
        )
    a, b = adapter.tensors[keys["A"]], adapter.tensors[keys["B"]]
    rank, scale = _scale(config, module)
    if len(a.shape) != 2 or len(b.shape) != 2 or a.dtype not in _ELEMENT or b.dtype not in _ELEMENT:
        return f"{module}: lora_A and lora_B must be 2-D floating-point tensors"
    if a.shape[0] != rank or b.shape[1] != rank:
        return (f"{module}: adapter_config.json gives rank {rank}, its weights have rank {a.shape[0]} "
                f"(lora_A) and {b.shape[1]} (lora_B); the config and weights do not belong together")  # fmt: skip
    if (b.shape[0], a.shape[1]) != tuple(weight.shape):
        return (f"{module}: the adapter's delta is {[b.shape[0], a.shape[1]]} but the model's weight is "
                f"{list(weight.shape)}; the adapter was made for another model")  # fmt: skip
    return Lora(keys["A"], keys["B"], rank, scale)


def _match(config, adapter: ModelSource, model: ModelSource) -> tuple[dict[str, Lora], list[str], list[str]]:
    """(model weight name -> Lora, non-MLP modules ignored, problems) from the adapter's header keys."""
    modules, other = _modules(adapter.tensors)
    loras: dict[str, Lora] = {}
    ignored: set[str] = set()
    problems: list[str] = []
    for module, keys in sorted(modules.items()):
        weight = module + ".weight"
        if weight in model.tensors:
            got = _lora(config, module, keys, adapter, model.tensors[weight])
            if isinstance(got, str):
                problems.append(got)
            else:
                loras[weight] = got
        elif ".mlp." in module:
            problems.append(f"it targets {module}, which the model has no weight for (an adapter for another "
                            "model family?)")  # fmt: skip
        else:
            ignored.add(_short(module))
    for key in other:
        name = key.removeprefix(PREFIX)
        module = name.split(".lora_")[0] if ".lora_" in name else name.rsplit(".", 1)[0]
        if ".mlp." in module:
            problems.append(f"it holds {key}, which is not a LoRA pair (a full MLP copy via modules_to_save?); "
                            "only lora_A/lora_B deltas can be merged")  # fmt: skip
        else:
            ignored.add(_short(module))
    if len(problems) > 1:
        problems = [f"{problems[0]} (and {len(problems) - 1} more problem(s) like it)"]
    if not loras and not problems:
        what = f" (it changes {', '.join(sorted(ignored))})" if ignored else ""
        problems.append(f"it changes no MLP weight{what}; as an expert it would equal its base model")
    return loras, sorted(ignored), problems


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
    if problems := _config_problems(config):
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
    loras, ignored, problems = _match(adapter.config, adapter, model)
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
