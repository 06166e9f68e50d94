"""Mixtral output (`MixtralForCausalLM`) from llama, mistral and phi3 bases (phi3's fused qkv/gate_up are split)."""

from __future__ import annotations

from typing import Any

from moemerge.archs.base import MoeShape, OutputArch, bias_reasons, common_config, dtype_of, window_fields

# fields of the input classes Mixtral lacks (biases are refused, dropouts are training-only)
DROPPED_KEYS = ("mlp_bias", "attention_bias", "pretraining_tp", "resid_pdrop", "embd_pdrop", "layer_types",
                "use_sliding_window", "max_window_layers")  # fmt: skip


def build_config(base: dict[str, Any], shape: MoeShape) -> dict[str, Any]:
    config = {k: v for k, v in common_config(base, dtype=shape.dtype).items() if k not in DROPPED_KEYS}
    config.update(
        architectures=["MixtralForCausalLM"],
        model_type="mixtral",
        num_local_experts=shape.num_experts,
        num_experts_per_tok=shape.experts_per_token,
        intermediate_size=shape.intermediate_size,
        sliding_window=window_fields(base)["sliding_window"],
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
    extra_reasons=bias_reasons,
    shape_of=lambda c: MoeShape(c["num_local_experts"], c["num_experts_per_tok"], dtype_of(c), c["intermediate_size"]),
)
