"""transformers' config classes for the families moemerge reads, as a table: each class's fields with their defaults
and what its __post_init__ derives (head_dim, key/value heads, sliding windows, layer_types, rope_parameters), as in
transformers 5.x. Reading a config.json this way costs no import of transformers (which imports torch: ~3 s), so a
cheap merge and `moemerge plan` start at once. A config the table cannot vouch for (another model_type, a value of
another type than the field's, nested or unusual rope parameters, layer types beyond full/sliding, ...) gets None,
and the caller asks transformers itself. tests/test_config_classes.py checks the table against transformers."""

from __future__ import annotations

import copy
from typing import Any

# The value kinds of fields whose kind is not their default's type: what a value must be for the class to take it.
KINDS = {"num_key_value_heads": int, "head_dim": int, "pad_token_id": int, "bos_token_id": int,
         "eos_token_id": (int, list), "sliding_window": int, "layer_types": list, "mlp_only_layers": list,
         "pretraining_tp": int, "rope_parameters": dict, "attention_dropout": (int, float)}  # fmt: skip
# fields that may be null (their annotation allows None), and where the class fills in a null itself
NULLABLE = {"pad_token_id", "bos_token_id", "eos_token_id", "rope_parameters", "sliding_window", "head_dim",
            "num_key_value_heads", "layer_types", "mlp_only_layers", "pretraining_tp"}  # fmt: skip
NOT_NULLABLE = {("qwen3", "head_dim"), ("mistral", "num_key_value_heads"), ("mixtral", "num_key_value_heads"),
                ("qwen3_moe", "num_key_value_heads")}  # fmt: skip

_LLAMA_LIKE = {"vocab_size": 32000, "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
               "hidden_act": "silu", "initializer_range": 0.02, "rms_norm_eps": 1e-6, "use_cache": True,
               "pad_token_id": None, "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": False,
               "rope_parameters": None, "attention_dropout": 0.0}  # fmt: skip
_QWEN_LIKE = {**_LLAMA_LIKE, "vocab_size": 151936, "max_position_embeddings": 32768, "bos_token_id": None,
              "eos_token_id": None, "use_sliding_window": False, "sliding_window": 4096}  # fmt: skip
_MOE = {"decoder_sparse_step": 1, "norm_topk_prob": False, "output_router_logits": False,
        "router_aux_loss_coef": 0.001, "mlp_only_layers": None}  # fmt: skip

# model_type -> {field: default}; `None` defaults that may never be None are listed in REQUIRED
DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": {**_LLAMA_LIKE, "intermediate_size": 11008, "num_key_value_heads": None, "max_position_embeddings": 2048,
              "pretraining_tp": 1, "attention_bias": False, "mlp_bias": False, "head_dim": None},
    "mistral": {**_LLAMA_LIKE, "intermediate_size": 14336, "num_key_value_heads": 8, "head_dim": None,
                "max_position_embeddings": 131072, "sliding_window": 4096},
    "qwen2": {**_QWEN_LIKE, "intermediate_size": 22016, "num_key_value_heads": 32, "max_window_layers": 28,
              "layer_types": None},
    "qwen3": {**_QWEN_LIKE, "intermediate_size": 22016, "num_key_value_heads": 32, "head_dim": 128,
              "attention_bias": False, "max_window_layers": 28, "layer_types": None},
    "phi3": {**_LLAMA_LIKE, "vocab_size": 32064, "hidden_size": 3072, "intermediate_size": 8192,
             "num_key_value_heads": None, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "max_position_embeddings": 4096,
             "original_max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "eos_token_id": 32000,
             "pad_token_id": 32000, "sliding_window": None},
    "mixtral": {**_LLAMA_LIKE, "intermediate_size": 14336, "num_key_value_heads": 8, "head_dim": None,
                "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "sliding_window": None,
                "num_experts_per_tok": 2, "num_local_experts": 8, "output_router_logits": False,
                "router_aux_loss_coef": 0.001, "router_jitter_noise": 0.0},
    "qwen2_moe": {**_QWEN_LIKE, **_MOE, "hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 24,
                  "num_attention_heads": 16, "num_key_value_heads": 16, "max_window_layers": 28,
                  "moe_intermediate_size": 1408, "shared_expert_intermediate_size": 5632, "num_experts_per_tok": 4,
                  "num_experts": 60, "qkv_bias": True, "layer_types": None},
    "qwen3_moe": {**_QWEN_LIKE, **_MOE, "hidden_size": 2048, "intermediate_size": 6144, "num_hidden_layers": 24,
                  "num_key_value_heads": 4, "attention_bias": False, "moe_intermediate_size": 768,
                  "num_experts_per_tok": 8, "num_experts": 128},
}  # fmt: skip
DEFAULT_THETA = {"mixtral": 1_000_000.0}  # others: 10000.0
ATTRIBUTE_MAPS = {"mixtral": {"num_experts": "num_local_experts"}, "qwen3_moe": {"num_experts": "num_local_experts"}}
# rope types whose standardisation and validation the table reproduces: type -> keys transformers requires
ROPE_KEYS = {"default": set(), "linear": {"factor"}, "dynamic": {"factor"},
             "yarn": {"factor", "original_max_position_embeddings"},
             "llama3": {"factor", "original_max_position_embeddings", "low_freq_factor", "high_freq_factor",
                        "rope_theta"}}  # fmt: skip
