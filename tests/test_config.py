"""Config parsing: shipped examples load, mergekit spellings normalise, defaults resolve."""

from __future__ import annotations

from pathlib import Path

import pytest

from moemerge.config import load_config, parse_config

EXAMPLES = sorted((Path(__file__).parent.parent / "examples" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_parse(path):
    config = load_config(path)
    assert config.experts and all(e.positive_prompts for e in config.experts)


@pytest.mark.parametrize("spelling,expected", [
    ("Mixtral", "mixtral"), ("Qwen MoE", "qwen2_moe"), ("qwen", "qwen2_moe"), ("DeepSeek MoE", "deepseek"),
    ("qwen3_moe", "qwen3_moe"),
])  # fmt: skip
def test_architecture_spellings(spelling, expected):
    config = parse_config({"base_model": "a/b", "architecture": spelling, "experts": [{"source_model": "c/d"}]})
    assert config.architecture == expected


def test_defaults():
    config = parse_config({"base_model": "a/b", "dtype": "torch.bfloat16", "experts": [{"source_model": "c/d"}]})
    assert (config.gate_mode, config.dtype, config.experts_per_token, config.seed) == ("hidden", "bfloat16", 1, None)
    two = parse_config({"base_model": "a/b", "experts": [{"source_model": "c/d"}, {"source_model": "e/f"}]})
    assert two.experts_per_token == 2
