"""Qwen3-MoE output (`Qwen3MoeForCausalLM`) from qwen3 bases; q_norm/k_norm pass through from the base."""

from __future__ import annotations

from typing import Any

from moemerge.archs.base import MoeShape, OutputArch, bias_reasons, common_config


def build_config(base: dict[str, Any], shape: MoeShape) -> dict[str, Any]:
    config = common_config(base, dtype=shape.dtype)
    config.pop("layer_types", None)
    config.update(
        architectures=["Qwen3MoeForCausalLM"],
        model_type="qwen3_moe",
        num_experts=shape.num_experts,
        num_experts_per_tok=shape.experts_per_token,
        moe_intermediate_size=shape.intermediate_size,
        norm_topk_prob=True,
        decoder_sparse_step=1,
        mlp_only_layers=[],
        use_sliding_window=False,
        sliding_window=None,
        output_router_logits=False,
    )
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
)
