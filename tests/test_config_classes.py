"""archs/classes.py against transformers: the table's defaults are the config classes' fields, and every config the
table reads (instead of importing transformers) gives what the class gives: the full effective dict and the settings.
Configs the table cannot vouch for go to transformers (None), and the common real-world ones never do."""

from __future__ import annotations

import copy
import dataclasses
import json
import subprocess
import sys

import pytest
from transformers import PreTrainedConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from moemerge.archs import classes, effective

SIZES = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
         "vocab_size": 100}  # fmt: skip
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}  # fmt: skip

# real configs (sizes as published, fields as their config.json spells them)
REAL = {
    "Llama-3.1-8B": {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 4096,
                     "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
                     "num_key_value_heads": 8, "max_position_embeddings": 131072, "rms_norm_eps": 1e-05,
                     "rope_scaling": LLAMA3_ROPE, "rope_theta": 500000.0, "bos_token_id": 128000,
                     "eos_token_id": [128001, 128008, 128009], "torch_dtype": "bfloat16", "vocab_size": 128256,
                     "attention_bias": False, "mlp_bias": False, "pretraining_tp": 1, "tie_word_embeddings": False},
    "SmolLM2-135M": {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 576,
                     "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
                     "num_key_value_heads": 3, "max_position_embeddings": 8192, "rms_norm_eps": 1e-05,
                     "rope_scaling": None, "rope_theta": 100000, "tie_word_embeddings": True, "vocab_size": 49152,
                     "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2, "torch_dtype": "bfloat16",
                     "transformers_version": "4.42.3", "use_cache": True, "initializer_range": 0.041666666666666664},
    "Mistral-7B-v0.1": {"model_type": "mistral", "hidden_size": 4096, "intermediate_size": 14336,
                        "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                        "max_position_embeddings": 32768, "rms_norm_eps": 1e-05, "rope_theta": 10000.0,
                        "sliding_window": 4096, "torch_dtype": "bfloat16", "vocab_size": 32000},
    "Mistral-7B-v0.3": {"model_type": "mistral", "hidden_size": 4096, "intermediate_size": 14336,
                        "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                        "head_dim": 128, "max_position_embeddings": 32768, "rms_norm_eps": 1e-05,
                        "rope_theta": 1000000.0, "sliding_window": None, "vocab_size": 32768},
    "Qwen2.5-7B": {"model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                   "num_attention_heads": 28, "num_key_value_heads": 4, "max_position_embeddings": 131072,
                   "max_window_layers": 28, "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 1000000.0,
                   "sliding_window": 131072, "use_sliding_window": False, "tie_word_embeddings": False,
                   "bos_token_id": 151643, "eos_token_id": 151643, "vocab_size": 152064},
    "Qwen3-4B": {"model_type": "qwen3", "hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 36,
                 "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "attention_bias": False,
                 "max_position_embeddings": 40960, "max_window_layers": 36, "rms_norm_eps": 1e-06,
                 "rope_scaling": None, "rope_theta": 1000000, "sliding_window": None, "use_sliding_window": False,
                 "tie_word_embeddings": True, "vocab_size": 151936},
    "Phi-3-mini-4k": {"model_type": "phi3", "hidden_size": 3072, "intermediate_size": 8192,
                      "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
                      "max_position_embeddings": 4096, "original_max_position_embeddings": 4096,
                      "rms_norm_eps": 1e-05, "rope_scaling": None, "rope_theta": 10000.0, "sliding_window": 2047,
                      "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attention_dropout": 0.0, "vocab_size": 32064},
}  # fmt: skip


