"""moemerge.yml reruns from any working folder (local paths absolute, Hub ids kept), and the model card's config
block is exactly moemerge.yml: readable Unicode, loadable as a config; DeepSeek usage needs trust_remote_code."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import yaml

from moemerge.config.schema import load_config, parse_config


def _merge_relative(models, tmp_path, **extra):
    """A config in tmp_path/work naming its models by paths relative to that folder, merged from there."""
    base = models.base("llama")
    work = tmp_path / "work"
    work.mkdir()
    for name, path in (("base", base), ("e1", models.expert(base, 1)), ("e2", models.expert(base, 2))):
        (work / name).symlink_to(path)
    config = {"base_model": "base", "gate_mode": "cheap_embed", **extra,
              "experts": [{"source_model": "e1", "positive_prompts": ["写一首诗", "a poem"]},
                          {"source_model": "e2", "positive_prompts": ["def f(x): return x"]}]}  # fmt: skip
    (work / "config.yaml").write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "moemerge", "config.yaml", "out"], cwd=work, capture_output=True,
                          text=True, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return work


def test_moemerge_yml_reruns_from_another_folder(models, tmp_path):
    work = _merge_relative(models, tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    yml = work / "out" / "moemerge.yml"
    assert yaml.safe_load(yml.read_text())["base_model"] == str((work / "base").resolve())
    done = subprocess.run([sys.executable, "-m", "moemerge", str(yml), "rerun"], cwd=elsewhere, capture_output=True,
                          text=True, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    first, second = (work / "out" / "model.safetensors"), (elsewhere / "rerun" / "model.safetensors")
    assert first.read_bytes() == second.read_bytes()  # the same merge


def test_hub_ids_stay_ids(tmp_path):
    from moemerge.config.schema import dump_config

    config = parse_config({"base_model": "org/base@main", "experts": [{"source_model": "org/a+org/lora"}],
                           "gate_mode": "random"})  # fmt: skip
    located = dump_config(config, locate=lambda ref: ref if "/" in ref else f"/abs/{ref}")
    assert located["base_model"] == "org/base@main" and located["experts"][0]["source_model"] == "org/a+org/lora"


def test_card_config_block_is_moemerge_yml(models, tmp_path):
    work = _merge_relative(models, tmp_path)
    card = (work / "out" / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```yaml\n(.*?)```", card, re.DOTALL).group(1)
    yml = (work / "out" / "moemerge.yml").read_text(encoding="utf-8")
    assert block == yml
    assert "写一首诗" in block and "\\u" not in block  # readable, not escaped
    (tmp_path / "block.yaml").write_text(block, encoding="utf-8")
    config = load_config(tmp_path / "block.yaml")  # a valid config (moemerge_version is a comment)
    assert config.experts[0].positive_prompts == ["写一首诗", "a poem"]
    assert "trust_remote_code" not in card  # a Mixtral loads with transformers' own code


def test_deepseek_card_usage_passes_trust_remote_code(models, tmp_path):
    work = _merge_relative(models, tmp_path, architecture="deepseek")
    card = (work / "out" / "README.md").read_text(encoding="utf-8")
    usage = card[card.index("## Usage") : card.index("## Configuration")]
    loads = re.findall(r"from_pretrained\((.*?)\)\n", usage, re.DOTALL)
    assert len(loads) == 3 and all("trust_remote_code=True" in call for call in loads), loads
    assert os.path.isabs(yaml.safe_load(re.search(r"```yaml\n(.*?)```", card, re.DOTALL).group(1))["base_model"])
