"""What a PEFT LoRA adapter means, from adapter_config.json and its weights' header alone: which variants are refused,
each module's rank and scale (peft's rules), and which model weights its lora_A/lora_B pairs change."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from moemerge.sources.headers import TensorInfo

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


ELEMENT_SIZE = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2}


def numel(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def short(module: str) -> str:
    """`model.layers.3.self_attn.q_proj` -> `self_attn.q_proj`; `lm_head` stays."""
    return re.sub(r"^.*\.layers\.\d+\.", "", module)


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def config_problems(config: Any) -> list[str]:
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
        if not _positive(config.get(key, 8)):
            problems.append(f"adapter_config.json: {key} must be a positive number")
    for key in ("rank_pattern", "alpha_pattern"):
        pattern = config.get(key) or {}
        if not isinstance(pattern, dict) or not all(_positive(v) for v in pattern.values()):
            problems.append(f"adapter_config.json: {key} must map module names to positive numbers")
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
        found = LORA_KEY.match(key)
        if found:
            modules.setdefault(found.group(1), {})[found.group(2)] = key
        else:
            other.append(key)
    return modules, other


def _lora(config, module: str, keys: dict[str, str], adapter: dict[str, TensorInfo], weight: TensorInfo) -> Lora | str:
    """The Lora for one module, or why its tensors do not fit the model side's weight."""
    if set(keys) != {"A", "B"}:
        return (
            f"{module} has lora_{next(iter(keys))} but no lora_{'B' if 'A' in keys else 'A'}; the adapter is incomplete"
        )
    a, b = adapter[keys["A"]], adapter[keys["B"]]
    rank, scale = _scale(config, module)
    if len(a.shape) != 2 or len(b.shape) != 2 or a.dtype not in ELEMENT_SIZE or b.dtype not in ELEMENT_SIZE:
        return f"{module}: lora_A and lora_B must be 2-D floating-point tensors"
    if a.shape[0] != rank or b.shape[1] != rank:
        return (f"{module}: adapter_config.json gives rank {rank}, its weights have rank {a.shape[0]} "
                f"(lora_A) and {b.shape[1]} (lora_B); the config and weights do not belong together")  # fmt: skip
    if (b.shape[0], a.shape[1]) != tuple(weight.shape):
        return (f"{module}: the adapter's delta is {[b.shape[0], a.shape[1]]} but the model's weight is "
                f"{list(weight.shape)}; the adapter was made for another model")  # fmt: skip
    return Lora(keys["A"], keys["B"], rank, scale)


def match_modules(
    config: dict[str, Any], adapter: dict[str, TensorInfo], model: dict[str, TensorInfo]
) -> tuple[dict[str, Lora], list[str], list[str]]:
    """(model weight name -> Lora, non-MLP modules ignored, problems) from the adapter's and the model side's headers
    (`model` holds the model's MLP weights only)."""
    modules, other = _modules(adapter)
    loras: dict[str, Lora] = {}
    ignored: set[str] = set()
    problems: list[str] = []
    for module, keys in sorted(modules.items()):
        weight = module + ".weight"
        if weight in model:
            got = _lora(config, module, keys, adapter, model[weight])
            if isinstance(got, str):
                problems.append(got)
            else:
                loras[weight] = got
        elif ".mlp." in module:
            problems.append(f"it targets {module}, which the model has no weight for (an adapter for another "
                            "model family?)")  # fmt: skip
        else:
            ignored.add(short(module))
    for key in other:
        name = key.removeprefix(PREFIX)
        module = name.split(".lora_")[0] if ".lora_" in name else name.rsplit(".", 1)[0]
        if ".mlp." in module:
            problems.append(f"it holds {key}, which is not a LoRA pair (a full MLP copy via modules_to_save?); "
                            "only lora_A/lora_B deltas can be merged")  # fmt: skip
        else:
            ignored.add(short(module))
    if len(problems) > 1:
        problems = [f"{problems[0]} (and {len(problems) - 1} more problem(s) like it)"]
    if not loras and not problems:
        what = f" (it changes {', '.join(sorted(ignored))})" if ignored else ""
        problems.append(f"it changes no MLP weight{what}; as an expert it would equal its base model")
    return loras, sorted(ignored), problems
