"""Publishing: the model card, pushes and Hub downloads, against a local stand-in of the Hub's HTTP endpoints."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import socket
import subprocess
import sys

import pytest
import yaml
from hubstub import COMMIT, HubStub
from huggingface_hub import ModelCard
from safetensors import safe_open
from safetensors.torch import load_file, save_file

TOKEN = "hf_moemergeTestSecret0123456789"


def run(args, *, endpoint=None, token=TOKEN, home=None, offline=False, cwd=None):
    """`python -m moemerge ARGS` with the Hub pointed at the stand-in (a child process: huggingface_hub reads
    HF_ENDPOINT and the token at import)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HUB_OFFLINE="1" if offline else "0", HF_HOME=str(home), HF_HUB_DISABLE_TELEMETRY="1")
    if endpoint:
        env["HF_ENDPOINT"] = endpoint
    if token:
        env["HF_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "moemerge", *map(str, args)], env=env, capture_output=True,
                          text=True, cwd=cwd, check=False)  # fmt: skip


@pytest.fixture
def merged(models, write_config, cli, tmp_path):
    base = models.base("llama")
    licensed = tmp_path / "licensed-base"
    shutil.copytree(base, licensed)
    (licensed / "README.md").write_text("---\nlicense: apache-2.0\n---\n# a base model\n")
    experts = [{"source_model": str(models.expert(base, i + 1)), "positive_prompts": [f"about {t} | pipes"]}
               for i, t in enumerate(("code", "maths", "stories"))]  # fmt: skip
    config = write_config({"base_model": str(licensed), "gate_mode": "cheap_embed", "experts": experts})
    code, _, err = cli(config, tmp_path / "My-MoE-3x", "-q", "--routing-report")
    assert code == 0, err
    return tmp_path / "My-MoE-3x", experts


def test_card_front_matter_and_figures(merged):
    out, experts = merged
    card = ModelCard.load(out / "README.md")
    data = card.data.to_dict()
    assert data["license"] == "apache-2.0"  # from the base's own card
    assert {"moe", "frankenmoe", "merge", "moemerge"} <= set(data["tags"])
    assert data["library_name"] == "transformers" and data["pipeline_tag"] == "text-generation"
    assert "base_model" not in data  # local folders are not Hub ids; they are listed in the text instead
    for e in experts:
        assert f"`{e['source_model']}`" in card.text
    assert "about code \\| pipes" in card.text  # a pipe in a prompt does not break the table
    shapes = {}
    for file in out.glob("*.safetensors"):
        with safe_open(str(file), "pt") as f:
            shapes.update({n: f.get_slice(n).get_shape() for n in f.keys()})
    total = sum(math.prod(s) for s in shapes.values())
    expert = sum(math.prod(s) for n, s in shapes.items() if ".experts.2." in n)
    assert f"Parameters: {total:,} in total, {total - expert:,} active per token" in card.text  # 3 experts, top-2
    assert "## Routing" in card.text and "![routing heatmap](routing.png)" in card.text
    assert "MixtralForCausalLM" in card.text and "cheap_embed" in card.text and "load_in_4bit=True" in card.text
    assert yaml.safe_load(card.text.split("```yaml\n")[1].split("```")[0])["gate_mode"] == "cheap_embed"


def test_license_flag_wins(merged, write_config, cli, tmp_path):
    out, _ = merged
    config = out / "moemerge.yml"
    code, _, err = cli(config, tmp_path / "again", "-q", "--license", "mit")
    assert code == 0, err
    assert ModelCard.load(tmp_path / "again" / "README.md").data.license == "mit"


@pytest.mark.parametrize("private,revision", [(True, None), (False, "dev")])
def test_push_through_the_real_client(merged, tmp_path, private, revision):
    out, _ = merged
    with HubStub() as hub:
        args = ["push", out, "someone/My-MoE-3x"] + (["--private"] if private else [])
        args += ["--revision", revision] if revision else []
        result = run(args, endpoint=hub.url, home=tmp_path / "hf")
        assert result.returncode == 0, result.stderr
        repo = hub.repos["someone/My-MoE-3x"]
        assert repo.private is private
        assert {p: b for p, b in repo.files.items()} == {p.name: p.read_bytes() for p in out.iterdir()}
        assert repo.commits[-1]["revision"] == (revision or "main")
        assert (revision in repo.branches) if revision else True
        auth = {h.get("authorization") for m, p, h in hub.requests if m == "POST"}
        assert auth == {f"Bearer {TOKEN}"}  # the token went to the Hub...
    assert TOKEN not in result.stdout + result.stderr  # ...and nowhere else
    assert not any(TOKEN.encode() in p.read_bytes() for p in out.iterdir())
    assert "pushed" in result.stdout