# every rope_type transformers' rotary embeddings implement (modeling_rope_utils.ROPE_INIT_FUNCTIONS, plus default)
ROPE_TYPES = frozenset({"default", "linear", "dynamic", "yarn", "longrope", "llama3", "proportional"})
LAYER_TYPES = ("full_attention", "sliding_attention")


def effective(config: dict[str, Any]) -> dict[str, Any] | None:
    """What transformers' config class for this model_type holds after reading `config` (its to_dict(), the generic
    keys aside), or None where the table cannot vouch for transformers' answer."""
    model_type = config.get("model_type")
    defaults = DEFAULTS.get(model_type)
    if defaults is None or not _typed(config, model_type) or config.get("output_attentions"):
        return None
    extra = {k: copy.deepcopy(v) for k, v in config.items() if k not in defaults}
    cfg = {**defaults, **{k: copy.deepcopy(config[k]) for k in defaults if k in config}}
    _post_init(cfg, model_type)
    if not _rope(cfg, extra, model_type) or not _valid({**extra, **cfg}, model_type):
        return None
    for alias, name in ATTRIBUTE_MAPS.get(model_type, {}).items():  # the class stores an alias under its name
        if alias in extra:
            cfg[name] = extra.pop(alias)
        elif alias in cfg:
            cfg[name] = cfg.pop(alias)
    dtype = config.get("dtype") if config.get("dtype") is not None else config.get("torch_dtype")
    return {"architectures": config.get("architectures"), "dtype": dtype, **cfg, **extra, "model_type": model_type}


def _kind_ok(value: Any, kind: Any) -> bool:
    """A value the class's type check takes: bools only where it declares bool, ints never where it declares float."""
    if isinstance(value, bool):
        return kind is bool
    if kind == (int, list):  # a token id or a list of them
        return isinstance(value, int) or (
            isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        )
    return isinstance(value, kind)


def _typed(config: dict[str, Any], model_type: str) -> bool:
    """Every field the config sets has a value of the field's kind (transformers refuses others)."""
    for key, default in DEFAULTS[model_type].items():
        if key not in config:
            continue
        value = config[key]
        if value is None:
            if not nullable(model_type, key):
                return False
            continue
        if not _kind_ok(value, KINDS.get(key, type(default))):
            return False
    return True


def nullable(model_type: str, key: str) -> bool:
    """Whether the class's annotation for this field allows None."""
    if key == "attention_dropout":
        return model_type == "llama"
    return key in NULLABLE and (model_type, key) not in NOT_NULLABLE


