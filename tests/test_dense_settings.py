"""Every setting of the dense base is carried into the MoE exactly, or the merge is refused with one line naming it.

Bases are built with transformers' own config classes and save_pretrained; with every expert = the base, the MoE's
float32 logits over 80 tokens must equal the base's within 1e-5 (and greedy generation past a sliding window too).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest
import torch
from conftest import load_moe
from test_merge_mixtral import ALLOW_SAME
from transformers import AutoModelForCausalLM

from moemerge.archs import ARCHITECTURES, MoeShape, choose_architecture
from moemerge.errors import MergeFailedError
from moemerge.merge import checks


@pytest.fixture(autouse=True, scope="module")
def no_progress_bars():
    """Models built inside a test must not add lines to the CLI's stderr."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    yield
    hf_logging.enable_progress_bar()


IDS = torch.randint(4, 300, (1, 80), generator=torch.Generator().manual_seed(0))
WINDOW = 16


def edited(base, folder, *, drop=(), **changes):
    """A copy of `base` whose config.json lacks `drop` and has `changes` (what an older or hand-written file says)."""
    shutil.copytree(base, folder)
    config = json.loads((folder / "config.json").read_text())
    config = {k: v for k, v in config.items() if k not in drop} | changes
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def merge(write_config, cli, tmp_path, base, arch=None, experts=None, quiet="-q"):
    data = {"base_model": str(base), "gate_mode": "random", "experts_per_token": 2,
            "experts": [{"source_model": str(e)} for e in experts or [base, base, base]]}  # fmt: skip
    if arch:
        data["architecture"] = arch
    out = tmp_path / "out"
    code, _, err = cli(write_config(data), out, ALLOW_SAME, quiet)
    return code, err, out


def refused(write_config, cli, tmp_path, base, arch=None, experts=None) -> str:
    code, err, out = merge(write_config, cli, tmp_path, base, arch, experts)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and not out.exists(), err
    return lines[0]


def assert_equal_to_base(write_config, cli, tmp_path, base, arch=None, *, generate=False):
    code, err, out = merge(write_config, cli, tmp_path, base, arch)
    assert code == 0, err
    moe = load_moe(out)
    dense = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32).eval()
    with torch.no_grad():
        torch.testing.assert_close(moe(IDS).logits, dense(IDS).logits, atol=1e-5, rtol=0)
    if generate:  # past the window: the sliding cache path, token by token
        kwargs = {"max_new_tokens": 3 * WINDOW, "do_sample": False, "output_logits": True,
                  "return_dict_in_generate": True, "pad_token_id": 3}  # fmt: skip
        ours, theirs = moe.generate(IDS[:, :20], **kwargs), dense.generate(IDS[:, :20], **kwargs)
        assert torch.equal(ours.sequences, theirs.sequences)
        torch.testing.assert_close(torch.stack(ours.logits), torch.stack(theirs.logits), atol=1e-4, rtol=0)
    return json.loads((out / "config.json").read_text()), err, out


# -- sliding windows ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["qwen2_moe", "mixtral"])
def test_mistral_sliding_window_is_carried(models, write_config, cli, tmp_path, arch):
    base = models.base("mistral", sliding_window=WINDOW, num_hidden_layers=3)
    config, _, _ = assert_equal_to_base(write_config, cli, tmp_path, base, arch, generate=True)
    assert config["sliding_window"] == WINDOW
    if arch == "qwen2_moe":
        assert config["use_sliding_window"] is True and config["layer_types"] == ["sliding_attention"] * 3


def test_qwen2_window_on_some_layers_is_carried(models, write_config, cli, tmp_path):
    base = models.base("qwen2", use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1,
                       num_hidden_layers=3)  # fmt: skip
    config, _, _ = assert_equal_to_base(write_config, cli, tmp_path, base, "qwen2_moe", generate=True)
    assert config["layer_types"] == ["full_attention", "sliding_attention", "sliding_attention"]


def test_qwen3_window_on_every_layer_is_carried(models, write_config, cli, tmp_path):
    base = models.base("qwen3", use_sliding_window=True, sliding_window=WINDOW, max_window_layers=0,
                       num_hidden_layers=3)  # fmt: skip
    config, _, _ = assert_equal_to_base(write_config, cli, tmp_path, base, "qwen3_moe", generate=True)
    assert config["use_sliding_window"] is True and config["sliding_window"] == WINDOW


