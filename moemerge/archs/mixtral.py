"""Mixtral output (`MixtralForCausalLM`) from llama, mistral and phi3 bases (phi3's fused qkv/gate_up are split)."""

from __future__ import annotations

from typing import Any

from moemerge.archs.base import MoeShape, OutputArch, bias_reasons, common_config, dtype_of

DROPPED_KEYS = ("mlp_bias", "attention_bias", "pretraining_tp", "resid_pdrop", "embd_pdrop", "partial_rotary_factor")


def _reasons(config: dict[str, Any], names: set[str]) -> list[str]:
    if config.get("partial_rotary_factor", 1.0) != 1.0:
        factor = config["partial_rotary_factor"]
        return [f"rotates every head dimension, but the base uses partial_rotary_factor {factor}"]
    return bias_reasons(config, names)


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
    input_types=("llama", "mistral", "phi3"),
    router="model.layers.{layer}.block_sparse_moe.gate.weight",
    experts={
        "gate": "model.layers.{layer}.block_sparse_moe.experts.{expert}.w1.weight",
        "down": "model.layers.{layer}.block_sparse_moe.experts.{expert}.w2.weight",
        "up": "model.layers.{layer}.block_sparse_moe.experts.{expert}.w3.weight",
    },
    build_config=build_config,
    extra_reasons=_reasons,
    shape_of=lambda c: MoeShape(c["num_local_experts"], c["num_experts_per_tok"], dtype_of(c), c["intermediate_size"]),
)
