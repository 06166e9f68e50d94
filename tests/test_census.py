"""Name and shape census at real-model sizes: plans built from `meta` tensors, no weights, no disk."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers

from moemerge.archs import ARCHITECTURES
from moemerge.merge.tensor_plan import ExpertSpec, build_plan
from moemerge.sources.folder import TensorInfo

REAL = {
    "mistral-7b": ("MistralConfig", dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336,
                   num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=False)),
    "qwen2.5-7b": ("Qwen2Config", dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                   num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4, tie_word_embeddings=False)),
    "qwen3-8b": ("Qwen3Config", dict(vocab_size=151936, hidden_size=4096, intermediate_size=12288, head_dim=128,
                 num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=False)),
}  # fmt: skip


def meta_headers(name: str) -> tuple[dict, dict[str, TensorInfo]]:
    cls, fields = REAL[name]
    config = getattr(transformers, cls)(**fields)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    headers = {n: TensorInfo(Path("meta"), "bfloat16", tuple(p.shape)) for n, p in model.state_dict().items()}
    return config.to_dict(), headers


def plan_for(name: str, arch: str, experts: int, shared: int = 0):
    config, headers = meta_headers(name)
    return config, build_plan(arch=ARCHITECTURES[arch], base_config=config, headers=[headers] * (1 + experts + shared),
                              experts=[ExpertSpec()] * (experts + shared), num_routed=experts,
                              hidden_size=config["hidden_size"], dtype="bfloat16", max_shard_bytes=5 * 10**9)  # fmt: skip


def test_mixtral_8x7b_from_mistral_7b():
    _, plan = plan_for("mistral-7b", "mixtral", 8)
    shapes = {t.name: t.shape for t in plan.tensors}
    assert sum(torch.Size(s).numel() for s in shapes.values()) == 46_702_792_704  # Mixtral-8x7B's parameter count
    assert shapes["model.layers.31.block_sparse_moe.gate.weight"] == (8, 4096)
    assert shapes["model.layers.31.block_sparse_moe.experts.7.w2.weight"] == (4096, 14336)
    assert shapes["model.layers.0.block_sparse_moe.experts.0.w1.weight"] == (14336, 4096)
    assert len(shapes) == 3 + 32 * (4 + 2 + 1 + 8 * 3)  # attention, norms, router, experts
    assert len(plan.shards) == 19 and all(s.filename.endswith("-of-00019.safetensors") for s in plan.shards)


@pytest.mark.parametrize("shared", [0, 1])
def test_qwen2_moe_from_qwen25_7b(shared):
    config, plan = plan_for("qwen2.5-7b", "qwen2_moe", 4, shared)
    shapes = {t.name: t.shape for t in plan.tensors}
    layer = {n.split("model.layers.27.")[1]: s for n, s in shapes.items() if n.startswith("model.layers.27.")}
    inter = 18944 if shared else 1
    assert layer["mlp.shared_expert.gate_proj.weight"] == (inter, 3584)
    assert layer["mlp.shared_expert.down_proj.weight"] == (3584, inter)
    assert layer["mlp.shared_expert_gate.weight"] == (1, 3584) and layer["mlp.gate.weight"] == (4, 3584)
    assert layer["self_attn.q_proj.bias"] == (3584,) and layer["self_attn.k_proj.bias"] == (512,)
    assert len(layer) == 4 * 3 + 1 + 3 + 1 + 7 + 2  # experts, router, shared expert + gate, attention, norms


def test_qwen3_moe_from_qwen3_8b():
    _, plan = plan_for("qwen3-8b", "qwen3_moe", 4)
    shapes = {t.name: t.shape for t in plan.tensors}
    assert shapes["model.layers.35.self_attn.q_norm.weight"] == (128,)
    assert shapes["model.layers.35.self_attn.q_proj.weight"] == (4096, 4096)
    assert shapes["model.layers.35.mlp.experts.3.down_proj.weight"] == (4096, 12288)
    assert not any(".shared" in n or n.endswith(".bias") for n in shapes)


def test_mixtral_from_phi3_mini():
    REAL["phi-3-mini"] = ("Phi3Config", dict(vocab_size=32064, hidden_size=3072, intermediate_size=8192,
                          num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32))  # fmt: skip
    _, plan = plan_for("phi-3-mini", "mixtral", 4)
    shapes = {t.name: t.shape for t in plan.tensors}
    assert shapes["model.layers.31.self_attn.q_proj.weight"] == (3072, 3072)
    assert shapes["model.layers.31.self_attn.v_proj.weight"] == (3072, 3072)
    assert shapes["model.layers.31.block_sparse_moe.experts.3.w1.weight"] == (8192, 3072)
    assert shapes["model.layers.31.block_sparse_moe.experts.3.w3.weight"] == (8192, 3072)
    assert not any("qkv_proj" in n or "gate_up_proj" in n for n in shapes)
    sources = {t.name: t.source for t in plan.tensors}
    assert sources["model.layers.0.block_sparse_moe.experts.0.w3.weight"].start == 8192