def test_qwen3_window_on_some_layers_is_refused(models, write_config, cli, tmp_path):
    base = models.base("qwen3", use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1,
                       num_hidden_layers=3)  # fmt: skip
    line = refused(write_config, cli, tmp_path, base, "qwen3_moe")
    assert (
        "qwen3_moe: slides on every layer or on none, but the base uses a 16-token sliding window on layers 1, 2"
        in line
    )


def test_deepseek_refuses_a_sliding_window(models, write_config, cli, tmp_path):
    base = models.base("mistral", sliding_window=WINDOW, num_hidden_layers=3)
    line = refused(write_config, cli, tmp_path, base, "deepseek")
    assert (
        "deepseek: has no sliding-window attention, but the base uses a 16-token sliding window on every layer" in line
    )


# -- RoPE ----------------------------------------------------------------------------------------------------------


def test_phi3_partial_rotary_inside_rope_parameters_is_refused(models, write_config, cli, tmp_path):
    rope = {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}
    base = models.base("phi3", rope_parameters=rope)
    assert json.loads((base / "config.json").read_text())["rope_parameters"]["partial_rotary_factor"] == 0.5
    line = refused(write_config, cli, tmp_path, base)
    assert "mixtral: rotates every head dimension, but the base rotates 0.5 of each (partial_rotary_factor)" in line


def test_phi3_partial_rotary_at_top_level_is_refused(models, write_config, cli, tmp_path):
    base = edited(models.base("phi3"), tmp_path / "phi3-4x", rope_parameters=None, partial_rotary_factor=0.75)
    line = refused(write_config, cli, tmp_path, base)
    assert "rotates 0.75 of each (partial_rotary_factor)" in line


@pytest.mark.parametrize("rope", [
    {"rope_type": "linear", "factor": 2.0, "rope_theta": 5000.0},
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 32, "rope_theta": 500000.0},
    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32, "rope_theta": 10000.0},
])  # fmt: skip
def test_llama_rope_types_are_carried(models, write_config, cli, tmp_path, rope):
    base = models.base("llama", rope_parameters=rope)
    config, _, _ = assert_equal_to_base(write_config, cli, tmp_path, base, "mixtral")
    assert config["rope_parameters"]["rope_type"] == config["rope_scaling"]["type"] == rope["rope_type"]
    assert config["rope_theta"] == rope["rope_theta"]


def test_deepseek_implements_default_and_linear_rope_only():
    config = {"model_type": "llama", "hidden_size": 32, "num_attention_heads": 4, "num_hidden_layers": 2}
    linear = {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}
    assert choose_architecture("deepseek", config | {"rope_parameters": linear}, set(), num_shared=0)[0]
    yarn = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0}
    _, why = choose_architecture("deepseek", config | {"rope_parameters": yarn}, set(), num_shared=0)
    assert why == ["deepseek: implements rope_type default, linear, not the base's 'yarn'"]


def test_phi3_longrope_is_carried_with_a_warning(models, write_config, cli, tmp_path):
    half = 4  # head_dim 8
    rope = {"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": [1.0] * half,
            "long_factor": [1.0, 2.0, 4.0, 8.0], "original_max_position_embeddings": 40}  # fmt: skip
    base = models.base("phi3", rope_parameters=rope, original_max_position_embeddings=40)
    code, err, out = merge(write_config, cli, tmp_path, base, quiet="--no-copy-tokenizer")
    assert code == 0, err
    assert "generate() recomputes the whole cache" in err and "original_max_position_embeddings (40)" in err
    assert "generate() recomputes the whole cache" in (out / "README.md").read_text()
    moe, dense = load_moe(out), AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32).eval()
    with torch.no_grad():  # 80 tokens: past 40, both use the long factors
        torch.testing.assert_close(moe(IDS).logits, dense(IDS).logits, atol=1e-5, rtol=0)


# -- keys the base file omits mean what they mean for the base class ----------------------------------------------


