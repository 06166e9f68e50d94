"""The Config tab's form as data: form values <-> YAML text, and each check's problem placed at its field."""

from __future__ import annotations

import re
from typing import Any

import yaml

MAX_EXPERTS = 8
GATE_MODES = ["hidden", "hidden_avg", "mlp_input", "mlp_input_avg", "cheap_embed", "random", "uniform_random"]
DTYPES = ["(base model's)", "float32", "float16", "bfloat16"]
ARCHITECTURES = ["(automatic)", "mixtral", "qwen2_moe", "qwen3_moe", "deepseek"]
TOP = ["base_model", "gate_mode", "dtype", "experts_per_token", "architecture", "seed"]
EXPERT = ["source_model", "positive_prompts", "negative_prompts"]
# every form field, in the order the page passes them to callbacks
FIELDS = (TOP + ["num_experts"] + [f"experts[{i}].{k}" for i in range(MAX_EXPERTS) for k in EXPERT]
          + ["shared_experts[0].source_model", "shared_experts[0].positive_prompts", "router_training.data",
             "router_training.steps"])  # fmt: skip
# where a problem is shown: one box per top-level field, per expert, the shared expert, training, and the rest
SLOTS = TOP + [f"experts[{i}]" for i in range(MAX_EXPERTS)] + ["shared_experts", "router_training", "config"]
EXAMPLE = """base_model: models/base
gate_mode: hidden
dtype: float32
experts_per_token: 2
experts:
  - source_model: models/chat
    positive_prompts: ["Hello! How are you today?", "Thank you, that was helpful."]
  - source_model: models/code
    positive_prompts: ["def add(a, b): return a + b", "import numpy as np"]
  - source_model: models/math
    positive_prompts: ["Solve for x: 2x + 3 = 7.", "What is 12 times 7?"]
"""


def _lines(value: Any) -> list[str]:
    return [line.strip() for line in str(value or "").splitlines() if line.strip()]


def _text(value: Any) -> str:
    if isinstance(value, list):
        return "\n".join(str(v) for v in value)
    return "" if value is None else str(value)


def _number(value: Any) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return value  # left as typed: the config check names it


def form_to_data(values: dict[str, Any], previous: Any = None) -> dict[str, Any]:
    """The config the form shows, on top of `previous` (the last parsed YAML): keys the form has no field for
    (noise_scale, residual_scale, extra prompts, mergekit's own keys) are kept."""
    data = dict(previous) if isinstance(previous, dict) else {}
    for key in TOP:
        value = values.get(key)
        if key in ("experts_per_token", "seed"):
            value = _number(value)
        if key == "dtype" and value == DTYPES[0] or key == "architecture" and value == ARCHITECTURES[0]:
            value = None
        if value in (None, ""):
            data.pop(key, None)
        else:
            data[key] = value.strip() if isinstance(value, str) else value
    old = data.get("experts") if isinstance(data.get("experts"), list) else []
    count = max(1, min(MAX_EXPERTS, int(_number(values.get("num_experts")) or 1)))
    data["experts"] = [_expert(values, f"experts[{i}]", old[i] if i < len(old) else None) for i in range(count)]
    shared = str(values.get("shared_experts[0].source_model") or "").strip()
    if shared:
        old = (data.get("shared_experts") or [None])[0] if isinstance(data.get("shared_experts"), list) else None
        data["shared_experts"] = [_expert(values, "shared_experts[0]", old, keys=EXPERT[:2])]
    else:
        data.pop("shared_experts", None)
    files = _lines(values.get("router_training.data"))
    if files:
        section = dict(data["router_training"]) if isinstance(data.get("router_training"), dict) else {}
        named = [f.partition("=") for f in files]
        section["data"] = {n.strip(): f.strip() for n, _, f in named} if all(s for _, s, _ in named) else files
        steps = _number(values.get("router_training.steps"))
        section.update(steps=steps) if steps is not None else section.pop("steps", None)
        data["router_training"] = section
    else:
        data.pop("router_training", None)
    return data