def test_push_errors_are_one_line(merged, tmp_path):
    out, _ = merged
    no_token = run(["push", out, "someone/x"], token=None, home=tmp_path / "empty-home")
    assert no_token.returncode == 1 and no_token.stderr.count("\n") == 1
    assert "no Hugging Face token: set HF_TOKEN or run `hf auth login`" in no_token.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    down = run(["push", out, "someone/x"], endpoint=closed, home=tmp_path / "hf")
    assert down.returncode == 1 and down.stderr.count("\n") == 1 and "cannot reach the Hugging Face Hub" in down.stderr
    with HubStub() as hub:
        refused = run(["push", out, "someone/forbidden-repo"], endpoint=hub.url, home=tmp_path / "hf")
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1
    assert "your token lacks write access" in refused.stderr and TOKEN not in refused.stderr
    bad = run(["push", out, "not a repo!"], home=tmp_path / "hf")
    assert bad.returncode == 2 and "not a valid Hub repo name" in bad.stderr
    assert TOKEN not in down.stderr + bad.stderr


def test_push_to_hub_after_merge_and_not_before(merged, tmp_path):
    out, _ = merged
    with HubStub() as hub:
        result = run([out / "moemerge.yml", tmp_path / "pushed", "--push-to-hub", "someone/pushed", "-q"],
                     endpoint=hub.url, home=tmp_path / "hf")  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert "model.safetensors" in hub.repos["someone/pushed"].files
        refused = run([out / "moemerge.yml", tmp_path / "never", "--push-to-hub", "someone/never"], token=None,
                      endpoint=hub.url, home=tmp_path / "empty-home")  # fmt: skip
    assert refused.returncode == 1 and "no Hugging Face token" in refused.stderr
    assert not (tmp_path / "never").exists()  # refused before any work


@pytest.fixture
def hub_models(models, tmp_path):
    """`org/base` (one file) and `org/expert` whose index puts attention in shard 1 and the MLPs in shard 2."""
    base = models.base("llama")
    expert = tmp_path / "served-expert"
    shutil.copytree(models.expert(base, 1), expert)
    state = load_file(str(expert / "model.safetensors"))
    (expert / "model.safetensors").unlink()
    shards = {"model-00001-of-00002.safetensors": {n: t for n, t in state.items() if ".mlp." not in n},
              "model-00002-of-00002.safetensors": {n: t for n, t in state.items() if ".mlp." in n}}  # fmt: skip
    for name, tensors in shards.items():
        save_file(tensors, str(expert / name), metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {n: f for f, ts in shards.items() for n in ts}}
    (expert / "model.safetensors.index.json").write_text(json.dumps(index))
    config = tmp_path / "hub.yaml"
    config.write_text(yaml.safe_dump({"base_model": "org/base", "gate_mode": "cheap_embed", "experts": [
        {"source_model": "org/expert@v1", "positive_prompts": ["code"]},
        {"source_model": str(models.expert(base, 2)), "positive_prompts": ["maths"]}]}))  # fmt: skip
    return {"org/base": base, "org/expert": expert}, config


def test_hub_download_fetches_only_needed_files(hub_models, tmp_path):
    served, config = hub_models
    with HubStub() as hub:
        hub.served.update(served)
        result = run([config, tmp_path / "out", "-q"], endpoint=hub.url, home=tmp_path / "hf")
        assert result.returncode == 0, result.stderr
        got = hub.downloaded("org/expert")
        assert "model-00002-of-00002.safetensors" in got and "config.json" in got
        assert "model-00001-of-00002.safetensors" not in got  # no MLP tensor in it: never fetched
        assert not any(name.startswith("tokenizer") for name in got)  # an expert's tokenizer is not needed
        assert {"model.safetensors", "tokenizer.json", "config.json"} <= hub.downloaded("org/base")
        count = len(hub.requests)
        resolved = (tmp_path / "out" / "moemerge.yml").read_text()
        assert "model: org/expert@v1" in resolved and f"revision: {COMMIT}" in resolved
        # a second run reuses the user's cache: offline it needs nothing from the Hub
        again = run([config, tmp_path / "again", "-q"], home=tmp_path / "hf", offline=True)
        assert again.returncode == 0, again.stderr
        assert len(hub.requests) == count
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == (
        tmp_path / "again" / "model.safetensors"
    ).read_bytes()


def test_offline_without_cache_is_one_clear_line(hub_models, tmp_path):
    _, config = hub_models
    result = run([config, tmp_path / "out"], home=tmp_path / "empty-cache", offline=True)
    lines = result.stderr.splitlines()  # one line per model, each found in the same run
    assert result.returncode == 2 and len(lines) == 2 and all(line.startswith("error: ") for line in lines), lines
    assert "base_model: model 'org/base'" in lines[0] and "experts[0]: model 'org/expert@v1'" in lines[1]
    assert all("cache" in line and "offline" in line for line in lines)
    assert not (tmp_path / "out").exists()


