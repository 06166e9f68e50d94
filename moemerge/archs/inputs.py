"""Input families: where a dense model keeps its MLP (gate/up/down) and which fused tensors must be split.

llama, mistral, qwen2 and qwen3 store `mlp.{gate,up,down}_proj`; phi3 fuses `gate_up_proj` (gate = first half,
up = second half) and `qkv_proj` (q, then k, then v rows).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from moemerge.archs import effective
from moemerge.archs.base import DENSE_MLP

PHI3_LONGROPE = (
    "the base is a Phi-3 model with longrope: its generate() recomputes the whole cache once a sequence passes "
    "original_max_position_embeddings ({limit}) tokens and {cls} keeps it, so text generated past {limit} tokens "
    "differs from the base's (single forward passes agree)"
)


@dataclass(frozen=True)
class Part:
    """Rows [start, stop) of a source tensor's first dimension (stop None = to the end)."""

    name: str
    start: int = 0
    stop: int | None = None


def mlp_parts(config: dict[str, Any], layer: int) -> dict[str, Part]:
    """role (gate/up/down) -> where that projection lives in a model with this config."""
    if config.get("model_type") == "phi3":
        fused = f"model.layers.{layer}.mlp.gate_up_proj.weight"
        size = int(config["intermediate_size"])
        return {"gate": Part(fused, 0, size), "up": Part(fused, size, 2 * size),
                "down": Part(f"model.layers.{layer}.mlp.down_proj.weight")}  # fmt: skip
    return {role: Part(template.format(layer=layer)) for role, template in DENSE_MLP.items()}


def split_parts(config: dict[str, Any], layer: int) -> dict[str, dict[str, Part]]:
    """Fused non-MLP tensors of one layer: source name -> {output name: part}."""
    if config.get("model_type") != "phi3":
        return {}
    heads = int(config["num_attention_heads"])
    kv = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or config["hidden_size"] // heads)
    q, k = heads * head_dim, kv * head_dim
    prefix = f"model.layers.{layer}.self_attn."
    fused = prefix + "qkv_proj.weight"
    return {fused: {prefix + "q_proj.weight": Part(fused, 0, q), prefix + "k_proj.weight": Part(fused, q, q + k),
                    prefix + "v_proj.weight": Part(fused, q + k, q + 2 * k)}}  # fmt: skip


def mlp_source_names(config: dict[str, Any]) -> set[str]:
    """Every MLP tensor an expert must supply."""
    layers = int(config.get("num_hidden_layers") or 0)
    return {part.name for layer in range(layers) for part in mlp_parts(config, layer).values()}


def input_warnings(config: dict[str, Any], class_name: str) -> tuple[str, ...]:
    """What a merge of this base cannot keep exactly, beyond what the output refuses."""
    if config.get("model_type") != "phi3":
        return ()
    rope = effective.settings(config).rope
    if rope.get("rope_type") != "longrope":
        return ()
    return (PHI3_LONGROPE.format(limit=rope.get("original_max_position_embeddings"), cls=class_name),)