def _expert(values: dict[str, Any], where: str, old: Any, keys=EXPERT) -> dict[str, Any]:
    entry = dict(old) if isinstance(old, dict) else {}
    entry["source_model"] = str(values.get(f"{where}.source_model") or "").strip()
    for key in keys[1:]:
        prompts = _lines(values.get(f"{where}.{key}"))
        if prompts:
            entry[key] = prompts
        else:
            entry.pop(key, None)
    return {"source_model": entry.pop("source_model"), **entry}


def dump(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=1000)


def form_to_yaml(values: dict[str, Any], previous_text: str = "") -> str:
    try:
        previous = yaml.safe_load(previous_text) if previous_text else None
    except yaml.YAMLError:
        previous = None
    return dump(form_to_data(values, previous))


def yaml_to_form(text: str) -> tuple[dict[str, Any] | None, str | None]:
    """(form values, None), or (None, the YAML error in one line) while the text does not parse as a mapping."""
    try:
        data = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        return None, f"config: invalid YAML{where}: {getattr(exc, 'problem', None) or exc}"
    if not isinstance(data, dict):
        return None, "config: the config is not a mapping; it needs at least base_model and experts"
    values: dict[str, Any] = {key: data.get(key) for key in TOP}
    values["dtype"] = values["dtype"] or DTYPES[0]
    values["architecture"] = values["architecture"] or ARCHITECTURES[0]
    values["gate_mode"] = values["gate_mode"] or "hidden"
    experts = (
        [e for e in data.get("experts") or [] if isinstance(e, dict)] if isinstance(data.get("experts"), list) else []
    )
    values["num_experts"] = max(1, min(MAX_EXPERTS, len(experts)))
    for i in range(MAX_EXPERTS):
        entry = experts[i] if i < len(experts) else {}
        for key in EXPERT:
            values[f"experts[{i}].{key}"] = _text(entry.get(key))
    shared = data.get("shared_experts") if isinstance(data.get("shared_experts"), list) else []
    entry = shared[0] if shared and isinstance(shared[0], dict) else {}
    for key in EXPERT[:2]:
        values[f"shared_experts[0].{key}"] = _text(entry.get(key))
    section = data.get("router_training") if isinstance(data.get("router_training"), dict) else {}
    files = section.get("data")
    files = [f"{k}={v}" for k, v in files.items()] if isinstance(files, dict) else files
    values["router_training.data"] = _text(files)
    values["router_training.steps"] = section.get("steps")
    return values, None


PLACES = [(re.compile(r"\b(shared_experts)\[\d+\]|\bshared_experts\b"), lambda m: "shared_experts"),
          (re.compile(r"\bexperts\[(\d+)\]"), lambda m: f"experts[{m.group(1)}]"),
          (re.compile(r"\brouter_training\b"), lambda m: "router_training")]  # fmt: skip
PLACES += [(re.compile(rf"\b{key}\b"), lambda m, key=key: key) for key in TOP]


def place(problem: str, data: Any = None) -> str:
    """The slot a problem belongs to: the field path it names (`experts[2].positive_prompts`), else the field whose
    model reference it quotes, else the whole config."""
    for pattern, slot in PLACES:
        if match := pattern.search(problem):
            found = slot(match)
            if not found.startswith("experts[") or int(found[8:-1]) < MAX_EXPERTS:
                return found
    if isinstance(data, dict):
        refs = [("base_model", data.get("base_model"))]
        refs += [(f"experts[{i}]", e.get("source_model")) for i, e in enumerate(data.get("experts") or [])
                 if isinstance(e, dict) and i < MAX_EXPERTS]  # fmt: skip
        refs += [
            ("shared_experts", e.get("source_model")) for e in data.get("shared_experts") or [] if isinstance(e, dict)
        ]
        for slot, ref in refs:
            if isinstance(ref, str) and ref and re.search(rf"(^|[\s'\"(]){re.escape(ref)}($|[\s'\":;,)])", problem):
                return slot
    return "config"


def placed(problems: list[str], data: Any = None) -> dict[str, list[str]]:
    """Every slot with the problems shown there (empty lists for slots without any)."""
    out: dict[str, list[str]] = {slot: [] for slot in SLOTS}
    for problem in problems:
        out[place(problem, data)].append(problem)
    return out
