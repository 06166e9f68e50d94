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
    steps: int | None = Field(default=None, ge=0)
    fit: Literal["ridge", "none"] | None = None
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
    # one run, or runs in order (what several `moemerge tune` runs did, replayed one after the other)
    router_training: list[RouterTrainingConfig] | None = None

    @model_validator(mode="before")
    @classmethod
    def _default_top_k(cls, data: Any) -> Any:
        # mergekit's default of 2 cannot work with a single expert: use every expert then
        if isinstance(data, dict) and "experts_per_token" not in data and isinstance(data.get("experts"), list):
            return {**data, "experts_per_token": min(2, max(1, len(data["experts"])))}
        return data

    @field_validator("router_training", mode="before")
    @classmethod
    def _runs(cls, value: Any) -> Any:
        return [value] if isinstance(value, dict) else value

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
    config, problems = _validate(data, source=source)
    if problems:
        raise problems_error(ConfigError, problems)
    return config


def _validate(data: Any, *, source: str) -> tuple[MergeConfig | None, list[str]]:
    """The config and every problem in it. Where the problems are all in keys that can go (unknown keys, fields with
    a default), the config without them is returned too, so that the models it names are still checked in the same
    run; None where even that does not validate."""
    if not isinstance(data, dict):
        kind = "empty" if data is None else f"a {type(data).__name__}, not a mapping"
        return None, [f"{source}: the config is {kind}; it needs at least base_model and experts"]
    data = spellings.from_mergekit(data, top=list(MergeConfig.model_fields), expert=list(ExpertConfig.model_fields),
                                   source=source)  # fmt: skip
    if isinstance(data.get("router_training"), dict):  # one run: its problems say `router_training`, not `[0]`
        data["router_training"] = [data["router_training"]]
        single = True
    else:
        single = False
    try:
        return MergeConfig.model_validate(data), []
    except ValidationError as exc:
        errors = exc.errors()
    problems = [f"{source}: {_describe(err)}" for err in errors]
    if single:
        problems = [p.replace("router_training[0]", "router_training") for p in problems]
    try:
        return MergeConfig.model_validate(_without(data, errors)), problems
    except (ValidationError, KeyError, IndexError, TypeError, ValueError):
        return None, problems


def _without(data: dict[str, Any], errors: list[dict[str, Any]]) -> dict[str, Any]:
    """A deep copy of `data` without the faults pydantic found, for the checks that follow (never for a run): a
    near-miss key is read as the key it suggests, other unknown keys and wrong values go, wrong prompts become a
    stand-in and an unknown gate_mode `random` (asks nothing of prompts), so that no check adds a guess of its own."""
    import copy

    data = copy.deepcopy(data)
    for error in errors:
        loc = tuple(error["loc"])
        prompts = next((i for i, part in enumerate(loc) if part in PROMPT_FIELDS), None)
        *parents, key = loc if prompts is None else loc[: prompts + 1]
        holder: Any = data
        for part in parents:
            holder = holder[part]
        close = difflib.get_close_matches(str(key), _valid_keys(loc), n=1)
        if loc == ("gate_mode",):
            holder[key] = "random"
        elif prompts is not None:
            holder[key] = ["<invalid prompts>"]
        elif error["type"] == "extra_forbidden" and close and close[0] not in holder:
            holder[close[0]] = holder.pop(key)
        elif isinstance(holder, dict) and key in holder:
            del holder[key]
    return data


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
    """Read and validate a YAML config file (mergekit-moe configs are accepted unchanged); every problem at once."""
    config, problems = read_config(path)
    if problems:
        raise problems_error(ConfigError, problems)
    return config


def read_config(path: str | Path) -> tuple[MergeConfig | None, list[str]]:
    """The config of a YAML file and every problem in it. A config is returned despite problems where it validates
    without the keys at fault (unknown keys, unreadable prompt files), so that a merge can check the models it names
    in the same run; None where it does not. A file that cannot be read or parsed raises ConfigError."""
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
    problems: list[str] = []
    if isinstance(data, dict):
        data, problems = _read_prompt_files(data, base_dir=path.resolve().parent, source=str(path))
        data = _resolve_training_data(data, base_dir=path.resolve().parent)
    config, schema_problems = _validate(data, source=str(path))
    return config, problems + schema_problems


def _resolve_training_data(data: dict[str, Any], *, base_dir: Path) -> dict[str, Any]:
    """`router_training.data` paths relative to the config become absolute (moemerge.yml reruns from anywhere)."""
    runs = data.get("router_training")
    if isinstance(runs, list):
        resolved = [_resolve_training_data({"router_training": run}, base_dir=base_dir)["router_training"]
                    for run in runs]  # fmt: skip
        return {**data, "router_training": resolved}
    section = runs
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


def _read_prompt_files(data: dict[str, Any], *, base_dir: Path, source: str) -> tuple[dict[str, Any], list[str]]:
    """`positive_prompts: prompts/code.txt` (one prompt per line, relative to the config) becomes the list. A file
    that cannot be read is a problem, and a stand-in prompt naming it takes its place, so that the rest of the config
    is still checked (without a second, false "needs positive prompts"); such a config is never run."""
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
                        entry[key] = [f"<unread prompt file {entry[key]}>"]
                        continue
                    try:
                        entry[key] = read_prompt_file(base_dir / entry[key])
                    except ConfigError as exc:
                        problems.append(f"{source}: {group}[{i}].{key}: {exc}")
                        entry[key] = [f"<unread prompt file {entry[key]}>"]
            entries.append(entry)
        data[group] = entries
    return data, problems


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
    if len(data.get("router_training") or []) == 1:
        data["router_training"] = data["router_training"][0]  # one run: written as the mapping it was given as
    data["base_model"] = relocated(data["base_model"])
    for group in ("experts", "shared_experts"):
        for entry in data.get(group) or []:
            entry["source_model"] = relocated(entry["source_model"])
    return data