def _variants():
    """(id, config) pairs over every family: omitted fields, 4.x and 5.x rope spellings, windows, odd values."""
    found = {}
    for t in classes.DEFAULTS:
        base = {"model_type": t, **SIZES}
        found[f"{t}-minimal"] = base
        found[f"{t}-class-defaults"] = {"model_type": t}
        found[f"{t}-gqa"] = {**base, "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "rope_theta": 500000}
        found[f"{t}-kv-null"] = {**base, "num_key_value_heads": None}
        found[f"{t}-head-dim"] = {**base, "head_dim": 32}
        found[f"{t}-linear-4x"] = {**base, "rope_scaling": {"type": "linear", "factor": 2.0}, "rope_theta": 1e6}
        found[f"{t}-dynamic-5x"] = {**base, "rope_parameters": {"rope_type": "dynamic", "factor": 4.0,
                                                                "rope_theta": 20000.0}}  # fmt: skip
        found[f"{t}-llama3"] = {**base, "rope_scaling": dict(LLAMA3_ROPE), "max_position_embeddings": 65536}
        found[f"{t}-yarn-no-original"] = {**base, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}}
        found[f"{t}-partial"] = {**base, "partial_rotary_factor": 0.5}
        found[f"{t}-window"] = {**base, "sliding_window": 16, "use_sliding_window": True, "max_window_layers": 2}
        found[f"{t}-window-off"] = {**base, "sliding_window": 16, "use_sliding_window": False}
        found[f"{t}-layer-types"] = {**base, "sliding_window": 16, "use_sliding_window": True,
                                     "layer_types": ["sliding_attention", "full_attention"] * 2}  # fmt: skip
        found[f"{t}-extras"] = {**base, "torch_dtype": "bfloat16", "eos_token_id": [2, 3], "pad_token_id": 0,
                                "max_length": 20, "my_key": {"a": 1}, "tie_word_embeddings": True,
                                "architectures": ["X"], "transformers_version": "4.40.0"}  # fmt: skip
        found[f"{t}-int-floats"] = {**base, "rms_norm_eps": 1, "initializer_range": 0, "rope_theta": 10000}
        found[f"{t}-biases"] = {**base, "attention_bias": True, "mlp_bias": True, "qkv_bias": False}
        found[f"{t}-moe-keys"] = {**base, "num_experts": 4, "num_local_experts": 4, "num_experts_per_tok": 1,
                                  "mlp_only_layers": None, "decoder_sparse_step": 1}  # fmt: skip
        # the table must hand these to transformers
        found[f"{t}-bad-type"] = {**base, "hidden_size": "64"}
        found[f"{t}-bool-int"] = {**base, "num_hidden_layers": True}
        found[f"{t}-required-null"] = {**base, "hidden_size": None}
        found[f"{t}-nested-rope"] = {**base, "rope_parameters": {"full_attention": {"rope_type": "default",
                                                                                    "rope_theta": 1e4}}}  # fmt: skip
        found[f"{t}-odd-layer-types"] = {**base, "layer_types": ["chunked_attention"] * 4}
        found[f"{t}-short-layer-types"] = {**base, "layer_types": ["full_attention"]}
        found[f"{t}-linear-no-factor"] = {**base, "rope_scaling": {"type": "linear"}}
        found[f"{t}-longrope"] = {**base, "rope_scaling": {"type": "longrope", "short_factor": [1.0] * 8,
                                                           "long_factor": [1.0] * 8}}  # fmt: skip
        found[f"{t}-indivisible"] = {**base, "hidden_size": 66}
        found[f"{t}-odd-head-dim"] = {**base, "head_dim": 7}
    return found


VARIANTS = _variants()
FALLBACK = ("bad-type", "bool-int", "required-null", "nested-rope", "odd-layer-types", "short-layer-types",
            "linear-no-factor", "longrope", "odd-head-dim", "int-floats")  # fmt: skip


def _expects_fallback(name: str) -> bool:
    phi3_scaled_rope = name.startswith("phi3") and name.endswith(("-linear-4x", "-dynamic-5x", "-llama3", "-yarn-no-original"))
    refused_null = name in ("mistral-kv-null", "mixtral-kv-null", "qwen3_moe-kv-null")  # declared `int`
    return name.endswith(FALLBACK) or name == "llama-indivisible" or phi3_scaled_rope or refused_null


def _transformers(config: dict):
    """(full dict, settings) through transformers' class, or the exception it raises."""
    try:
        full = {**config, **CONFIG_MAPPING[config["model_type"]].from_dict(copy.deepcopy(config)).to_dict()}
        full = {k: v for k, v in full.items() if k not in effective.GENERIC_KEYS}
        return full, effective.settings(config, via_transformers=True)
    except Exception as exc:  # noqa: BLE001 -- any refusal counts
        return exc


def _comparable(full: dict) -> dict:
    """JSON round trip (tuples/lists, int keys) and dtype as a string."""
    full = dict(full)
    if full.get("dtype") is not None:
        full["dtype"] = str(full["dtype"]).removeprefix("torch.")
    return json.loads(json.dumps(full, sort_keys=True, default=str))


