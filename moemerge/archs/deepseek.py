"""DeepSeek-MoE v1 output (`DeepseekForCausalLM`, remote code) from llama/mistral, with an optional ungated shared expert.

transformers has no native class for it: load with `trust_remote_code=True`; `auto_map` points at the code published
with deepseek-ai/deepseek-moe-16b-base. That code has no sliding window, derives head_dim from hidden_size / heads and
implements default and linear RoPE only (its dynamic scaling never returns to the original frequencies).
"""

from __future__ import annotations

from typing import Any

from moemerge.archs.base import MoeShape, OutputArch, bias_reasons, common_config, dtype_of

REMOTE_CODE = "deepseek-ai/deepseek-moe-16b-base"
# fields its code lacks: MLP biases and sliding windows are refused first, head_dim is derived
DROPPED_KEYS = ("mlp_bias", "sliding_window", "use_sliding_window", "layer_types", "max_window_layers", "head_dim")


def build_config(base: dict[str, Any], shape: MoeShape) -> dict[str, Any]:
    config = {k: v for k, v in common_config(base, dtype=shape.dtype).items() if k not in DROPPED_KEYS}
    config.update(
        architectures=["DeepseekForCausalLM"],
        model_type="deepseek",
        auto_map={
            "AutoConfig": f"{REMOTE_CODE}--configuration_deepseek.DeepseekConfig",
            "AutoModel": f"{REMOTE_CODE}--modeling_deepseek.DeepseekModel",
            "AutoModelForCausalLM": f"{REMOTE_CODE}--modeling_deepseek.DeepseekForCausalLM",
        },
        n_routed_experts=shape.num_experts,
        n_shared_experts=1 if shape.shared_intermediate_size else None,
        num_experts_per_tok=shape.experts_per_token,
        moe_intermediate_size=shape.intermediate_size,
        first_k_dense_replace=0,
        moe_layer_freq=1,
        scoring_func="softmax",
        norm_topk_prob=True,
        aux_loss_alpha=0.001,
        seq_aux=True,
        attention_bias=False,
    )
    return config


DEEPSEEK = OutputArch(
    name="deepseek",
    model_type="deepseek",
    class_name="DeepseekForCausalLM",
    input_types=("llama", "mistral"),
    router="model.layers.{layer}.mlp.gate.weight",
    experts={
        role: f"model.layers.{{layer}}.mlp.experts.{{expert}}.{role}_proj.weight" for role in ("gate", "up", "down")
    },
    shared_expert={
        role: f"model.layers.{{layer}}.mlp.shared_experts.{role}_proj.weight" for role in ("gate", "up", "down")
    },
    max_shared_experts=1,
    build_config=build_config,
    extra_reasons=bias_reasons,
    rope_types=frozenset({"default", "linear"}),
    derives_head_dim=True,
    shape_of=lambda c: MoeShape(
        c["n_routed_experts"],
        c["num_experts_per_tok"],
        dtype_of(c),
        c["moe_intermediate_size"],
        c["moe_intermediate_size"] * c["n_shared_experts"] if c.get("n_shared_experts") else None,
    ),
)
