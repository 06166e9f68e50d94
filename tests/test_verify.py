"""`moemerge verify`: sound merges of every architecture pass; each kind of damage is found."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file, save_file
from test_archs import merge_same


@pytest.mark.parametrize("family,arch,shared", [
    ("llama", None, None), ("qwen2", None, None), ("qwen2", None, {"positive_prompts": ["hi"]}),
    ("qwen3", None, None), ("phi3", None, None), ("llama", "deepseek", {}),
])  # fmt: skip
def test_sound_merges_verify(models, write_config, cli, tmp_path, family, arch, shared):
    _, out = merge_same(models, write_config, cli, tmp_path, family, arch, shared)
    code, stdout, err = cli("verify", out)
    assert code == 0, err
    assert "verified" in stdout and "index and shards consistent" in stdout
    if arch == "deepseek":  # remote code: not loaded without --trust-remote-code, and says so
        assert "load and generation skipped" in stdout
    else:
        assert "generates" in stdout


@pytest.fixture
def sharded(models, write_config, cli, tmp_path):
    base = models.base("llama")
    data = {"base_model": str(base), "gate_mode": "random",
            "experts": [{"source_model": str(models.expert(base, i + 1))} for i in range(2)]}  # fmt: skip
    code, _, err = cli(write_config(data), tmp_path / "out", "-q", "--out-shard-size", "20k")
    assert code == 0, err
    return tmp_path / "out"


def _shard_of(out, name):
    return out / json.loads((out / "model.safetensors.index.json").read_text())["weight_map"][name]


def _edit_shard(path, edit):
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})


def _findings(cli, out):
    code, _, err = cli("verify", out)
    assert code == 1
    assert "Traceback" not in err
    return err


EXPERT = "model.layers.1.block_sparse_moe.experts.1.w2.weight"


def test_deleted_expert_tensor(sharded, cli):
    _edit_shard(_shard_of(sharded, EXPERT), lambda t: t.pop(EXPERT))
    err = _findings(cli, sharded)
    assert f"maps to {_shard_of(sharded, EXPERT).name}, which does not hold it" in err
    assert f"missing tensor {EXPERT}" in err


def test_wrong_shape(sharded, cli):
    _edit_shard(_shard_of(sharded, EXPERT), lambda t: t.update({EXPERT: t[EXPERT][:, :-1].contiguous()}))
    assert f"{EXPERT}: shape [32, 63], config.json implies [32, 64]" in _findings(cli, sharded)


def test_stale_index_entry(sharded, cli):
    index = sharded / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    data["weight_map"]["model.layers.0.mlp.old_dense.weight"] = next(iter(data["weight_map"].values()))
    index.write_text(json.dumps(data))
    assert "'model.layers.0.mlp.old_dense.weight' maps to" in _findings(cli, sharded)


def test_stray_and_missing_shards(sharded, cli):
    shard = _shard_of(sharded, EXPERT)
    shard.rename(sharded / "extra.safetensors")
    err = _findings(cli, sharded)
    assert f"{shard.name}: listed in the index but missing" in err
    assert "extra.safetensors: a weight file the index does not list" in err


def test_config_with_wrong_expert_count(sharded, cli):
    config = json.loads((sharded / "config.json").read_text())
    config["num_local_experts"] = 3
    (sharded / "config.json").write_text(json.dumps(config))
    err = _findings(cli, sharded)
    assert "missing tensor model.layers.0.block_sparse_moe.experts.2.w1.weight" in err
    assert "model.layers.0.block_sparse_moe.gate.weight: shape [2, 32], config.json implies [3, 32]" in err


def test_non_finite_router(sharded, cli):
    router = "model.layers.0.block_sparse_moe.gate.weight"
    _edit_shard(_shard_of(sharded, router), lambda t: t[router].__setitem__((0, 0), float("nan")))
    assert f"{router}: router has NaN or Inf values" in _findings(cli, sharded)


def test_truncated_shard(sharded, cli):
    shard = _shard_of(sharded, EXPERT)
    shard.write_bytes(shard.read_bytes()[:-10])
    assert "truncated or corrupt" in _findings(cli, sharded)


def test_verify_usage_errors(cli, tmp_path):
    code, _, err = cli("verify", tmp_path / "absent")
    assert code == 2 and "no such folder" in err
    (tmp_path / "empty").mkdir()
    code, _, err = cli("verify", tmp_path / "empty")
    assert code == 1 and "the folder is empty" in err