def _post_init(cfg: dict[str, Any], model_type: str) -> None:
    """The derivations in each class's __post_init__."""
    if cfg.get("num_key_value_heads") is None and model_type not in ("qwen2_moe", "qwen3_moe"):
        cfg["num_key_value_heads"] = cfg["num_attention_heads"]
    if model_type in ("llama", "mistral") and cfg["head_dim"] is None:
        cfg["head_dim"] = cfg["hidden_size"] // cfg["num_attention_heads"]
    if model_type in ("qwen2", "qwen3", "qwen3_moe"):
        cfg["sliding_window"] = cfg["sliding_window"] if cfg["use_sliding_window"] else None
    if model_type == "qwen2_moe":
        cfg["sliding_window"] = cfg["sliding_window"] if cfg["use_sliding_window"] else 0
    if model_type in ("qwen2_moe", "qwen3_moe") and cfg["mlp_only_layers"] is None:
        cfg["mlp_only_layers"] = []
    if model_type in ("qwen2", "qwen3") and cfg["layer_types"] is None:
        cfg["layer_types"] = [
            "sliding_attention" if cfg["sliding_window"] is not None and i >= cfg["max_window_layers"]
            else "full_attention" for i in range(cfg["num_hidden_layers"])
        ]  # fmt: skip
    if model_type == "qwen2_moe" and cfg["layer_types"] is None:
        cfg["layer_types"] = [
            "sliding_attention" if (i + 1) % 2 and i < cfg["max_window_layers"] and cfg["use_sliding_window"]
            else "full_attention" for i in range(cfg["num_hidden_layers"])
        ]  # fmt: skip


def _rope(cfg: dict[str, Any], extra: dict[str, Any], model_type: str) -> bool:
    """rope_parameters from rope_parameters / rope_scaling / rope_theta / partial_rotary_factor, standardised and
    validated as PreTrainedConfig does; False where the table does not cover the case."""
    scaling = extra.get("rope_scaling")
    if scaling is not None and not isinstance(scaling, dict):
        return False
    rope = scaling or cfg["rope_parameters"] or {}
    if any(isinstance(v, dict) or k in LAYER_TYPES for k, v in rope.items()):
        return False  # nested per layer type
    rope.setdefault("rope_theta", extra.get("rope_theta", DEFAULT_THETA.get(model_type, 10000.0)))
    partial = extra.get("partial_rotary_factor")
    if model_type == "phi3":
        rope.setdefault("partial_rotary_factor", 1.0 if partial is None else partial)
    elif partial is not None:
        rope.setdefault("partial_rotary_factor", partial)
    rope.setdefault("rope_type", rope.get("type", "default"))
    rope_type = rope["rope_type"]
    if rope_type not in ROPE_KEYS or (model_type == "phi3" and rope_type != "default"):
        return False  # phi3's own validation (longrope factor lengths) is transformers' to judge
    if rope_type in ("llama3", "yarn"):  # the pretraining length moves into the rope parameters
        rope.setdefault("original_max_position_embeddings", cfg["max_position_embeddings"])
    if not ROPE_KEYS[rope_type] <= set(rope):
        return False
    cfg["rope_parameters"] = rope
    if scaling:
        extra["rope_scaling"] = copy.deepcopy(rope)  # transformers fills the dict it was given, in place
    return True


def _valid(cfg: dict[str, Any], model_type: str) -> bool:
    """The checks of the class that would refuse the config (the caller then asks transformers, which says why)."""
    heads, layers = cfg["num_attention_heads"], cfg["num_hidden_layers"]
    if heads <= 0 or cfg["hidden_size"] <= 0 or layers < 0:
        return False
    if model_type == "llama" and (cfg["hidden_size"] % heads or not 0.0 <= cfg["initializer_range"] <= 1.0):
        return False
    head_dim = cfg.get("head_dim")
    if isinstance(head_dim, int) and head_dim > 4 and head_dim % 2:
        return False
    kinds = cfg.get("layer_types")
    if kinds is not None and (len(kinds) != layers or any(k not in LAYER_TYPES for k in kinds)):
        return False
    return True
