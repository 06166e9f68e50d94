"""The YAML config: pydantic models, spelling normalisation, and load_config(); the only place pydantic appears."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from moemerge.config import spellings
from moemerge.errors import ConfigError, problems_error

GateMode = Literal["hidden", "hidden_avg", "mlp_input", "mlp_input_avg", "cheap_embed", "random", "uniform_random"]
PROMPT_GATE_MODES = ("hidden", "hidden_avg", "mlp_input", "mlp_input_avg", "cheap_embed")

DTYPES = {
    "float32": "float32", "fp32": "float32", "float": "float32",
    "float16": "float16", "fp16": "float16", "half": "float16",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
}  # fmt: skip

# mergekit-moe's spellings (`Mixtral`, `Qwen MoE`, `qwen`, `DeepSeek MoE`) and ours, after lower-casing and
# turning spaces and dashes into underscores.
ARCHITECTURES = {
    "mixtral": "mixtral",
    "qwen": "qwen2_moe", "qwen_moe": "qwen2_moe", "qwen2_moe": "qwen2_moe", "qwen2moe": "qwen2_moe",
    "qwen3_moe": "qwen3_moe", "qwen3moe": "qwen3_moe",
    "deepseek": "deepseek", "deepseek_moe": "deepseek", "deepseekmoe": "deepseek",
}  # fmt: skip


def normalise_dtype(value: str) -> str:
    """`torch.bfloat16`, `bf16`, `bfloat16` -> `bfloat16`; raises ValueError for anything else."""
    key = str(value).strip().lower().removeprefix("torch.")
    if key not in DTYPES:
        raise ValueError(f"unknown dtype {value!r}: use float32, float16 or bfloat16")
    return DTYPES[key]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ExpertConfig(_Strict):
    source_model: str = Field(min_length=1)
    positive_prompts: list[str] | None = None
    negative_prompts: list[str] | None = None
    noise_scale: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    residual_scale: float | None = Field(default=None, allow_inf_nan=False)


class RouterTrainingConfig(_Strict):
    """`router_training:` -- train the routers (`moemerge tune`) before the output is moved into place. Unset values
    take tune's defaults; data paths are relative to the config."""

    data: str | list[str] | dict[str, str]
    steps: int | None = Field(default=None, ge=1)
    lr: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    batch_tokens: int | None = Field(default=None, ge=2)
    seq_len: int | None = Field(default=None, ge=2)
    aux_loss_coef: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    train_top_k: int | None = Field(default=None, ge=1)
    seed: int | None = None

    @field_validator("data")
    @classmethod
    def _data(cls, value: Any) -> Any:
        if not value:
            raise ValueError("give a text file, a list of files (e.g. one per expert) or a mapping name -> file")
        return value


class MergeConfig(_Strict):
    base_model: str = Field(min_length=1)
    experts: list[ExpertConfig] = Field(min_length=1)
    gate_mode: GateMode = "hidden"
    dtype: str | None = None
    experts_per_token: int = Field(default=2, ge=1)
    shared_experts: list[ExpertConfig] | None = None
    architecture: str | None = None
    seed: int | None = None
    router_training: RouterTrainingConfig | None = None

    @model_validator(mode="before")
    @classmethod
    def _default_top_k(cls, data: Any) -> Any:
        # mergekit's default of 2 cannot work with a single expert: use every expert then
        if isinstance(data, dict) and "experts_per_token" not in data and isinstance(data.get("experts"), list):
            return {**data, "experts_per_token": min(2, max(1, len(data["experts"])))}
        return data

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, value: str | None) -> str | None:
        return None if value is None else normalise_dtype(value)

    @field_validator("architecture")
    @classmethod
    def _architecture(cls, value: str | None) -> str | None:
        return None if value is None else spellings.architecture(value)  # mergekit's names and prefixes too


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "config"


def _valid_keys(loc: tuple[Any, ...]) -> list[str]:
    in_expert = any(part in ("experts", "shared_experts") for part in loc[:-1])
    if "router_training" in loc[:-1]:
        return list(RouterTrainingConfig.model_fields)
    return list((ExpertConfig if in_expert else MergeConfig).model_fields)


