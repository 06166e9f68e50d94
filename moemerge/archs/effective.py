"""A config.json as transformers' config class reads it (class defaults included), and the settings that decide what
a model's attention and MLP compute, read the way each model class's code reads them. The families moemerge merges
are read through a table of their classes (classes.py: no import of transformers, which costs ~3 s); any other
config, or one the table cannot vouch for, through transformers' own configuration classes."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, fields
from types import SimpleNamespace
from typing import Any

from moemerge.archs import classes

# keys every transformers config carries that say nothing about the model (left out of output configs)
GENERIC_KEYS = ("transformers_version", "_name_or_path", "output_hidden_states", "output_attentions", "return_dict",
                "chunk_size_feed_forward", "is_encoder_decoder", "id2label", "label2id", "problem_type")  # fmt: skip
# which layers slide, per model class: "none" (no sliding window in its code), "all" (config.sliding_window on every
# layer, None = off) or "layer_types" (config.sliding_window on the layers layer_types marks sliding_attention)
WINDOWS = {"llama": "none", "deepseek": "none", "mistral": "all", "mixtral": "all", "phi3": "all", "qwen3_moe": "all",
           "qwen2": "layer_types", "qwen3": "layer_types", "qwen2_moe": "layer_types"}  # fmt: skip
PARTIAL_ROTARY = ("phi3",)  # classes whose attention rotates only partial_rotary_factor of each head; others: all of it
# (q/k/v bias, o bias) per class: a config field name, or a constant
BIASES = {"llama": ("attention_bias", "attention_bias"), "qwen3": ("attention_bias", "attention_bias"),
          "qwen3_moe": ("attention_bias", "attention_bias"), "deepseek": ("attention_bias", "attention_bias"),
          "qwen2": (True, False), "qwen2_moe": ("qkv_bias", False)}  # fmt: skip
# DeepSeek-MoE has no transformers class: its remote DeepseekConfig's defaults for the fields compared here
DEEPSEEK_DEFAULTS = {"num_key_value_heads": 16, "hidden_act": "silu", "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
                     "attention_bias": False, "tie_word_embeddings": False, "max_position_embeddings": 4096}  # fmt: skip


@dataclass(frozen=True)
class Settings:
    """What a model computes beyond its tensors, as its class reads its config."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    hidden_act: str
    rope: dict  # rope parameters (type, theta, scaling), partial_rotary_factor aside
    rotary_fraction: float  # share of each head the rotary embedding turns
    windows: tuple  # per layer: the sliding window, None = full attention
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    tie_word_embeddings: bool
    vocab_size: int
    max_position_embeddings: int | None


