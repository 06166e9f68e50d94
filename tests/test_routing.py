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
    for i, s in enumerate(report["prompt_sets"]):
        assert set(s) == {"name", "prompts", "tokens", "share", "per_layer", "expert", "hit_rate", "hit_rate_per_layer"}
        if s["expert"] is None:
            assert s["hit_rate"] is None and s["hit_rate_per_layer"] is None
        else:  # top-2 of 2: every token's picks include the set's own expert
            assert s["expert"] == i and s["hit_rate"] == 1.0 and s["hit_rate_per_layer"] == [1.0] * layers
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
    assert code == 2 and err.count("\n") == 1 and "--prompts" in err and "not found" in err
    assert "relative to the config" not in err


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


THREE = {**PROMPTS, "math": ["Solve for x: 2x + 3 = 7.", "What is 12 times 7?"]}


def test_hit_rate_against_a_per_token_count(models, write_config, cli, tmp_path):
    base = models.base("llama")
    experts = [{"source_model": str(models.expert(base, i + 1)), "positive_prompts": p}
               for i, p in enumerate(THREE.values())]  # fmt: skip
    config = write_config({"base_model": str(base), "gate_mode": "hidden", "experts_per_token": 2, "experts": experts})
    assert cli(config, tmp_path / "out", "-q")[0] == 0
    code, stdout, err = cli("route", tmp_path / "out")
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "routing.json").read_text())
    model, tokenizer = load_moe(tmp_path / "out"), AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    rates = []
    for own, (s, prompts) in enumerate(zip(report["prompt_sets"], THREE.values())):
        hits, tokens = [0, 0], 0  # per layer: tokens whose top-2 picks include the set's expert
        for p in prompts:
            ids = tokenizer("<s>" + p, add_special_tokens=False)["input_ids"]
            tokens += len(ids)
            with torch.no_grad():
                layers = model(torch.tensor([ids]), output_router_logits=True).router_logits
            for layer, logits in enumerate(layers):
                for token in range(len(ids)):
                    hits[layer] += own in logits[token].topk(2).indices.tolist()
        assert s["expert"] == own and s["tokens"] == tokens
        assert s["hit_rate_per_layer"] == pytest.approx([h / tokens for h in hits])
        assert s["hit_rate"] == pytest.approx(sum(hits) / 2 / tokens)
        rates.append(f"{s['hit_rate']:.1%}")
    assert 0 < min(s["hit_rate"] for s in report["prompt_sets"]) < 1  # 3 experts, top-2: a real measurement
    table = stdout.splitlines()
    assert "own-expert hit" in table[0] and [row.split()[-1] for row in table[1:4]] == rates


def test_sets_named_after_an_expert_belong_to_it(merged, cli, tmp_path):
    out, _ = merged
    path = tmp_path / "sets.yaml"
    path.write_text(yaml.safe_dump({"llama-base--expert2": ["hello there"], "1: llama-base--expert1": ["x y"],
                                    "other": ["import os"]}, sort_keys=False))  # fmt: skip
    assert cli("route", out, "--prompts", path, "-q")[0] == 0
    sets = json.loads((out / "routing.json").read_text())["prompt_sets"]
    assert [s["expert"] for s in sets] == [1, None, None]  # `1: ...expert1` names neither expert exactly


def test_card_routing_section_refreshed_once(merged, cli):
    out, _ = merged
    card = (out / "README.md").read_text()
    assert "## Routing" not in card and "pypi.org" not in card
    for _ in range(2):
        assert cli("route", out, "-q")[0] == 0
    text = (out / "README.md").read_text()
    assert text.count("## Routing") == 1 and text.count("<!-- moemerge:routing -->") == 1
    assert "own-expert hit |" in text and "| 0: llama-base--expert1 | 50.0% | 50.0% | 100.0% |" in text
    assert text.index("## Routing") < text.index("## Usage")


def test_route_without_a_tokenizer(models, write_config, cli, tmp_path):
    base = models.base("llama")
    config = write_config({"base_model": str(base), "gate_mode": "random", "experts": [
        {"source_model": str(models.expert(base, i + 1)), "positive_prompts": ["hi"]} for i in range(2)]})  # fmt: skip
    assert cli(config, tmp_path / "out", "-q", "--no-copy-tokenizer")[0] == 0
    code, _, err = cli("route", tmp_path / "out")
    assert code == 2 and err.count("\n") == 1
    assert "has no tokenizer" in err and "copy the base model's tokenizer files" in err
    assert not (tmp_path / "out" / "routing.json").exists()


def test_figure_labels_inside_with_many_layers_and_long_names():
    from test_eval import assert_labels_inside

    from moemerge.publish import charts

    experts = [f"{i}: SmolLM2-135M-Instruct-{d}-expert" for i, d in enumerate(("python", "arithmetic", "recipes"))]
    sets = [{"name": f"held-out {e}", "share": [0.5, 0.3, 0.2], "hit_rate_per_layer": [0.9] * 30} for e in experts]
    sets.append({"name": "mine", "share": [0.3, 0.3, 0.4], "hit_rate_per_layer": None})
    report = {"experts": experts, "experts_per_token": 2, "layers": 30, "prompt_sets": sets}
    assert_labels_inside(charts.routing_figure(report), [*experts, "mean over 30 layers", "layer", "held-out 2"])


@pytest.mark.parametrize("verb", ["route", "eval"])
def test_remote_code_refused_without_a_prompt(models, write_config, cli, tmp_path, verb):
    """A DeepSeek output (remote code) without --trust-remote-code: one line, exit 2, never transformers' y/N
    question, even with stdin open and no terminal."""
    import subprocess
    import sys

    base = models.base("llama")
    experts = [{"source_model": str(models.expert(base, i + 1)), "positive_prompts": ["hi there"]} for i in range(2)]
    config = write_config(
        {"base_model": str(base), "architecture": "deepseek", "gate_mode": "random", "experts": experts}
    )
    assert cli(config, tmp_path / "out", "-q")[0] == 0
    command = [sys.executable, "-m", "moemerge", verb, str(tmp_path / "out")]
    run = subprocess.run(command, stdin=subprocess.PIPE, check=False,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert run.returncode == 2, run.stderr
    lines = [line for line in run.stderr.splitlines() if not line.startswith("no --data given")]
    assert lines == [f"error: {tmp_path / 'out'}: the model needs its own code; rerun with --trust-remote-code"]
    assert "[y/N]" not in run.stdout + run.stderr
    assert not (tmp_path / "out" / "routing.json").exists() and not (tmp_path / "out" / "eval.json").exists()