def _describe(error: dict[str, Any]) -> str:
    loc = tuple(error["loc"])
    if error["type"] == "extra_forbidden":
        key = str(loc[-1])
        close = difflib.get_close_matches(key, _valid_keys(loc), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else f" (valid keys: {', '.join(_valid_keys(loc))})"
        return f"{_path(loc[:-1])}: unknown key '{key}'{hint}"
    if error["type"] == "missing":
        return f"{_path(loc)}: required field is missing"
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "literal_error" and loc and loc[-1] == "gate_mode":
        message = f"unknown gate_mode {error['input']!r}: use " + ", ".join(GateMode.__args__)
    return f"{_path(loc)}: {message}"


def parse_config(data: Any, *, source: str = "config") -> MergeConfig:
    """Validate an already-parsed YAML document; every problem is reported at once."""
    if not isinstance(data, dict):
        kind = "empty" if data is None else f"a {type(data).__name__}, not a mapping"
        raise ConfigError(f"{source}: the config is {kind}; it needs at least base_model and experts")
    data = spellings.from_mergekit(data, top=list(MergeConfig.model_fields), expert=list(ExpertConfig.model_fields),
                                   source=source)  # fmt: skip
    try:
        return MergeConfig.model_validate(data)
    except ValidationError as exc:
        problems = [f"{source}: {_describe(err)}" for err in exc.errors()]
        raise problems_error(ConfigError, problems) from None


MAX_CONFIG_BYTES = 64 * 2**20
MAX_PROMPT_FILE_BYTES = 256 * 2**20


def read_text_file(path: Path, limit: int, what: str) -> str:
    """A regular file's text, refusing devices, pipes and absurd sizes (`/dev/zero` must not hang a merge)."""
    if path.exists() and not path.is_file():
        raise ConfigError(f"{path}: the {what} is not a regular file")
    if path.is_file() and path.stat().st_size > limit:
        raise ConfigError(f"{path}: the {what} is larger than {limit // 2**20} MB")
    return path.read_text(encoding="utf-8")


def load_config(path: str | Path) -> MergeConfig:
    """Read and validate a YAML config file (mergekit-moe configs are accepted unchanged)."""
    path = Path(path)
    try:
        text = read_text_file(path, MAX_CONFIG_BYTES, "config")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the config ({exc.__class__.__name__}: {exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from None
    if isinstance(data, dict):
        data = _read_prompt_files(data, base_dir=path.resolve().parent, source=str(path))
        data = _resolve_training_data(data, base_dir=path.resolve().parent)
    return parse_config(data, source=str(path))


def _resolve_training_data(data: dict[str, Any], *, base_dir: Path) -> dict[str, Any]:
    """`router_training.data` paths relative to the config become absolute (moemerge.yml reruns from anywhere)."""
    section = data.get("router_training")
    files = section.get("data") if isinstance(section, dict) else None

    def where(file: Any) -> Any:
        return str(base_dir / file) if isinstance(file, str) and file else file

    if isinstance(files, str):
        files = where(files)
    elif isinstance(files, list):
        files = [where(f) for f in files]
    elif isinstance(files, dict):
        files = {k: where(v) for k, v in files.items()}
    else:
        return data
    return {**data, "router_training": {**section, "data": files}}


PROMPT_FIELDS = ("positive_prompts", "negative_prompts")


def _read_prompt_files(data: dict[str, Any], *, base_dir: Path, source: str) -> dict[str, Any]:
    """`positive_prompts: prompts/code.txt` (one prompt per line, relative to the config) becomes the list."""
    problems: list[str] = []
    data = dict(data)
    for group in ("experts", "shared_experts"):
        if not isinstance(data.get(group), list):
            continue
        entries = []
        for i, entry in enumerate(data[group]):
            entry = dict(entry) if isinstance(entry, dict) else entry
            for key in PROMPT_FIELDS if isinstance(entry, dict) else ():
                if isinstance(entry.get(key), str):
                    if not (base_dir / entry[key]).exists():  # most often one prompt written without the list
                        problems.append(f"{source}: {group}[{i}].{key}: prompt file {entry[key]!r} not found (relative "
                                        f"to the config); write a single prompt as a list: {key}: [{entry[key]!r}]")  # fmt: skip
                        continue
                    try:
                        entry[key] = read_prompt_file(base_dir / entry[key])
                    except ConfigError as exc:
                        problems.append(f"{source}: {group}[{i}].{key}: {exc}")
            entries.append(entry)
        data[group] = entries
    if problems:
        raise problems_error(ConfigError, problems)
    return data


def read_prompt_file(path: Path) -> list[str]:
    """Non-empty lines of a UTF-8 text file, stripped: one prompt per line."""
    try:
        lines = read_text_file(path, MAX_PROMPT_FILE_BYTES, "prompt file").splitlines()
    except FileNotFoundError:
        raise ConfigError(f"prompt file {str(path)!r} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read prompt file {str(path)!r} ({exc.__class__.__name__})") from None
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise ConfigError(f"prompt file {str(path)!r} has no prompts")
    return prompts


def dump_config(config: MergeConfig, *, locate: Callable[[str], str] = str, **resolved: Any) -> dict[str, Any]:
    """The config as plain data (for moemerge.yml and the model card) with `resolved` values filled in; `locate`
    rewrites each model reference (each part of `BASE+ADAPTER`), e.g. to an absolute folder so that it reruns
    from anywhere."""

    def relocated(ref: str) -> str:
        return "+".join(locate(part) for part in ref.split("+"))

    data = config.model_copy(update=resolved).model_dump(exclude_none=True)
    data["base_model"] = relocated(data["base_model"])
    for group in ("experts", "shared_experts"):
        for entry in data.get(group) or []:
            entry["source_model"] = relocated(entry["source_model"])
    return data
