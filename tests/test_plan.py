"""`moemerge plan`: a dry run whose figures equal what the merge then writes, for every architecture."""

from __future__ import annotations

import json
import math

import pytest
from safetensors import safe_open
from test_merge_mixtral import ALLOW_SAME


def _config(models, write_config, family, arch, shared, gate="random"):
    # DeepSeek has no sliding window: a Mistral without one (MistralConfig's default slides 4096 tokens)
    base = models.base(family, sliding_window=None) if family == "mistral" else models.base(family)
    data = {"base_model": str(base), "gate_mode": gate, "dtype": "bfloat16",
            "experts": [{"source_model": str(base), "positive_prompts": [f"prompt {i}"]} for i in range(3)]}  # fmt: skip
    if arch:
        data["architecture"] = arch
    if shared is not None:
        data["shared_experts"] = [{"source_model": str(base), **shared}]
    return write_config(data)


def _written(out):
    shapes, files = {}, sorted(out.glob("*.safetensors"))
    for file in files:
        with safe_open(str(file), "pt") as f:
            shapes.update({name: f.get_slice(name).get_shape() for name in f.keys()})
    return len(files), sum(math.prod(s) * 2 for s in shapes.values()), shapes  # bfloat16: 2 bytes each


@pytest.mark.parametrize("family,arch,shared", [
    ("llama", None, None), ("qwen2", None, None), ("qwen2", None, {}), ("llama", "qwen2_moe", None),
    ("qwen3", None, None), ("phi3", None, None), ("llama", "deepseek", {}), ("mistral", "deepseek", None),
])  # fmt: skip
def test_plan_figures_equal_the_merge(models, write_config, cli, tmp_path, family, arch, shared):
    config = _config(models, write_config, family, arch, shared)
    code, stdout, err = cli("plan", config, "--json", "--out-shard-size", "30k", ALLOW_SAME)
    assert code == 0, err
    plan = json.loads(stdout)
    code, _, err = cli(config, tmp_path / "out", "--out-shard-size", "30k", ALLOW_SAME, "-q")
    assert code == 0, err
    shards, nbytes, shapes = _written(tmp_path / "out")
    assert plan["shards"] == shards > 1
    assert plan["output_bytes"] == nbytes
    total = sum(math.prod(s) for s in shapes.values())
    assert plan["parameters"]["total"] == total
    assert plan["output_bytes_by_dtype"]["bfloat16"] == nbytes
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == nbytes
    assert plan["architecture"] == json.loads((tmp_path / "out" / "config.json").read_text())["model_type"]
    assert plan["download_bytes"] == 0 and plan["estimated_seconds"] >= 0


def test_plan_text_and_rejections(models, write_config, cli):
    config = _config(models, write_config, "qwen3", None, None, gate="hidden")
    code, stdout, err = cli("plan", config, ALLOW_SAME)
    assert code == 0, err
    assert "output: Qwen3MoeForCausalLM (qwen3_moe), 3 experts, top-2, gate hidden, dtype bfloat16" in stdout
    assert "not mixtral: takes llama or mistral or phi3 models, not 'qwen3'" in stdout
    assert "hidden-state pass: 3 prompts on cpu" in stdout and "peak RAM" in stdout and "time: about" in stdout


def test_plan_runs_every_check(models, write_config, cli, tmp_path):
    base = models.base("llama")
    other = models.base("llama", hidden_size=48)
    config = write_config({"base_model": str(base), "gate_mode": "hidden", "experts": [
        {"source_model": str(other), "positive_prompts": ["a"]}, {"source_model": str(base)}]})  # fmt: skip
    code, stdout, err = cli("plan", config)
    assert code == 2 and stdout == ""
    assert "hidden_size" in err and "experts[1]" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == [config]  # nothing written


def test_plan_does_not_need_a_writable_folder(models, write_config, cli, monkeypatch):
    from moemerge.merge import costs as dryrun

    def refuse(*args, **kwargs):
        raise PermissionError("read-only")

    monkeypatch.setattr(dryrun.tempfile, "NamedTemporaryFile", refuse)
    code, stdout, err = cli("plan", _config(models, write_config, "llama", None, None), "--json", ALLOW_SAME)
    assert code == 0, err
    assert json.loads(stdout)["disk"]["write_bytes_per_s"] == dryrun.ASSUMED_BYTES_PER_S
