"""What an output architecture is: name templates for the MoE block plus a config.json builder."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from moemerge.archs import effective

# Dense input MLP tensors (llama, mistral, qwen2, qwen3): role -> name template.
DENSE_MLP = {
    "gate": "model.layers.{layer}.mlp.gate_proj.weight",
    "up": "model.layers.{layer}.mlp.up_proj.weight",
    "down": "model.layers.{layer}.mlp.down_proj.weight",
}


@dataclass(frozen=True)
class MoeShape:
    """What a config builder needs to know about the merge beyond the base config."""

    num_experts: int
    experts_per_token: int
    dtype: str
    intermediate_size: int
    shared_intermediate_size: int | None = None  # None: the architecture's shared expert is absent


@dataclass(frozen=True)
class OutputArch:
    """One output layout. Templates use `{layer}` and `{expert}`; roles are gate/up/down."""

    name: str
    model_type: str
    class_name: str
    input_types: tuple[str, ...]
    router: str
    experts: dict[str, str]
    build_config: Callable[[dict[str, Any], MoeShape], dict[str, Any]]
    shared_expert: dict[str, str] = field(default_factory=dict)  # role -> template with {layer}
    shared_gate: str | None = None  # (1, hidden) sigmoid gate of the shared expert
    max_shared_experts: int = 0
    zero_shared_expert: bool = False  # no shared expert given: write one whose output is exactly zero
    extra_reasons: Callable[[dict[str, Any], set[str]], list[str]] = lambda config, names: []
    # tensors the output needs that the base lacks, written as zeros: (config, base names) -> {name: shape}
    zero_tensors: Callable[[dict[str, Any], set[str]], dict[str, tuple[int, ...]]] = lambda config, names: {}
    warnings: tuple[str, ...] = ()  # said at merge time and written in the model card
    # the inverse of build_config, for `verify`: what a written config.json says about the MoE blocks
    shape_of: Callable[[dict[str, Any]], MoeShape] = lambda config: MoeShape(0, 0, "", 0)
    rope_types: frozenset[str] | None = None  # rope types its code implements (None: every one transformers has)
    derives_head_dim: bool = False  # its code takes head_dim = hidden_size / heads and ignores config.head_dim

    def reasons(self, config: dict[str, Any], tensor_names: set[str]) -> list[str]:
        """Why this architecture cannot be built from a base with this config and these tensors ([] = it can)."""
        model_type = config.get("model_type")
        if model_type not in self.input_types:
            return [f"takes {' or '.join(self.input_types)} models, not '{model_type}'"]
        try:
            base = effective.settings(config)
        except ValueError as exc:
            why = (str(exc).splitlines() or ["invalid"])[0]
            return [f"transformers cannot read the base's config.json as a '{model_type}' config ({why})"]
        return self.setting_reasons(base) + self.extra_reasons(config, tensor_names)

    def setting_reasons(self, base: effective.Settings) -> list[str]:
        """Base settings this output's code cannot reproduce: partial rotary, rope types, sliding windows, head_dim."""
        reasons = []
        if base.rotary_fraction != 1.0 and self.model_type not in effective.PARTIAL_ROTARY:
            reasons.append(f"rotates every head dimension, but the base rotates {base.rotary_fraction} of each "
                           "(partial_rotary_factor)")  # fmt: skip
        rope_type = base.rope.get("rope_type", "default")
        types = self.rope_types or effective.rope_types()
        if rope_type not in types:
            reasons.append(f"implements rope_type {', '.join(sorted(types))}, not the base's '{rope_type}'")
        sliding = effective.WINDOWS[self.model_type]
        if sliding == "none" and any(w is not None for w in base.windows):
            reasons.append(
                f"has no sliding-window attention, but the base uses {effective.describe_windows(base.windows)}"
            )
        if sliding == "all" and len(set(base.windows)) > 1:
            reasons.append(f"slides on every layer or on none, but the base uses "
                           f"{effective.describe_windows(base.windows)} only (layer_types)")  # fmt: skip
        if self.derives_head_dim and base.head_dim * base.num_attention_heads != base.hidden_size:
            reasons.append(f"derives head_dim from hidden_size / heads, but the base sets head_dim {base.head_dim}")
        return reasons


def common_config(base: dict[str, Any], *, dtype: str) -> dict[str, Any]:
    """The base's full effective config (every field of its class, defaults included, so that a key its file omits
    keeps its meaning for the base) with dtype and rope in both the transformers 4.x and 5.x spellings."""
    full = effective.full_dict(base)
    dropped = ("auto_map", "rope_scaling", "rope_theta", "partial_rotary_factor", "torch_dtype", "dtype")
    config = {k: v for k, v in full.items() if k not in dropped}
    rope = dict(full["rope_parameters"])
    if rope.get("partial_rotary_factor") == 1.0:
        del rope["partial_rotary_factor"]  # every dimension rotates: the only value an output accepts
    config["rope_parameters"] = rope
    config["rope_theta"] = rope["rope_theta"]
    if rope["rope_type"] != "default":  # 4.x and DeepSeek's remote code read rope_scaling["type"]
        config["rope_scaling"] = {"type": rope["rope_type"], **{k: v for k, v in rope.items() if k != "rope_theta"}}
    config["dtype"] = config["torch_dtype"] = dtype
    heads = int(full["num_attention_heads"])
    config["num_key_value_heads"] = int(full.get("num_key_value_heads") or heads)
    config["head_dim"] = int(full.get("head_dim") or full["hidden_size"] // heads)
    config["tie_word_embeddings"] = bool(full.get("tie_word_embeddings", False))
    return config


def window_fields(base: dict[str, Any]) -> dict[str, Any]:
    """sliding_window/use_sliding_window for an output that slides on every layer or none (refused otherwise)."""
    windows = effective.settings(base).windows
    return {"sliding_window": windows[0] if windows else None, "use_sliding_window": bool(windows and windows[0])}


def dtype_of(config: dict[str, Any]) -> str:
    return str(config.get("dtype") or config.get("torch_dtype") or "float32")


def qwen_moe_fields(shape: MoeShape) -> dict[str, Any]:
    """The config fields Qwen2-MoE and Qwen3-MoE share: every layer sparse, top-k renormalised."""
    return {
        "num_experts": shape.num_experts,
        "num_experts_per_tok": shape.experts_per_token,
        "moe_intermediate_size": shape.intermediate_size,
        "norm_topk_prob": True,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
        "output_router_logits": False,
    }


def bias_reasons(config: dict[str, Any], tensor_names: set[str]) -> list[str]:
    """Bias terms an output without biases would silently drop."""
    biased = sorted({n.split(".")[-2] for n in tensor_names if n.endswith(".bias") and ".layers." in n})
    if biased or config.get("attention_bias") or config.get("mlp_bias"):
        what = ", ".join(biased) or "attention/MLP"
        return [f"has no bias terms, but the base has {what} biases (they would be dropped)"]
    return []
