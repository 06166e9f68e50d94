"""What an output architecture is: name templates for the MoE block plus a config.json builder."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# Dense input MLP tensors (llama, mistral, qwen2, qwen3): role -> name template.
DENSE_MLP = {
    "gate": "model.layers.{layer}.mlp.gate_proj.weight",
    "up": "model.layers.{layer}.mlp.up_proj.weight",
    "down": "model.layers.{layer}.mlp.down_proj.weight",
}
DEFAULT_ROPE_THETA = 10000.0


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

    def reasons(self, config: dict[str, Any], tensor_names: set[str]) -> list[str]:
        """Why this architecture cannot be built from a base with this config and these tensors ([] = it can)."""
        model_type = config.get("model_type")
        if model_type not in self.input_types:
            return [f"takes {' or '.join(self.input_types)} models, not '{model_type}'"]
        return self.extra_reasons(config, tensor_names)


def common_config(base: dict[str, Any], *, dtype: str) -> dict[str, Any]:
    """The base config with dtype and rope written in both the transformers 4.x and 5.x spellings."""
    config = {k: v for k, v in base.items() if k not in ("_name_or_path", "transformers_version", "auto_map")}
    scaling = dict(base.get("rope_scaling") or {})
    rope = dict(base.get("rope_parameters") or {})
    if not rope:
        rope = {k: v for k, v in scaling.items() if k != "type"}
        rope["rope_type"] = scaling.get("rope_type", scaling.get("type", "default"))
    theta = rope.get("rope_theta", base.get("rope_theta", DEFAULT_ROPE_THETA))
    rope["rope_theta"] = theta
    rope.setdefault("rope_type", "default")
    config["rope_parameters"] = rope
    config["rope_theta"] = theta
    if rope["rope_type"] != "default":
        config["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
    config["dtype"] = config["torch_dtype"] = dtype
    heads = base.get("num_attention_heads")
    if base.get("head_dim") is None and heads:
        config["head_dim"] = base["hidden_size"] // heads
    config["tie_word_embeddings"] = bool(base.get("tie_word_embeddings", False))
    return config


def dtype_of(config: dict[str, Any]) -> str:
    return str(config.get("dtype") or config.get("torch_dtype") or "float32")


def qwen_moe_fields(shape: MoeShape) -> dict[str, Any]:
    """The config fields Qwen2-MoE and Qwen3-MoE share: every layer sparse, top-k renormalised, no sliding window."""
    return {
        "num_experts": shape.num_experts,
        "num_experts_per_tok": shape.experts_per_token,
        "moe_intermediate_size": shape.intermediate_size,
        "norm_topk_prob": True,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
        "use_sliding_window": False,
        "sliding_window": None,
        "output_router_logits": False,
    }


def bias_reasons(config: dict[str, Any], tensor_names: set[str]) -> list[str]:
    """Bias terms an output without biases would silently drop."""
    biased = sorted({n.split(".")[-2] for n in tensor_names if n.endswith(".bias") and ".layers." in n})
    if biased or config.get("attention_bias") or config.get("mlp_bias"):
        what = ", ".join(biased) or "attention/MLP"
        return [f"has no bias terms, but the base has {what} biases (they would be dropped)"]
    return []
