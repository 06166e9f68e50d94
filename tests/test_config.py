"""Config parsing: shipped examples load, mergekit spellings normalise, defaults resolve."""

from __future__ import annotations

from pathlib import Path

import pytest

from moemerge.config.schema import load_config, parse_config

EXAMPLES = sorted((Path(__file__).parent.parent / "examples" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_parse(path):
    config = load_config(path)
    assert config.experts and all(e.positive_prompts for e in config.experts)


@pytest.mark.parametrize("spelling,expected", [
    ("Mixtral", "mixtral"), ("Qwen MoE", "qwen2_moe"), ("qwen", "qwen"), ("DeepSeek MoE", "deepseek"),
    ("qwen3_moe", "qwen3_moe"),
])  # fmt: skip
def test_architecture_spellings(spelling, expected):  # `qwen`: either Qwen layout, the base's family decides
    config = parse_config({"base_model": "a/b", "architecture": spelling, "experts": [{"source_model": "c/d"}]})
    assert config.architecture == expected


def test_defaults():
    config = parse_config({"base_model": "a/b", "dtype": "torch.bfloat16", "experts": [{"source_model": "c/d"}]})
    assert (config.gate_mode, config.dtype, config.experts_per_token, config.seed) == ("hidden", "bfloat16", 1, None)
    two = parse_config({"base_model": "a/b", "experts": [{"source_model": "c/d"}, {"source_model": "e/f"}]})
    assert two.experts_per_token == 2


FAMILIES = {"beyonder-4x7b.yaml": "mistral", "qwen2.5-3x7b-shared.yaml": "qwen2", "qwen3-2x4b.yaml": "qwen3",
            "llama3-3x8b.yaml": "llama"}  # fmt: skip


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_examples_merge_with_stand_in_models(name, models, write_config, cli, tmp_path):
    """Each shipped Hub example, with every Hub id swapped for a tiny local model of the same family, merges,
    passes every check and loads (its own checks, its prompts, its architecture choice)."""
    import yaml
    from conftest import load_moe

    from moemerge.merge.checks import check_config_rules

    path = Path(__file__).parent.parent / "examples" / "configs" / name
    config = load_config(path)
    assert check_config_rules(config) == []
    data = yaml.safe_load(path.read_text())
    base = models.base(FAMILIES[name])
    stand_in = {data["base_model"]: base}
    for entry in data["experts"] + data.get("shared_experts", []):
        ref = entry["source_model"]
        stand_in.setdefault(ref, models.expert(base, len(stand_in)))
        entry["source_model"] = str(stand_in[ref])
    data["base_model"] = str(base)
    code, _, err = cli(write_config(data), tmp_path / "out", "-q")
    assert code == 0, err
    model = load_moe(tmp_path / "out")
    expected = {"qwen2": "qwen2_moe", "qwen3": "qwen3_moe"}.get(FAMILIES[name], "mixtral")
    assert model.config.model_type == expected


def test_max_memory_budgets():
    from moemerge.cli import parse_max_memory

    assert parse_max_memory("20GiB") == {"cpu": 20 * 2**30}
    assert parse_max_memory("0=20GiB, cuda:1=10GB ,cpu=48GiB") == {"0": 20 * 2**30, "cuda:1": 10**10, "cpu": 48 * 2**30}
    assert parse_max_memory(None) is None
