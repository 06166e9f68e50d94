"""End-to-end merges into Mixtral: identical experts equal the base, distinct experts copy bit for bit."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import load_moe, logits
from safetensors import safe_open
from transformers import AutoModelForCausalLM

IDS = [1, 17, 42, 99, 5, 250, 7, 64, 33, 120, 8, 2]
ALLOW_SAME = "--i-understand-this-is-not-useful-without-training"


def all_tensors(folder):
    out = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), "pt") as f:
            out.update({k: f.get_tensor(k) for k in f.keys()})
    return out


@pytest.mark.parametrize("family", ["llama", "mistral"])
@pytest.mark.parametrize("num_experts,per_token", [(2, 1), (2, 2), (4, 1), (4, 2)])
def test_identical_experts_equal_base(models, write_config, cli, tmp_path, family, num_experts, per_token):
    base = models.base(family)
    config = write_config({
        "base_model": str(base), "gate_mode": "random", "experts_per_token": per_token,
        "experts": [{"source_model": str(base)} for _ in range(num_experts)],
    })  # fmt: skip
    code, _, err = cli(config, tmp_path / "out", ALLOW_SAME, "--quiet")
    assert code == 0, err
    moe = load_moe(tmp_path / "out")
    dense = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32).eval()
    assert moe.config.model_type == "mixtral" and moe.config.num_local_experts == num_experts
    torch.testing.assert_close(logits(moe, IDS), logits(dense, IDS), atol=1e-5, rtol=0)


def test_distinct_experts_copied_bit_for_bit(models, write_config, cli, tmp_path):
    base = models.base("llama")
    experts = [models.expert(base, seed) for seed in (1, 2)]
    config = write_config({
        "base_model": str(base), "gate_mode": "cheap_embed",
        "experts": [
            {"source_model": str(experts[0]), "positive_prompts": ["def add(a, b): return a + b"]},
            {"source_model": str(experts[1]), "positive_prompts": ["Once upon a time there was a dragon"]},
        ],
    })  # fmt: skip
    code, _, err = cli(config, tmp_path / "out", "--quiet")
    assert code == 0, err
    out = all_tensors(tmp_path / "out")
    src = [all_tensors(base)] + [all_tensors(e) for e in experts]
    for name, tensor in src[0].items():
        if ".mlp." not in name:
            assert torch.equal(out[name], tensor), name
    for layer in range(2):
        for e in range(2):
            prefix = f"model.layers.{layer}.block_sparse_moe.experts.{e}"
            mlp = f"model.layers.{layer}.mlp"
            assert torch.equal(out[f"{prefix}.w1.weight"], src[e + 1][f"{mlp}.gate_proj.weight"])
            assert torch.equal(out[f"{prefix}.w2.weight"], src[e + 1][f"{mlp}.down_proj.weight"])
            assert torch.equal(out[f"{prefix}.w3.weight"], src[e + 1][f"{mlp}.up_proj.weight"])
        assert out[f"model.layers.{layer}.block_sparse_moe.gate.weight"].shape == (2, 32)
    assert not any(".mlp." in name for name in out)
    moe = load_moe(tmp_path / "out")
    generated = moe.generate(torch.tensor([[1, 17, 42]]), max_new_tokens=5, do_sample=False)
    assert generated.shape == (1, 8)
    config_json = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config_json["dtype"] == config_json["torch_dtype"] == "float32"
    assert config_json["rope_theta"] == config_json["rope_parameters"]["rope_theta"]
    assert "mlp_bias" not in config_json and "attention_bias" not in config_json
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "moemerge.yml", "README.md"):
        assert (tmp_path / "out" / name).is_file(), name
    assert (tmp_path / "out" / "tokenizer.json").read_bytes() == (base / "tokenizer.json").read_bytes()


def test_residual_and_noise_scale(models, write_config, cli, tmp_path):
    base = models.base("llama")
    expert = models.expert(base, 1)
    entry = {"source_model": str(expert), "residual_scale": 0.5, "noise_scale": 0.01}
    config = write_config({"base_model": str(base), "gate_mode": "random", "experts_per_token": 1,
                           "experts": [entry, {"source_model": str(base)}]})  # fmt: skip
    assert cli(config, tmp_path / "a", "--quiet")[0] == 0
    assert cli(config, tmp_path / "b", "--quiet")[0] == 0
    a, b, src = all_tensors(tmp_path / "a"), all_tensors(tmp_path / "b"), all_tensors(expert)
    w2 = a["model.layers.0.block_sparse_moe.experts.0.w2.weight"]
    assert torch.equal(w2, b["model.layers.0.block_sparse_moe.experts.0.w2.weight"])  # seeded noise
    noise = w2 - src["model.layers.0.mlp.down_proj.weight"] * 0.5
    assert 0.0 < noise.abs().max() < 0.1 and abs(noise.std().item() - 0.005) < 0.001
    # the second expert has neither: copied exactly
    assert torch.equal(a["model.layers.0.block_sparse_moe.experts.1.w2.weight"],
                       all_tensors(base)["model.layers.0.mlp.down_proj.weight"])  # fmt: skip
