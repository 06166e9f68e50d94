"""The routing report (`moemerge route`, `--routing-report`) and prompt files."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from conftest import load_moe
from PIL import Image
from transformers import AutoTokenizer

PROMPTS = {
    "code": ["def add(a, b): return a + b", "import numpy as np"],
    "story": ["Once upon a time there was a dragon who lived in a castle."],
}


@pytest.fixture
def merged(models, write_config, cli, tmp_path):
    base = models.base("llama")
    config = write_config({"base_model": str(base), "gate_mode": "hidden", "experts": [
        {"source_model": str(models.expert(base, i + 1)), "positive_prompts": p} for i, p in enumerate(PROMPTS.values())]})  # fmt: skip
    code, _, err = cli(config, tmp_path / "out", "--quiet")
    assert code == 0, err
    return tmp_path / "out", base


def _check_report(folder, names, experts, layers=2):
    report = json.loads((folder / "routing.json").read_text())
    assert set(report) == {"experts", "experts_per_token", "layers", "prompt_sets"}
    assert report["experts"] == experts and report["experts_per_token"] == 2 and report["layers"] == layers
    assert [s["name"] for s in report["prompt_sets"]] == names
    for s in report["prompt_sets"]:
        assert set(s) == {"name", "prompts", "tokens", "share", "per_layer"}
        assert s["tokens"] > s["prompts"] > 0
        assert len(s["per_layer"]) == layers and all(abs(sum(row) - 1) < 1e-9 for row in s["per_layer"])
        assert s["share"] == pytest.approx([sum(col) / layers for col in zip(*s["per_layer"])])
        # top-2 of 2 experts: every token picks both, so each gets exactly half of the picks
        assert s["share"] == pytest.approx([0.5, 0.5])
    with Image.open(folder / "routing.png") as image:
        assert image.format == "PNG" and image.size[0] > 100 and image.size[1] > 50
    return report


def test_route_uses_the_configs_prompts(merged, cli):
    out, _ = merged
    code, stdout, err = cli("route", out)
    assert code == 0, err
    experts = ["0: llama-base--expert1", "1: llama-base--expert2"]
    _check_report(out, experts, experts)
    assert "0: llama-base--expert1" in stdout and "50.0%" in stdout and "top-2" in stdout


@pytest.mark.parametrize("kind", ["txt", "yaml"])
def test_route_with_a_prompts_file(merged, cli, tmp_path, kind):
    out, _ = merged
    if kind == "txt":
        path = tmp_path / "mine.txt"
        path.write_text("first prompt\n\n  second prompt  \n")
        names = ["mine"]
    else:
        path = tmp_path / "sets.yaml"
        path.write_text(yaml.safe_dump(PROMPTS))
        names = list(PROMPTS)
    code, _, err = cli("route", out, "--prompts", path, "--quiet")
    assert code == 0, err
    report = _check_report(out, names, ["0: llama-base--expert1", "1: llama-base--expert2"])
    if kind == "txt":
        assert report["prompt_sets"][0]["prompts"] == 2


def test_route_top1_shares(models, write_config, cli, tmp_path):
    base = models.base("llama")
    config = write_config({"base_model": str(base), "gate_mode": "cheap_embed", "experts_per_token": 1, "experts": [
        {"source_model": str(models.expert(base, i + 1)), "positive_prompts": p} for i, p in enumerate(PROMPTS.values())]})  # fmt: skip
    code, _, err = cli(config, tmp_path / "out", "--quiet", "--routing-report")
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "routing.json").read_text())
    model, tokenizer = load_moe(tmp_path / "out"), AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    for s, prompts in zip(report["prompt_sets"], PROMPTS.values()):
        counts = torch.zeros(2, 2)
        for p in prompts:  # independent count: argmax of each layer's router logits per token
            ids = tokenizer("<s>" + p, add_special_tokens=False, return_tensors="pt")["input_ids"]
            with torch.no_grad():
                for layer, logits in enumerate(model(ids, output_router_logits=True).router_logits):
                    counts[layer] += torch.bincount(logits.argmax(-1), minlength=2)
        expected = counts / counts.sum(-1, keepdim=True)
        assert [v for row in s["per_layer"] for v in row] == pytest.approx(expected.flatten().tolist())


def test_route_errors_are_one_line(cli, tmp_path, merged):
    out, _ = merged
    code, _, err = cli("route", tmp_path / "nowhere")
    assert code == 2 and err.count("\n") == 1 and "not a merged model" in err
    code, _, err = cli("route", out, "--prompts", tmp_path / "missing.txt")
    assert code == 2 and err.count("\n") == 1 and "not found" in err


def test_prompt_files_in_the_config(models, write_config, cli, tmp_path):
    base = models.base("llama")
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "code.txt").write_text("\n".join(PROMPTS["code"]) + "\n")
    experts = [{"source_model": str(models.expert(base, 1)), "positive_prompts": "prompts/code.txt"},
               {"source_model": str(models.expert(base, 2)), "positive_prompts": PROMPTS["story"]}]  # fmt: skip
    config = write_config({"base_model": str(base), "gate_mode": "cheap_embed", "experts": experts})
    code, _, err = cli(config, tmp_path / "out", "--quiet")
    assert code == 0, err
    resolved = yaml.safe_load((tmp_path / "out" / "moemerge.yml").read_text())
    assert resolved["experts"][0]["positive_prompts"] == PROMPTS["code"]  # inlined: the rerun needs no file
    inline = write_config({"base_model": str(base), "gate_mode": "cheap_embed", "experts": [
        {**experts[0], "positive_prompts": PROMPTS["code"]}, experts[1]]}, name="inline.yaml")  # fmt: skip
    code, _, err = cli(inline, tmp_path / "out2", "--quiet")
    assert code == 0, err
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == (
        tmp_path / "out2" / "model.safetensors"
    ).read_bytes()
    experts[0]["positive_prompts"] = "prompts/nope.txt"
    config = write_config({"base_model": str(base), "gate_mode": "cheap_embed", "experts": experts}, name="bad.yaml")
    code, _, err = cli(config, tmp_path / "out3")
    assert code == 2 and "experts[0].positive_prompts: prompt file" in err and "not found" in err
    assert not (tmp_path / "out3").exists()
