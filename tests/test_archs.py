"""Every output architecture: identical experts equal the dense base, clean loads, censuses, automatic choice."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import load_moe, logits
from test_merge_mixtral import ALLOW_SAME, IDS, all_tensors
from transformers import AutoModelForCausalLM

from moemerge.archs import ARCHITECTURES, choose_architecture


def merge_same(models, write_config, cli, tmp_path, family, arch=None, shared=None, n=3, k=2):
    base = models.base(family)
    data = {"base_model": str(base), "gate_mode": "random", "experts_per_token": k,
            "experts": [{"source_model": str(base)} for _ in range(n)]}  # fmt: skip
    if arch:
        data["architecture"] = arch
    if shared is not None:
        data["shared_experts"] = [shared | {"source_model": str(base)}]
    code, _, err = cli(write_config(data), tmp_path / "out", ALLOW_SAME, "-q")
    assert code == 0, err
    return base, tmp_path / "out"


@pytest.mark.parametrize("family,arch,shared,expected", [
    ("qwen2", None, None, "qwen2_moe"),
    ("qwen2", "Qwen MoE", {"residual_scale": 0.0}, "qwen2_moe"),
    ("llama", "qwen", None, "qwen2_moe"),
    ("mistral", "qwen2_moe", None, "qwen2_moe"),
    ("qwen3", None, None, "qwen3_moe"),
    ("llama", "Mixtral", None, "mixtral"),
    ("phi3", None, None, "mixtral"),
])  # fmt: skip
def test_identical_experts_equal_base(models, write_config, cli, tmp_path, family, arch, shared, expected):
    base, out = merge_same(models, write_config, cli, tmp_path, family, arch, shared)
    moe = load_moe(out)
    assert moe.config.model_type == expected
    dense = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32).eval()
    torch.testing.assert_close(logits(moe, IDS), logits(dense, IDS), atol=1e-5, rtol=0)
    assert moe.generate(torch.tensor([IDS[:3]]), max_new_tokens=4, do_sample=False).shape == (1, 7)


def test_phi3_fused_tensors_are_split(models, write_config, cli, tmp_path):
    base = models.base("phi3")
    data = {"base_model": str(base), "gate_mode": "random", "experts": [{"source_model": str(base)}] * 2}
    assert cli(write_config(data), tmp_path / "out", ALLOW_SAME, "-q", "--out-shard-size", "3k")[0] == 0
    out, src = all_tensors(tmp_path / "out"), all_tensors(base)
    qkv, gate_up = src["model.layers.1.self_attn.qkv_proj.weight"], src["model.layers.1.mlp.gate_up_proj.weight"]
    assert torch.equal(out["model.layers.1.self_attn.q_proj.weight"], qkv[:32])
    assert torch.equal(out["model.layers.1.self_attn.k_proj.weight"], qkv[32:48])
    assert torch.equal(out["model.layers.1.self_attn.v_proj.weight"], qkv[48:])
    assert torch.equal(out["model.layers.1.block_sparse_moe.experts.1.w1.weight"], gate_up[:64])
    assert torch.equal(out["model.layers.1.block_sparse_moe.experts.1.w3.weight"], gate_up[64:])
    assert not any("qkv_proj" in n or "gate_up" in n for n in out)


def test_qwen2_moe_zero_shared_expert_and_biases(models, write_config, cli, tmp_path):
    _, out = merge_same(models, write_config, cli, tmp_path, "llama", "qwen2_moe")
    tensors = all_tensors(out)
    assert tensors["model.layers.0.mlp.shared_expert.down_proj.weight"].shape == (32, 1)
    assert not tensors["model.layers.0.mlp.shared_expert.down_proj.weight"].any()
    assert not tensors["model.layers.1.self_attn.k_proj.bias"].any()
    config = json.loads((out / "config.json").read_text())
    assert config["norm_topk_prob"] is True and config["shared_expert_intermediate_size"] == 1
    assert config["use_sliding_window"] is False and config["mlp_only_layers"] == []
    assert "llama.cpp" in (out / "README.md").read_text()


def test_qwen2_moe_shared_expert_from_its_model(models, write_config, cli, tmp_path):
    base = models.base("qwen2")
    expert = models.expert(base, 5)
    data = {"base_model": str(base), "gate_mode": "cheap_embed",
            "experts": [{"source_model": str(base), "positive_prompts": ["def add(a, b)"]},
                        {"source_model": str(expert), "positive_prompts": ["Once upon a time"]}],
            "shared_experts": [{"source_model": str(expert), "positive_prompts": ["Hello! How are you?"]}]}  # fmt: skip
    assert cli(write_config(data), tmp_path / "out", "-q")[0] == 0
    out, src = all_tensors(tmp_path / "out"), all_tensors(expert)
    for role in ("gate", "up", "down"):
        assert torch.equal(out[f"model.layers.1.mlp.shared_expert.{role}_proj.weight"],
                           src[f"model.layers.1.mlp.{role}_proj.weight"])  # fmt: skip
    gate = out["model.layers.0.mlp.shared_expert_gate.weight"]
    assert gate.shape == (1, 32) and abs(gate.norm().item() - 1) < 1e-5
    load_moe(tmp_path / "out")


def test_deepseek_census_and_config(models, write_config, cli, tmp_path):
    base = models.base("llama")
    data = {"base_model": str(base), "gate_mode": "random", "architecture": "DeepSeek MoE",
            "experts": [{"source_model": str(base)}] * 2,
            "shared_experts": [{"source_model": str(models.expert(base, 3)), "residual_scale": 0.5}]}  # fmt: skip
    assert cli(write_config(data), tmp_path / "out", ALLOW_SAME, "-q")[0] == 0
    tensors = all_tensors(tmp_path / "out")
    layer = {n.split("model.layers.0.")[1]: tuple(t.shape) for n, t in tensors.items() if "layers.0." in n}
    assert layer == {
        "input_layernorm.weight": (32,), "post_attention_layernorm.weight": (32,),
        "self_attn.q_proj.weight": (32, 32), "self_attn.k_proj.weight": (16, 32),
        "self_attn.v_proj.weight": (16, 32), "self_attn.o_proj.weight": (32, 32), "mlp.gate.weight": (2, 32),
        **{f"mlp.experts.{e}.{r}_proj.weight": (32, 64) if r == "down" else (64, 32)
           for e in range(2) for r in ("gate", "up", "down")},
        **{f"mlp.shared_experts.{r}_proj.weight": (32, 64) if r == "down" else (64, 32) for r in ("gate", "up", "down")},
    }  # fmt: skip
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["model_type"] == "deepseek" and config["architectures"] == ["DeepseekForCausalLM"]
    assert (config["n_routed_experts"], config["n_shared_experts"], config["first_k_dense_replace"]) == (2, 1, 0)
    assert (config["moe_layer_freq"], config["scoring_func"], config["norm_topk_prob"]) == (1, "softmax", True)
    assert config["moe_intermediate_size"] == 64 and "AutoModelForCausalLM" in config["auto_map"]


BIASED = {"model_type": "llama", "attention_bias": True}
CHOICES = [
    ({"model_type": "llama"}, None, 0, "mixtral", []),
    ({"model_type": "mistral"}, None, 0, "mixtral", []),
    ({"model_type": "qwen2"}, None, 0, "qwen2_moe", []),
    ({"model_type": "qwen3"}, None, 0, "qwen3_moe", []),
    ({"model_type": "llama"}, None, 1, "qwen2_moe", []),
    ({"model_type": "llama"}, "deepseek", 1, "deepseek", []),
    ({"model_type": "phi"}, None, 0, None, [
        "mixtral: takes llama or mistral or phi3 models, not 'phi'", "qwen2_moe: takes qwen2 or llama or mistral models, not 'phi'",
        "qwen3_moe: takes qwen3 models, not 'phi'", "deepseek: takes llama or mistral models, not 'phi'"]),
    ({"model_type": "qwen2"}, "mixtral", 0, None, ["mixtral: takes llama or mistral or phi3 models, not 'qwen2'"]),
    ({"model_type": "phi3"}, None, 0, "mixtral", []),
    ({"model_type": "qwen3", "attention_bias": True}, None, 0, "qwen3_moe", []),
    ({"model_type": "llama", "head_dim": 16}, "qwen2_moe", 0, "qwen2_moe", []),
    ({"model_type": "llama", "head_dim": 16}, "deepseek", 0, None, [
        "deepseek: derives head_dim from hidden_size / heads, but the base sets head_dim 16"]),
    ({"model_type": "mistral", "sliding_window": 64}, "deepseek", 0, None, [
        "deepseek: has no sliding-window attention, but the base uses a 64-token sliding window on every layer"]),
    ({"model_type": "qwen3"}, None, 1, None, [
        "mixtral: takes llama or mistral or phi3 models, not 'qwen3'", "mixtral: takes no shared experts, the config gives 1",
        "qwen2_moe: takes qwen2 or llama or mistral models, not 'qwen3'",
        "qwen3_moe: takes no shared experts, the config gives 1", "deepseek: takes llama or mistral models, not 'qwen3'"]),
]  # fmt: skip


@pytest.mark.parametrize("config,requested,shared,expected,reasons", CHOICES)
def test_architecture_choice(config, requested, shared, expected, reasons):
    arch, why = choose_architecture(requested, {"hidden_size": 32, "num_attention_heads": 4, **config}, set(),
                                    num_shared=shared)  # fmt: skip
    assert (arch.name if arch else None) == expected
    assert why == reasons


def test_biased_llama_goes_to_qwen2_moe_not_mixtral():
    arch, _ = choose_architecture(None, {"hidden_size": 32, "num_attention_heads": 4, **BIASED},
                                  {"model.layers.0.self_attn.q_proj.bias"}, num_shared=0)  # fmt: skip
    assert arch is ARCHITECTURES["qwen2_moe"]


@pytest.mark.parametrize("family,arch", [("qwen2", "qwen2_moe"), ("qwen3", "qwen3_moe"), ("llama", "qwen2_moe")])
def test_tied_embeddings_every_architecture(models, write_config, cli, tmp_path, family, arch):
    base = models.base(family, tie_word_embeddings=True)
    data = {"base_model": str(base), "gate_mode": "random", "architecture": arch,
            "experts": [{"source_model": str(base)}] * 2}  # fmt: skip
    assert cli(write_config(data), tmp_path / "out", ALLOW_SAME, "-q")[0] == 0
    assert "lm_head.weight" not in all_tensors(tmp_path / "out")
    moe = load_moe(tmp_path / "out")
    assert moe.lm_head.weight.data_ptr() == moe.model.embed_tokens.weight.data_ptr()
    dense = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32).eval()
    torch.testing.assert_close(logits(moe, IDS), logits(dense, IDS), atol=1e-5, rtol=0)