def test_plan_reads_remote_headers_only(hub_models, tmp_path):
    served, config = hub_models
    with HubStub() as hub:
        hub.served.update(served)
        result = run(["plan", config, "--json"], endpoint=hub.url, home=tmp_path / "hf")
        assert result.returncode == 0, result.stderr
        fetched = hub.downloaded("org/expert") | hub.downloaded("org/base")
        assert not {f for f in fetched if f.endswith(".safetensors")}  # headers came by range requests only
        assert "config.json" in fetched
    plan = json.loads(result.stdout)
    expected = (served["org/base"] / "model.safetensors").stat().st_size
    expected += (served["org/expert"] / "model-00002-of-00002.safetensors").stat().st_size
    header_bytes = 2 * 8  # two files' length prefixes, plus their JSON headers (below)
    for file in (served["org/base"] / "model.safetensors", served["org/expert"] / "model-00002-of-00002.safetensors"):
        header_bytes += int.from_bytes(file.read_bytes()[:8], "little")
    assert plan["download_bytes"] == expected - header_bytes  # tensor data of the needed files (headers aside)
    assert plan["architecture"] == "mixtral" and plan["shards"] == 1


def test_plan_of_a_bin_only_hub_model_says_why(models, tmp_path):
    import torch

    base = models.base("llama")
    binary = tmp_path / "bin-only"
    shutil.copytree(base, binary)
    torch.save(load_file(str(binary / "model.safetensors")), binary / "pytorch_model.bin")
    (binary / "model.safetensors").unlink()
    config = tmp_path / "bin.yaml"
    config.write_text(yaml.safe_dump({"base_model": "org/bin", "gate_mode": "random", "experts": [
        {"source_model": str(models.expert(base, 1))}, {"source_model": str(models.expert(base, 2))}]}))  # fmt: skip
    with HubStub() as hub:
        hub.served["org/bin"] = binary
        planned = run(["plan", config], endpoint=hub.url, home=tmp_path / "hf")
        merged = run([config, tmp_path / "out", "-q"], endpoint=hub.url, home=tmp_path / "hf")
    assert planned.returncode == 2 and "no safetensors weights on the Hub" in planned.stderr
    assert merged.returncode == 0, merged.stderr  # the merge downloads and reads the .bin lazily


def test_push_while_offline_names_the_variable(merged, tmp_path):
    out, _ = merged
    result = run(["push", out, "someone/x"], home=tmp_path / "hf", offline=True)
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert "HF_HUB_OFFLINE=1 is set" in result.stderr and "unset HF_HUB_OFFLINE" in result.stderr
    assert "check the network" not in result.stderr
    merge = run([out / "moemerge.yml", tmp_path / "never", "--push-to-hub", "someone/x"], home=tmp_path / "hf",
                offline=True)  # fmt: skip
    assert merge.returncode == 1 and "HF_HUB_OFFLINE=1 is set" in merge.stderr
    assert not (tmp_path / "never").exists()  # refused before any work


class _Api:
    """HfApi with upload_large_folder (huggingface_hub < 2), recording what push calls."""

    calls: list[tuple[str, dict]] = []

    def __init__(self, token=None):
        pass

    def create_repo(self, repo_id, **kwargs):
        return f"https://hub.example/{repo_id}"

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs))

    def upload_large_folder(self, **kwargs):
        self.calls.append(("upload_large_folder", kwargs))


@pytest.mark.parametrize("message", [None, "my message"])
def test_a_commit_message_is_never_dropped_on_a_large_upload(tmp_path, monkeypatch, caplog, message):
    import huggingface_hub

    from moemerge.publish import upload

    (tmp_path / "model.safetensors").write_bytes(b"x" * 100)
    monkeypatch.setattr(huggingface_hub, "HfApi", _Api)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(upload, "LARGE_UPLOAD_BYTES", 10)
    _Api.calls = []
    monkeypatch.setattr(logging.getLogger("moemerge"), "propagate", True)  # an in-process CLI run turns it off
    with caplog.at_level(logging.WARNING, logger="moemerge"):
        upload.push(tmp_path, "someone/big", private=False, revision=None, message=message, token="hf_x")
    [(method, kwargs)] = _Api.calls
    if message is None:
        assert method == "upload_large_folder"  # resumable
    else:
        assert method == "upload_folder" and kwargs["commit_message"] == "my message"
        assert "upload_large_folder takes no commit message" in caplog.text
