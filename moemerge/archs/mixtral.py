"""Mixtral output (`MixtralForCausalLM`) from llama and mistral bases."""

from __future__ import annotations

from typing import Any

from moemerge.archs.base import MoeShape, OutputArch, bias_reasons, common_config

DROPPED_KEYS = ("mlp_bias", "attention_bias", "pretraining_tp")


def build_config(base: dict[str, Any], shape: MoeShape) -> dict[str, Any]:
    config = {k: v for k, v in common_config(base, dtype=shape.dtype).items() if k not in DROPPED_KEYS}
    config.update(
        architectures=["MixtralForCausalLM"],
        model_type="mixtral",
        num_local_experts=shape.num_experts,
        num_experts_per_tok=shape.experts_per_token,
        intermediate_size=shape.intermediate_size,
        sliding_window=base.get("sliding_window") if base.get("use_sliding_window", True) else None,
        output_router_logits=False,
    )
    return config


MIXTRAL = OutputArch(
    name="mixtral",
    model_type="mixtral",
    class_name="MixtralForCausalLM",
    input_types=("llama", "mistral"),
    router="model.layers.{layer}.block_sparse_moe.gate.weight",
    experts={
        "gate": "model.layers.{layer}.block_sparse_moe.experts.{expert}.w1.weight",
        "down": "model.layers.{layer}.block_sparse_moe.experts.{expert}.w2.weight",
        "up": "model.layers.{layer}.block_sparse_moe.experts.{expert}.w3.weight",
    },
    build_config=build_config,
    extra_reasons=bias_reasons,
)
