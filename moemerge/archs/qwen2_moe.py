"""Qwen2-MoE output (`Qwen2MoeForCausalLM`) from qwen2 bases, and from llama/mistral bases with zero q/k/v biases.

Sliding windows are carried per layer (`layer_types`), head_dim as the base sets it (Qwen2MoeAttention reads it).
Always has a shared expert: `shared_experts[0]` with a gate from its prompts, or a zero-output one (intermediate size
1, zero down projection) so that the model equals its routed mixture.
"""

from __future__ import annotations

from typing import Any

from moemerge.archs import effective
from moemerge.archs.base import MoeShape, OutputArch, common_config, dtype_of, qwen_moe_fields

LLAMA_ONLY_KEYS = ("mlp_bias", "attention_bias", "pretraining_tp")
LLAMACPP_CAVEAT = (
    "llama.cpp's Qwen2-MoE runtime ignores norm_topk_prob and never renormalises the top-k routing weights: a GGUF "
    "conversion of this model weights the routed experts by their raw top-k probabilities"
)


def build_config(base: dict[str, Any], shape: MoeShape) -> dict[str, Any]:
    config = {k: v for k, v in common_config(base, dtype=shape.dtype).items() if k not in LLAMA_ONLY_KEYS}
    windows = effective.settings(base).windows
    sliding = [w for w in windows if w is not None]
    config.update(qwen_moe_fields(shape))
    config.update(
        layer_types=["full_attention" if w is None else "sliding_attention" for w in windows],
        use_sliding_window=bool(sliding),
        sliding_window=sliding[0] if sliding else None,
        # 4.x readers slide on layers >= max_window_layers: the same layers when the sliding ones are the last
        max_window_layers=next((i for i, w in enumerate(windows) if w is not None), len(windows)),
    )
    config.update(
        architectures=["Qwen2MoeForCausalLM"],
        model_type="qwen2_moe",
        shared_expert_intermediate_size=shape.shared_intermediate_size,
        qkv_bias=True,
    )
    return config


def _reasons(config: dict[str, Any], names: set[str]) -> list[str]:
    if config.get("mlp_bias") or any(n.endswith(".bias") and ".mlp." in n for n in names):
        return ["has no MLP biases, but the base has them (they would be dropped)"]
    if config.get("model_type") != "qwen2" and any(".o_proj.bias" in n for n in names):
        return ["has no o_proj bias, but the base has one (it would be dropped)"]
    return []


def _zero_biases(config: dict[str, Any], names: set[str]) -> dict[str, tuple[int, ...]]:
    """q/k/v biases for a llama/mistral base, which has none: zeros keep its attention exactly."""
    base = effective.settings(config)
    q, kv = base.num_attention_heads * base.head_dim, base.num_key_value_heads * base.head_dim
    sizes = {"q_proj": q, "k_proj": kv, "v_proj": kv}
    out = {}
    for layer in range(base.num_hidden_layers):
        for proj, size in sizes.items():
            name = f"model.layers.{layer}.self_attn.{proj}.bias"
            if name not in names:
                out[name] = (size,)
    return out


QWEN2_MOE = OutputArch(
    name="qwen2_moe",
    model_type="qwen2_moe",
    class_name="Qwen2MoeForCausalLM",
    input_types=("qwen2", "llama", "mistral"),
    router="model.layers.{layer}.mlp.gate.weight",
    experts={
        role: f"model.layers.{{layer}}.mlp.experts.{{expert}}.{role}_proj.weight" for role in ("gate", "up", "down")
    },
    shared_expert={
        role: f"model.layers.{{layer}}.mlp.shared_expert.{role}_proj.weight" for role in ("gate", "up", "down")
    },
    shared_gate="model.layers.{layer}.mlp.shared_expert_gate.weight",
    max_shared_experts=1,
    zero_shared_expert=True,
    build_config=build_config,
    extra_reasons=_reasons,
    zero_tensors=_zero_biases,
    warnings=(LLAMACPP_CAVEAT,),
    shape_of=lambda c: MoeShape(
        c["num_experts"],
        c["num_experts_per_tok"],
        dtype_of(c),
        c["moe_intermediate_size"],
        c.get("shared_expert_intermediate_size") or None,
    ),
)
