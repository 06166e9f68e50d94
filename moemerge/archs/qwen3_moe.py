"""Qwen3-MoE output (`Qwen3MoeForCausalLM`) from qwen3 bases; q_norm/k_norm pass through from the base."""

from __future__ import annotations

from typing import Any

from moemerge.archs.base import MoeShape, OutputArch, bias_reasons, common_config, dtype_of, qwen_moe_fields


def build_config(base: dict[str, Any], shape: MoeShape) -> dict[str, Any]:
    config = common_config(base, dtype=shape.dtype)
    config.pop("layer_types", None)
    config.update(qwen_moe_fields(shape), architectures=["Qwen3MoeForCausalLM"], model_type="qwen3_moe")
    return config


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
    extra_reasons=bias_reasons,
    shape_of=lambda c: MoeShape(c["num_experts"], c["num_experts_per_tok"], dtype_of(c), c["moe_intermediate_size"]),
)