@contextlib.contextmanager
def _quiet():
    """transformers' config classes log about odd fields; moemerge reports what matters itself."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def read(config: dict[str, Any], *, via_transformers: bool = False) -> Any:
    """The config object transformers builds from this dict, as attributes (DeepSeek: its remote class's defaults
    applied). Through the table where it applies, unless `via_transformers`. Raises ValueError when the class refuses
    it."""
    model_type = config.get("model_type")
    if model_type == "deepseek":
        return _deepseek(config)
    table = None if via_transformers else classes.effective(config)
    if table is not None:
        return SimpleNamespace(**table)
    return _transformers(config)


def _transformers(config: dict[str, Any]) -> Any:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    model_type = config.get("model_type")
    if model_type not in CONFIG_MAPPING:
        raise ValueError(f"model_type '{model_type}' is unknown to transformers")
    try:
        with _quiet():
            return CONFIG_MAPPING[model_type].from_dict(dict(config))
    except (TypeError, KeyError, AttributeError) as exc:
        raise ValueError(str(exc)) from None


def _deepseek(config: dict[str, Any]) -> Any:
    view = {**DEEPSEEK_DEFAULTS, **config}
    scaling = config.get("rope_scaling") or {}
    rope = {"rope_type": scaling.get("type", "default"), "rope_theta": view["rope_theta"]}
    if scaling:
        rope["factor"] = scaling.get("factor")
    view.update(rope_parameters=rope, head_dim=None, sliding_window=None)  # head_dim = hidden_size // heads
    return SimpleNamespace(**view)


def full_dict(config: dict[str, Any]) -> dict[str, Any]:
    """The config.json with every field of its class at its effective value (defaults and derived values included)."""
    table = classes.effective(config)
    merged = {**config, **(table if table is not None else _transformers(config).to_dict())}
    return {k: v for k, v in merged.items() if k not in GENERIC_KEYS}


def _flag(cfg: Any, spec: str | bool) -> bool:
    return bool(getattr(cfg, spec, False)) if isinstance(spec, str) else spec


def settings(config: dict[str, Any], *, via_transformers: bool = False) -> Settings:
    """Settings of a config.json, read through its class (raises ValueError when transformers refuses it)."""
    model_type = str(config.get("model_type"))
    try:
        return _settings(read(config, via_transformers=via_transformers), model_type)
    except (AttributeError, TypeError, IndexError) as exc:  # not a dense decoder config
        raise ValueError(str(exc)) from None


def _settings(cfg: Any, model_type: str) -> Settings:
    heads, layers = int(cfg.num_attention_heads), int(cfg.num_hidden_layers)
    rope = dict(getattr(cfg, "rope_parameters", None) or {})
    fraction = float(rope.pop("partial_rotary_factor", None) or 1.0)
    if rope.get("type") == rope.get("rope_type"):
        rope.pop("type", None)  # the 4.x spelling of rope_type, written for 4.x and DeepSeek's remote code
    window = getattr(cfg, "sliding_window", None)
    match WINDOWS.get(model_type, "none"):
        case "all":
            windows = (window,) * layers
        case "layer_types":
            windows = tuple(window if kind == "sliding_attention" else None for kind in cfg.layer_types[:layers])
        case _:
            windows = (None,) * layers
    qkv, o = BIASES.get(model_type, (False, False))
    return Settings(
        hidden_size=int(cfg.hidden_size),
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=int(getattr(cfg, "num_key_value_heads", None) or heads),
        head_dim=int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads),
        rms_norm_eps=float(cfg.rms_norm_eps),
        hidden_act=str(cfg.hidden_act),
        rope=rope,
        rotary_fraction=fraction if model_type in PARTIAL_ROTARY else 1.0,
        windows=windows,
        qkv_bias=_flag(cfg, qkv),
        o_bias=_flag(cfg, o),
        mlp_bias=bool(getattr(cfg, "mlp_bias", False)),
        tie_word_embeddings=bool(getattr(cfg, "tie_word_embeddings", False)),
        vocab_size=int(cfg.vocab_size),
        max_position_embeddings=getattr(cfg, "max_position_embeddings", None),
    )


def mismatches(base: Settings, out: Settings) -> list[str]:
    """Settings in which the output differs from the base. An output may have biases the base lacks (written as zeros),
    never the other way round."""
    found = []
    for f in fields(Settings):
        mine, theirs = getattr(base, f.name), getattr(out, f.name)
        if f.name in ("qkv_bias", "o_bias") and theirs >= mine:
            continue
        if mine != theirs:
            found.append(f"{f.name} {theirs!r} where the base has {mine!r}")
    return found


def rope_types() -> frozenset[str]:
    """Every rope_type transformers' own rotary embeddings implement."""
    return classes.ROPE_TYPES


def describe_windows(windows: tuple) -> str:
    """`a 16-token window on layers 1, 3` for a reason line."""
    sliding = [i for i, w in enumerate(windows) if w is not None]
    sizes = sorted({windows[i] for i in sliding})
    where = "every layer" if len(sliding) == len(windows) else "layers " + ", ".join(map(str, sliding))
    return f"a {'/'.join(map(str, sizes))}-token sliding window on {where}"
