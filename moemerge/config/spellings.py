"""Every spelling a mergekit-moe config may use, mapped onto moemerge's: keys it ignores, `hidden_last`, architecture
prefixes, model references written as mappings. Plain data in, plain data out (config.py validates the result)."""

from __future__ import annotations

import difflib
import logging
from typing import Any

log = logging.getLogger(__name__)
GATE_MODE_ALIASES = {"hidden_last": "hidden"}  # mergekit's name for the last-token hidden state
NEAR_MISS = 0.75  # closer than this to a valid key: a typo (an error with its did-you-mean), not an ignored key

# output architectures by every name they go by, lower-case with spaces and dashes as underscores: ours and
# mergekit-moe's (`Mixtral`, `DeepSeek MoE`, `Qwen MoE`, `Qwen3 MoE`), which it matches by prefix
ARCHITECTURE_NAMES = {
    "mixtral": "mixtral",
    "qwen_moe": "qwen2_moe", "qwen2_moe": "qwen2_moe", "qwen2moe": "qwen2_moe",
    "qwen3_moe": "qwen3_moe", "qwen3moe": "qwen3_moe",
    "deepseek": "deepseek", "deepseek_moe": "deepseek", "deepseekmoe": "deepseek",
}  # fmt: skip
QWEN_FAMILY = "qwen"  # a prefix of both Qwen layouts: the base's family picks one


def architecture(value: str) -> str:
    """`Mixtral`, `mix`, `DeepSeek MoE`, `deep`, `qwen3`... -> mixtral, qwen2_moe, qwen3_moe, deepseek; an ambiguous
    prefix of both Qwen layouts -> `qwen` (see `for_base`). Raises ValueError for anything else."""
    key = str(value).strip().lower().replace(" ", "_").replace("-", "_")
    if key in ARCHITECTURE_NAMES:
        return ARCHITECTURE_NAMES[key]
    matches = {arch for name, arch in ARCHITECTURE_NAMES.items() if key and name.startswith(key)}
    if len(matches) == 1:
        return matches.pop()
    if matches == {"qwen2_moe", "qwen3_moe"}:
        return QWEN_FAMILY
    raise ValueError(f"unknown architecture {value!r}: use mixtral, qwen2_moe, qwen3_moe or deepseek")


def for_base(requested: str | None, model_type: str | None) -> str | None:
    """The architecture to build: `qwen` (either Qwen layout) becomes the one of the base's family."""
    if requested != QWEN_FAMILY:
        return requested
    return "qwen3_moe" if model_type == "qwen3" else "qwen2_moe"


def model_reference(value: Any) -> Any:
    """mergekit's ModelReference written as a mapping (`{model: {path, revision}, lora: {path, revision}}`, or with
    plain strings) -> `path@revision` or `model+lora`; anything else is returned as it is."""

    def path(part: Any) -> Any:
        if isinstance(part, dict) and isinstance(part.get("path"), str):
            return part["path"] + (f"@{part['revision']}" if part.get("revision") else "")
        return part

    if not isinstance(value, dict) or "model" not in value:
        return path(value)
    model, lora = path(value["model"]), path(value.get("lora"))
    if not isinstance(model, str) or (lora is not None and not isinstance(lora, str)):
        return value
    return model if lora is None else f"{model}+{lora}"


def _ignored(entry: dict[str, Any], valid: list[str], where: str, strict: tuple[str, ...]) -> list[str]:
    """Drop the keys of `entry` that are not valid and not near misses of valid ones; their paths."""
    dropped = []
    for key in list(entry):
        if key in valid or key in strict or not isinstance(key, str):
            continue
        if difflib.get_close_matches(key, valid, n=1, cutoff=NEAR_MISS):
            continue  # a typo: left for the validator to report with its did-you-mean
        del entry[key]
        dropped.append(f"{where}{key}")
    return dropped


def from_mergekit(data: dict[str, Any], *, top: list[str], expert: list[str], source: str) -> dict[str, Any]:
    """A copy of a parsed config with mergekit's spellings mapped and the keys it ignores dropped (one warning names
    them all). `top` and `expert` are the valid keys of the config and of an expert entry."""
    data = dict(data)
    ignored = _ignored(data, top, "", strict=("router_training",))
    if "base_model" in data:
        data["base_model"] = model_reference(data["base_model"])
    if isinstance(data.get("gate_mode"), str):
        data["gate_mode"] = GATE_MODE_ALIASES.get(data["gate_mode"], data["gate_mode"])
    for group in ("experts", "shared_experts"):
        if not isinstance(data.get(group), list):
            continue
        entries = []
        for i, entry in enumerate(data[group]):
            if isinstance(entry, dict):
                entry = dict(entry)
                ignored += _ignored(entry, expert, f"{group}[{i}].", strict=())
                if "source_model" in entry:
                    entry["source_model"] = model_reference(entry["source_model"])
            entries.append(entry)
        data[group] = entries
    if ignored:
        log.warning("%s: ignoring %s (not used by a mixture-of-experts merge; mergekit-moe ignores them too)",
                    source, ", ".join(f"'{key}'" for key in ignored))  # fmt: skip
    return data
