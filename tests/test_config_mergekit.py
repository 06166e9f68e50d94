"""Configs that mergekit-moe merges, moemerge merges: keys it ignores (a warning naming them), near-miss keys (an
error with its did-you-mean), empty prompts, upcycling copies with random gates, and every spelling it accepts."""

from __future__ import annotations

import logging

import pytest

from moemerge.config.schema import parse_config
from moemerge.config.spellings import for_base
from moemerge.errors import ConfigError

EXPERTS = [{"source_model": "org/a", "positive_prompts": ["x"]}, {"source_model": "org/b", "positive_prompts": ["y"]}]


def test_keys_mergekit_ignores_are_ignored_with_one_warning(caplog):
    data = {"base_model": "org/base", "experts": [{**EXPERTS[0], "parameters": {"weight": 1}}, EXPERTS[1]],
            "tokenizer_source": "union", "merge_method": "moe", "tokenizer": {"source": "base"}, "slices": []}  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="moemerge"):
        config = parse_config(data, source="c.yaml")
    assert config.base_model == "org/base" and len(config.experts) == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    for key in ("'tokenizer_source'", "'merge_method'", "'tokenizer'", "'slices'", "'experts[0].parameters'"):
        assert key in warnings[0]


@pytest.mark.parametrize(
    ("key", "where", "meant"),
    [("gateway_mode", "", "gate_mode"), ("experts_per_tok", "", "experts_per_token"),
     ("positive_prompt", "experts[0]", "positive_prompts"), ("source_models", "experts[1]", "source_model")],
)  # fmt: skip
def test_near_miss_keys_stay_errors(key, where, meant):
    data = {"base_model": "org/base", "experts": [dict(e) for e in EXPERTS]}
    target = data if not where else data["experts"][int(where[-2])]
    target[key] = "hidden" if key == "gateway_mode" else (2 if key == "experts_per_tok" else ["z"])
    with pytest.raises(ConfigError) as exc:
        parse_config(data, source="c.yaml")
    assert f"unknown key '{key}' (did you mean '{meant}'?)" in str(exc.value)


def test_hidden_last_is_hidden():
    assert parse_config({"base_model": "b", "experts": EXPERTS, "gate_mode": "hidden_last"}).gate_mode == "hidden"


@pytest.mark.parametrize(
    ("written", "llama", "qwen2", "qwen3"),
    [("Mixtral", "mixtral", "mixtral", "mixtral"), ("mix", "mixtral", "mixtral", "mixtral"),
     ("DeepSeek MoE", "deepseek", "deepseek", "deepseek"), ("deep", "deepseek", "deepseek", "deepseek"),
     ("qwen3", "qwen3_moe", "qwen3_moe", "qwen3_moe"), ("Qwen MoE", "qwen2_moe", "qwen2_moe", "qwen2_moe"),
     ("qwen", "qwen2_moe", "qwen2_moe", "qwen3_moe"), ("QWEN", "qwen2_moe", "qwen2_moe", "qwen3_moe")],
)  # fmt: skip
def test_architecture_by_prefix_as_mergekit_matches_it(written, llama, qwen2, qwen3):
    requested = parse_config({"base_model": "b", "experts": EXPERTS, "architecture": written}).architecture
    assert [for_base(requested, family) for family in ("llama", "qwen2", "qwen3")] == [llama, qwen2, qwen3]


def test_unknown_architecture_is_an_error():
    with pytest.raises(ConfigError, match="unknown architecture 'gemma'"):
        parse_config({"base_model": "b", "experts": EXPERTS, "architecture": "gemma"})


def test_model_references_written_as_mappings():
    data = {"base_model": {"model": {"path": "org/base", "revision": "v1"}},
            "experts": [{**EXPERTS[0], "source_model": {"model": "org/a", "lora": {"path": "org/lora"}}},
                        {**EXPERTS[1], "source_model": {"path": "org/b"}}]}  # fmt: skip
    config = parse_config(data)
    assert config.base_model == "org/base@v1"
    assert [e.source_model for e in config.experts] == ["org/a+org/lora", "org/b"]


