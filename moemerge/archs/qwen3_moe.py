"""Qwen3-MoE output (`Qwen3MoeForCausalLM`) from qwen3 bases; q_norm/k_norm and attention biases pass through.

Qwen3MoeAttention slides `sliding_window` on every layer or on none: a base sliding on some layers only is refused.
"""

from __future__ import annotations

from typing import Any

from moemerge.archs.base import MoeShape, OutputArch, common_config, dtype_of, qwen_moe_fields, window_fields


def build_config(base: dict[str, Any], shape: MoeShape) -> dict[str, Any]:
    config = {k: v for k, v in common_config(base, dtype=shape.dtype).items()
              if k not in ("layer_types", "max_window_layers")}  # fmt: skip
    config.update(qwen_moe_fields(shape), architectures=["Qwen3MoeForCausalLM"], model_type="qwen3_moe")
    config.update(window_fields(base))
    return config


def _reasons(config: dict[str, Any], names: set[str]) -> list[str]:
    """Qwen3MoeAttention has q/k/v/o biases when attention_bias is set (carried); its MLPs have none."""
    if config.get("mlp_bias") or any(n.endswith(".bias") and ".mlp." in n for n in names):
        return ["has no MLP biases, but the base has them (they would be dropped)"]
    return []


QWEN3_MOE = OutputArch(
    name="qwen3_moe",
    model_type="qwen3_moe",
    class_name="Qwen3MoeForCausalLM",
    input_types=("qwen3",),
    router="model.layers.{layer}.mlp.gate.weight",
    experts={
        role: f"model.layers.{{layer}}.mlp.experts.{{expert}}.{role}_proj.weight" for role in ("gate", "up", "down")
    },
    build_config=build_config,
    extra_reasons=_reasons,
    shape_of=lambda c: MoeShape(c["num_experts"], c["num_experts_per_tok"], dtype_of(c), c["moe_intermediate_size"]),
)