def test_llama_without_rms_norm_eps_keeps_llamas_default(models, write_config, cli, tmp_path):
    base = edited(models.base("llama"), tmp_path / "no-eps", drop=("rms_norm_eps",))
    config, _, _ = assert_equal_to_base(write_config, cli, tmp_path, base, "mixtral")
    assert config["rms_norm_eps"] == 1e-6  # LlamaConfig's default, not MixtralConfig's 1e-5


def test_llama1_config_without_kv_heads_means_as_many_as_heads(models, write_config, cli, tmp_path):
    base = edited(models.base("llama", num_key_value_heads=4), tmp_path / "llama1", drop=("num_key_value_heads",))
    config, _, _ = assert_equal_to_base(write_config, cli, tmp_path, base, "mixtral")
    assert config["num_key_value_heads"] == 4  # not MixtralConfig's 8


# -- the two refusals that were too strict -------------------------------------------------------------------------


def test_qwen3_attention_bias_is_carried(models, write_config, cli, tmp_path):
    base = models.base("qwen3", attention_bias=True)
    config, _, _ = assert_equal_to_base(write_config, cli, tmp_path, base, "qwen3_moe")
    assert config["attention_bias"] is True


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_qwen2_moe_keeps_an_explicit_head_dim(models, write_config, cli, tmp_path, family):
    base = models.base(family, head_dim=16)
    config, _, _ = assert_equal_to_base(write_config, cli, tmp_path, base, "qwen2_moe")
    assert config["head_dim"] == 16


# -- experts must compute their MLP like the base ------------------------------------------------------------------


def test_expert_with_another_activation_is_refused(models, write_config, cli, tmp_path):
    base = models.base("llama")
    gelu = edited(models.expert(base, 1), tmp_path / "gelu", hidden_act="gelu")
    line = refused(write_config, cli, tmp_path, base, experts=[models.expert(base, 2), gelu])
    assert f"experts[1] '{gelu}': its MLP computes differently from the base's (hidden_act 'gelu' where the base " \
           "has 'silu')" in line  # fmt: skip


def test_expert_with_mlp_biases_is_refused(models, write_config, cli, tmp_path):
    base = models.base("llama")
    biased = models.base("llama", mlp_bias=True, initializer_range=0.3)
    line = refused(write_config, cli, tmp_path, base, experts=[base, biased])
    assert f"experts[1] '{biased}': its MLP computes differently from the base's (mlp_bias True where the base " \
           "has False)" in line  # fmt: skip


def test_expert_differing_in_dropout_or_vocab_padding_is_accepted(models, write_config, cli, tmp_path):
    base = models.base("llama")
    free = edited(models.expert(base, 1), tmp_path / "free", attention_dropout=0.1, vocab_size=320)
    code, err, _ = merge(write_config, cli, tmp_path, base, experts=[base, free])
    assert code == 0, err


# -- the last line of defence: the output config read back through its class -------------------------------------


def test_a_class_default_slipping_in_is_an_internal_error():
    base = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4,
            "num_hidden_layers": 2, "vocab_size": 300}  # fmt: skip
    mixtral = ARCHITECTURES["mixtral"]
    shape = MoeShape(2, 2, "float32", 64)
    checks.check_output_config(mixtral, base, shape)
    careless = replace(mixtral, build_config=lambda b, s: {k: v for k, v in mixtral.build_config(b, s).items()
                                                           if k != "rms_norm_eps"})  # fmt: skip
    with pytest.raises(MergeFailedError, match=r"internal error: .*rms_norm_eps 1e-05 where the base has 1e-06"):
        checks.check_output_config(careless, base, shape)


@pytest.mark.parametrize("where", [
    {"partial_rotary_factor": 0.5},  # 4.x: top level
    {"rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5}},  # 5.x
    {"rope_scaling": {"rope_type": "default", "partial_rotary_factor": 0.5}, "rope_theta": 1e4},
])  # fmt: skip
def test_partial_rotary_factor_found_wherever_it_is_written(where):
    config = {"model_type": "phi3", "hidden_size": 32, "num_attention_heads": 4, "num_hidden_layers": 2,
              "vocab_size": 300, "intermediate_size": 64, **where}  # fmt: skip
    _, why = choose_architecture("mixtral", config, set(), num_shared=0)
    assert why == ["mixtral: rotates every head dimension, but the base rotates 0.5 of each (partial_rotary_factor)"]