def _same_model_config(models, write_config, gate_mode, prompts):
    base = models.base("llama")
    expert = str(models.expert(base, 1))
    experts = [{"source_model": expert, "positive_prompts": p} for p in prompts]
    return write_config({"base_model": str(base), "gate_mode": gate_mode, "experts": experts})


@pytest.mark.parametrize("gate_mode", ["random", "uniform_random"])
def test_upcycling_copies_with_random_gates_merge(models, write_config, cli, tmp_path, gate_mode):
    code, _, err = cli(_same_model_config(models, write_config, gate_mode, [None] * 4), tmp_path / "out")
    assert code == 0, err


def test_copies_with_prompt_gates_still_need_the_flag(models, write_config, cli, tmp_path):
    config = _same_model_config(models, write_config, "cheap_embed", [["a"], ["b"]])
    code, _, err = cli(config, tmp_path / "out")
    assert code == 2 and "--i-understand-this-is-not-useful-without-training" in err
    assert cli(config, tmp_path / "out", "--i-understand-this-is-not-useful-without-training")[0] == 0


def test_an_empty_prompt_is_a_warning(models, write_config, cli, tmp_path):
    base = models.base("llama")
    experts = [{"source_model": str(models.expert(base, 1)), "positive_prompts": [""]},
               {"source_model": str(models.expert(base, 2)), "positive_prompts": ["def f(x):"]}]  # fmt: skip
    for gate_mode in ("cheap_embed", "hidden"):
        config = write_config({"base_model": str(base), "gate_mode": gate_mode, "experts": experts})
        code, _, err = cli(config, tmp_path / gate_mode)
        assert code == 0, err
        assert "experts[0].positive_prompts[0]: empty prompt, so only the BOS token is used" in err


def test_identical_prompts_are_still_refused(models, write_config, cli, tmp_path):
    base = models.base("llama")
    experts = [{"source_model": str(models.expert(base, s)), "positive_prompts": ["same"]} for s in (1, 2)]
    code, _, err = cli(write_config({"base_model": str(base), "experts": experts}), tmp_path / "out")
    assert code == 2 and "every expert has the same prompts" in err


def test_a_published_style_config_merges_with_one_warning(models, write_config, cli, tmp_path):
    """The shape of configs found on model cards: mergekit's general keys next to the MoE ones."""
    base = models.base("llama")
    data = {"base_model": str(base), "gate_mode": "hidden_last", "dtype": "bfloat16", "architecture": "Mixtral",
            "merge_method": "moe", "tokenizer_source": "union", "experts_per_token": 2,
            "experts": [{"source_model": {"model": {"path": str(models.expert(base, 1))}},
                         "positive_prompts": ["chat", ""]},
                        {"source_model": str(models.expert(base, 2)), "positive_prompts": ["code"],
                         "parameters": {"weight": 0.5}}]}  # fmt: skip
    code, out, err = cli(write_config(data), tmp_path / "out")
    assert code == 0, err
    ignored = [line for line in err.splitlines() if "ignoring" in line]
    assert len(ignored) == 1 and "'merge_method', 'tokenizer_source', 'experts[1].parameters'" in ignored[0]


def test_a_revision_on_a_local_folder_is_ignored_with_a_warning(models, write_config, cli, tmp_path):
    """mergekit's mapping `{model: {path: FOLDER, revision: main}}`: the folder is read as it is, and a warning says
    the revision was ignored (it names a Hub commit)."""
    base = models.base("llama")
    expert = models.expert(base, 1)
    data = {"base_model": {"model": {"path": str(base), "revision": "main"}}, "gate_mode": "random",
            "experts": [{"source_model": {"model": {"path": str(expert), "revision": "main"}}},
                        {"source_model": str(models.expert(base, 2))}]}  # fmt: skip
    code, _, err = cli(write_config(data), tmp_path / "out")
    assert code == 0, err
    assert "no such folder" not in err
    assert f"'{expert}@main': revision 'main' ignored: {expert} is a local folder" in err
    assert "@main" not in (tmp_path / "out" / "moemerge.yml").read_text().split("# Provenance")[0]