def test_defaults_are_the_classes_fields():
    generic = {f.name for f in dataclasses.fields(PreTrainedConfig)}
    for model_type, table in classes.DEFAULTS.items():
        cls = CONFIG_MAPPING[model_type]
        theirs = {}
        for f in dataclasses.fields(cls):
            if f.name in generic:
                continue
            theirs[f.name] = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        assert table == theirs, model_type
        assert classes.DEFAULT_THETA.get(model_type, 10000.0) == cls.default_theta, model_type
        assert classes.ATTRIBUTE_MAPS.get(model_type, {}) == dict(cls.attribute_map), model_type


def test_nullable_fields_are_the_annotations():
    generic = {f.name for f in dataclasses.fields(PreTrainedConfig)}
    for model_type in classes.DEFAULTS:
        for f in dataclasses.fields(CONFIG_MAPPING[model_type]):
            if f.name not in generic:
                allows_none = "None" in str(f.type)
                assert classes.nullable(model_type, f.name) == allows_none, (model_type, f.name, f.type)


def test_rope_types_are_transformers():
    assert classes.ROPE_TYPES == {"default", *ROPE_INIT_FUNCTIONS}


@pytest.mark.parametrize("name", sorted(VARIANTS) + sorted(REAL))
def test_table_reads_like_transformers(name):
    config = VARIANTS.get(name) or REAL[name]
    before = copy.deepcopy(config)
    ours = classes.effective(config)
    assert config == before, "the caller's dict must not change"
    theirs = _transformers(config)
    assert (ours is None) == _expects_fallback(name)
    if ours is None:
        return
    assert not isinstance(theirs, Exception), f"the table read a config transformers refuses: {theirs}"
    full, settings = theirs
    mine = {k: v for k, v in {**config, **ours}.items() if k not in effective.GENERIC_KEYS}
    assert _comparable(mine) == _comparable(full)
    assert effective.settings(config) == settings
    if config["model_type"] in ("llama", "mistral", "qwen2", "qwen3", "phi3"):
        assert _comparable(effective.full_dict(config)) == _comparable(full)


def test_real_configs_never_need_transformers():
    for name, config in REAL.items():
        assert classes.effective(config) is not None, name


def test_written_output_configs_read_without_transformers(tmp_path):
    """Every output architecture's config.json, as moemerge writes it, is read by the table."""
    from moemerge.archs import ARCHITECTURES
    from moemerge.archs.base import MoeShape

    for arch in ARCHITECTURES.values():
        if arch.model_type == "deepseek":
            continue
        base_type = arch.input_types[0]
        written = arch.build_config({"model_type": base_type, **SIZES, "num_key_value_heads": 2},
                                    MoeShape(4, 2, "float32", 128, 128 if arch.max_shared_experts else None))  # fmt: skip
        assert classes.effective(written) is not None, arch.name
        assert effective.settings(written) == effective.settings(written, via_transformers=True), arch.name


@pytest.mark.parametrize("mode", ["random", "cheap_embed", "hidden", "mlp_input_avg"])
def test_plan_imports_neither_transformers_nor_torch(tmp_path, mode):
    """`moemerge plan` runs every pre-weight check (configs through the table, prompt lengths through tokenizer.json,
    the device only when it names a GPU) without the ~3 s of importing torch and transformers."""
    from moemerge.tiny import make_expert, make_model

    base = make_model(tmp_path / "base", seed=0)
    experts = [make_expert(base, tmp_path / f"e{i}", seed=i + 1) for i in range(2)]
    config = tmp_path / "c.yaml"
    config.write_text(f"base_model: {base}\ngate_mode: {mode}\nexperts:\n"
                      + "".join(f"  - source_model: {e}\n    positive_prompts: ['prompt {i}']\n"
                                for i, e in enumerate(experts)))  # fmt: skip
    code = ("import sys; sys.argv = ['moemerge', 'plan', sys.argv[1]]\n"
            "try:\n    from moemerge.cli import main; main()\nexcept SystemExit as e: rc = e.code\n"
            "print('IMPORTED', 'transformers' in sys.modules, 'torch' in sys.modules, rc)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code, str(config)], capture_output=True, text=True, check=True)
    assert "IMPORTED False False 0" in out.stdout, out.stdout + out.stderr
