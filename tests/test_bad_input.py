"""Bad configs and model sets: exit 2, one line naming the problem, no traceback, nothing written."""

from __future__ import annotations

import json
import shutil

import pytest
from safetensors.torch import load_file, save_file

from moemerge import tiny

P = ["def add(a, b): return a + b"]
Q = ["Once upon a time there was a dragon"]


@pytest.fixture(scope="session")
def zoo(models, tmp_path_factory):
    """Named model folders, good and broken."""
    root = tmp_path_factory.mktemp("zoo")
    base = models.base("llama")
    z = {"base": base, "e1": models.expert(base, 1), "e2": models.expert(base, 2)}
    z["wide"] = models.base("llama", hidden_size=64)
    z["tall"] = models.base("llama", intermediate_size=128)
    z["deep"] = models.base("llama", num_hidden_layers=3)
    z["biased"] = models.base("llama", attention_bias=True)
    z["mistral"] = models.base("mistral")
    broken = root / "no_mlp"
    shutil.copytree(z["e1"], broken)
    state = load_file(broken / "model.safetensors")
    del state["model.layers.1.mlp.up_proj.weight"]
    save_file(state, broken / "model.safetensors", metadata={"format": "pt"})
    z["no_mlp"] = broken
    for name, mutate in {
        "bad_header": lambda b: b[:8] + b"{not json" + b[17:],
        "truncated": lambda b: b[: len(b) // 2],
    }.items():
        folder = root / name
        shutil.copytree(z["e1"], folder)
        file = folder / "model.safetensors"
        file.write_bytes(mutate(file.read_bytes()))
        z[name] = folder
    z["no_config"] = root / "no_config"
    shutil.copytree(z["e1"], z["no_config"])
    (z["no_config"] / "config.json").unlink()
    z["heads"] = models.base("llama", num_attention_heads=8)
    z["kv_heads"] = models.base("llama", num_key_value_heads=4)
    z["qwen3"] = models.base("qwen3")
    sharded = root / "sharded"
    shutil.copytree(z["e1"], sharded)
    state = load_file(sharded / "model.safetensors")
    (sharded / "model.safetensors").unlink()
    names = sorted(state)
    halves = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2 :]}  # fmt: skip
    for file, part in halves.items():
        save_file({n: state[n] for n in part}, sharded / file, metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {n: f for f, part in halves.items() for n in part}}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    z["sharded"] = sharded
    z["lost_shard"] = root / "lost_shard"
    shutil.copytree(sharded, z["lost_shard"])
    (z["lost_shard"] / "model-00002-of-00002.safetensors").unlink()
    z["escaping_index"] = root / "escaping_index"
    shutil.copytree(sharded, z["escaping_index"])
    index["weight_map"] = {n: "../../../../etc/passwd" for n in index["weight_map"]}
    (z["escaping_index"] / "model.safetensors.index.json").write_text(json.dumps(index))
    for name, tensor, value in (("nan_expert", "model.layers.1.mlp.down_proj.weight", float("nan")),
                                ("inf_base", "model.layers.0.self_attn.q_proj.weight", float("inf"))):  # fmt: skip
        folder = root / name
        shutil.copytree(z["e1"] if name == "nan_expert" else base, folder)
        state = load_file(folder / "model.safetensors")
        state[tensor][0, 0] = value
        save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
        z[name] = folder
    z["no_tokenizer"] = root / "no_tokenizer"
    z["no_tokenizer"].mkdir()
    for file in ("config.json", "model.safetensors"):
        shutil.copy(base / file, z["no_tokenizer"])
    z["not_a_model"] = root / "not_a_model"
    z["not_a_model"].mkdir()
    (z["not_a_model"] / "notes.txt").write_text("hello")
    for name, change in {"billion_layers": {"num_hidden_layers": 10**9}, "text_hidden": {"hidden_size": "big"},
                         "negative_heads": {"num_attention_heads": -4}}.items():  # fmt: skip
        folder = root / name
        shutil.copytree(base, folder)
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, **change}))
        z[name] = folder
    z["huge_config"] = root / "huge_config"
    shutil.copytree(z["e1"], z["huge_config"])
    with open(z["huge_config"] / "config.json", "r+b") as fh:
        fh.truncate(100 * 2**20)  # sparse: 100 MB of config.json costs no disk
    z["no_weights"] = root / "no_weights"
    z["no_weights"].mkdir()
    shutil.copy(base / "config.json", z["no_weights"])
    tiny.make_tokenizer(z["no_weights"])
    return z


def cfg(z, experts=("e1", "e2"), **top):
    data = {"base_model": str(z.get(top.pop("base", "base"), "/nonexistent/base")), "gate_mode": "cheap_embed",
            "experts": [{"source_model": str(z.get(e, f"/nonexistent/{e}")), "positive_prompts": [f"prompt {i}"]}
                        for i, e in enumerate(experts)]}  # fmt: skip
    data.update(top)
    return data


CASES = {
    "yaml_syntax": (lambda z: "base_model: [unclosed\nexperts: 1", "invalid YAML"),
    "not_a_mapping": (lambda z: "- just\n- a list\n", "not a mapping"),
    "empty_file": (lambda z: "", "empty"),
    "unknown_key": (lambda z: {**cfg(z), "gate_mod": "random"}, "did you mean 'gate_mode'"),
    "unknown_expert_key": (
        lambda z: {**cfg(z), "experts": [{"source_model": str(z["e1"]), "positive_prompt": P}]},
        "experts[0]: unknown key 'positive_prompt' (did you mean 'positive_prompts'",
    ),
    "wrong_type": (lambda z: cfg(z, experts_per_token="two"), "experts_per_token"),
    "experts_not_list": (lambda z: {**cfg(z), "experts": "e1"}, "experts"),
    "missing_base": (lambda z: {k: v for k, v in cfg(z).items() if k != "base_model"}, "base_model: required"),
    "no_experts": (lambda z: cfg(z, experts=()), "experts"),
    "missing_base_folder": (lambda z: cfg(z, base="missing"), "base_model: model '/nonexistent/base'"),
    "missing_expert_folder": (lambda z: cfg(z, experts=("e1", "gone")), "experts[1]: model '/nonexistent/gone'"),
    "hidden_mismatch": (lambda z: cfg(z, experts=("e1", "wide")), "hidden_size is 64"),
    "intermediate_mismatch": (lambda z: cfg(z, experts=("e1", "tall")), "intermediate_size is 128"),
    "layer_mismatch": (lambda z: cfg(z, experts=("e1", "deep")), "num_hidden_layers is 3"),
    "missing_mlp_tensor": (lambda z: cfg(z, experts=("e1", "no_mlp")), "missing MLP tensor model.layers.1.mlp.up_proj"),
    "bad_dtype": (lambda z: cfg(z, dtype="float8"), "unknown dtype 'float8'"),
    "bad_gate_mode": (lambda z: cfg(z, gate_mode="smart"), "unknown gate_mode 'smart'"),
    "too_many_per_token": (lambda z: cfg(z, experts_per_token=3), "experts_per_token: 3 is more than the 2"),
    "missing_prompts": (
        lambda z: {
            **cfg(z),
            "experts": [{"source_model": str(z["e1"]), "positive_prompts": P}, {"source_model": str(z["e2"])}],
        },
        "experts[1].positive_prompts: gate_mode 'cheap_embed' needs positive prompts",
    ),
    "identical_prompts": (
        lambda z: {**cfg(z), "experts": [{"source_model": str(z[e]), "positive_prompts": P} for e in ("e1", "e2")]},
        "same prompts",
    ),
    "same_model_everywhere": (lambda z: cfg(z, experts=("e1", "e1")), "every expert is the same model"),
    "negative_noise": (
        lambda z: {**cfg(z), "experts": [{"source_model": str(z["e1"]), "positive_prompts": P, "noise_scale": -1}]},
        "noise_scale",
    ),
    "bad_architecture": (lambda z: cfg(z, architecture="gpt5"), "unknown architecture 'gpt5'"),
    "no_config_json": (lambda z: cfg(z, experts=("e1", "no_config")), "no config.json"),
    "no_weights": (lambda z: cfg(z, experts=("e1", "no_weights")), "no model weights found"),
    "corrupt_header": (lambda z: cfg(z, experts=("e1", "bad_header")), "re-download"),
    "truncated_file": (lambda z: cfg(z, experts=("e1", "truncated")), "truncated"),
    "other_family": (lambda z: cfg(z, experts=("e1", "mistral")), "model_type 'mistral' differs"),
    "biased_base_to_mixtral": (lambda z: cfg(z, base="biased"), "mixtral: has no bias terms"),
    "head_count_mismatch": (lambda z: cfg(z, experts=("e1", "heads")), "num_attention_heads is 8"),
    "kv_head_mismatch": (lambda z: cfg(z, experts=("e1", "kv_heads")), "num_key_value_heads is 4"),
    "index_missing_shard": (lambda z: cfg(z, experts=("e1", "lost_shard")), "listed in the model's index but missing"),
    "index_escapes_folder": (lambda z: cfg(z, experts=("e1", "escaping_index")), "not a file in the model folder"),
    "nan_in_expert": (lambda z: cfg(z, experts=("e1", "nan_expert")), "NaN or Inf"),
    "inf_in_base": (lambda z: cfg(z, base="inf_base"), "NaN or Inf"),
    "base_without_tokenizer": (lambda z: cfg(z, base="no_tokenizer"), "has no tokenizer files"),
    "folder_is_not_a_model": (lambda z: cfg(z, experts=("e1", "not_a_model")), "no config.json"),
    "path_traversal_source": (
        lambda z: {**cfg(z), "experts": [{"source_model": "../../../../../../etc", "positive_prompts": P}]},
        "no config.json",
    ),
    "hub_id_with_dotdot": (
        lambda z: {**cfg(z), "experts": [{"source_model": "org/../../x", "positive_prompts": P}]},
        "no such folder",
    ),
    "qwen3_arch_for_llama": (lambda z: cfg(z, architecture="qwen3_moe"), "qwen3_moe: takes qwen3 models"),
    "shared_expert_on_mixtral": (
        lambda z: {**cfg(z), "architecture": "mixtral", "shared_experts": [{"source_model": str(z["e1"])}]},
        "mixtral: takes no shared experts",
    ),
    "mixed_families": (lambda z: cfg(z, experts=("e1", "qwen3")), "differs"),
    "dtype_number": (lambda z: cfg(z, dtype=16), "dtype"),
    "seed_text": (lambda z: cfg(z, seed="lucky"), "seed"),
    "empty_base_model": (lambda z: {**cfg(z), "base_model": ""}, "base_model"),
    "null_source_model": (
        lambda z: {**cfg(z), "experts": [{"source_model": None, "positive_prompts": P}]},
        "experts[0].source_model",
    ),
    "noise_scale_text": (
        lambda z: {**cfg(z), "experts": [{"source_model": str(z["e1"]), "positive_prompts": P, "noise_scale": "lots"}]},
        "noise_scale",
    ),
    "prompt_file_missing": (
        lambda z: {**cfg(z), "experts": [{"source_model": str(z["e1"]), "positive_prompts": "nope.txt"}]},
        "prompt file",
    ),
    "yaml_alias_bomb": (
        lambda z: (
            "base_model: [&a [x, x, x, x, x, x, x, x], &b [*a, *a, *a, *a, *a, *a, *a, *a], "
            "&c [*b, *b, *b, *b, *b, *b, *b, *b], [*c, *c, *c, *c, *c, *c, *c, *c]]\n"
            "experts: [{source_model: x}]\n"
        ),
        "base_model",
    ),
    "binary_config": (lambda z: b"\xff\xfe\x00\x81binary", "cannot read the config"),
    "prompt_longer_than_the_model": (
        lambda z: {
            **cfg(z),
            "gate_mode": "hidden",
            "experts": [
                {"source_model": str(z["e1"]), "positive_prompts": ["word " * 400]},
                {"source_model": str(z["e2"]), "positive_prompts": P},
            ],
        },
        "more than the base model's max_position_embeddings (256)",
    ),
    "base_claims_a_billion_layers": (
        lambda z: cfg(z, base="billion_layers"),
        "num_hidden_layers 1000000000, the weights hold layers 0..1",
    ),
    "base_hidden_size_text": (lambda z: cfg(z, base="text_hidden"), "needs a positive integer hidden_size"),
    "base_negative_heads": (lambda z: cfg(z, base="negative_heads"), "needs a positive integer num_attention_heads"),
    "huge_config_json": (lambda z: cfg(z, experts=("e1", "huge_config")), "not a regular JSON file under 64 MB"),
    "prompts_not_list": (
        lambda z: {**cfg(z), "experts": [{"source_model": str(z["e1"]), "positive_prompts": 5}]},
        "positive_prompts",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_config(zoo, write_config, cli, tmp_path, case):
    build, expected = CASES[case]
    config = write_config(build(zoo))
    out = tmp_path / "out"
    code, stdout, err = cli(config, out, "--quiet")
    assert code == 2, err
    assert expected in err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]


def test_every_problem_reported_at_once(zoo, write_config, cli, tmp_path):
    config = write_config({**cfg(zoo, experts=("e1", "wide")), "dtype": "int3", "gate_mod": 1, "experts_per_token": 0})
    code, _, err = cli(config, tmp_path / "out")
    assert code == 2
    assert "dtype" in err and "gate_mod" in err and "experts_per_token" in err


@pytest.mark.parametrize("args,expected", [
    (["--out-shard-size", "lots"], "--out-shard-size"),
    (["--device", "tpu"], "--device"),
    (["--no-such-flag"], "No such option"),
    (["--load-in-4bit", "--load-in-8bit"], "pick one"),
    (["--max-memory", "20GiB"], "--max-memory only applies with --device auto"),
    (["--device", "auto", "--max-memory", "gpu0=2GB"], "--max-memory: unknown device 'gpu0'"),
    (["--device", "auto", "--max-memory", "0=lots"], "--max-memory: cannot read size 'lots'"),
    (["--private"], "--private only applies with --push-to-hub"),
    (["--push-to-hub", "no slash"], "not a valid Hub repo name"),
])  # fmt: skip
def test_bad_arguments(zoo, write_config, cli, tmp_path, args, expected):
    config = write_config(cfg(zoo))
    code, _, err = cli(config, tmp_path / "out", *args)
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_missing_config_file(cli, tmp_path):
    code, _, err = cli(tmp_path / "nope.yaml", tmp_path / "out")
    assert code == 2 and "config file not found" in err


def test_non_empty_out(zoo, write_config, cli, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    code, _, err = cli(write_config(cfg(zoo)), out)
    assert code == 2 and "not empty" in err and (out / "keep.txt").read_text() == "x"


def test_huge_prompt_lists_are_fine(zoo, write_config, cli, tmp_path):
    """20,000 prompts per expert: cheap_embed reads only the embedding rows it needs; nothing grows per prompt."""
    many = [f"prompt {i} about {'code' if i % 2 else 'maths'}" for i in range(20_000)]
    data = cfg(zoo)
    data["experts"][0]["positive_prompts"] = many
    data["experts"][1]["negative_prompts"] = many[:5000]
    code, _, err = cli(write_config(data), tmp_path / "out", "--quiet")
    assert code == 0, err


def test_out_is_a_file(zoo, write_config, cli, tmp_path):
    (tmp_path / "out").write_text("not a folder")
    code, _, err = cli(write_config(cfg(zoo)), tmp_path / "out")
    assert code == 2 and "exists and is not a folder" in err and (tmp_path / "out").read_text() == "not a folder"


def test_unwritable_parent_fails_before_any_work(zoo, write_config, cli, tmp_path, monkeypatch):
    import os

    locked = tmp_path / "locked"
    locked.mkdir()
    monkeypatch.setattr(os, "access", lambda path, mode: str(path) != str(locked))  # root ignores permissions
    code, _, err = cli(write_config(cfg(zoo)), locked / "out")
    assert code == 2 and "not writable" in err and list(locked.iterdir()) == []


def test_expert_vocabulary_differs_is_a_warning(zoo, models, write_config, cli, tmp_path):
    data = cfg(zoo)
    data["experts"][1]["source_model"] = str(models.base("llama", vocab_size=320))
    code, _, err = cli(write_config(data), tmp_path / "out")
    assert code == 0, err
    assert "WARNING" in err and "vocab" in err


def test_no_remote_code_without_the_flag(models, write_config, cli, tmp_path):
    base = models.base("llama")
    data = {"base_model": str(base), "architecture": "deepseek", "gate_mode": "cheap_embed",
            "experts": [{"source_model": str(models.expert(base, i + 1)), "positive_prompts": [f"p {i}"]}
                        for i in range(2)]}  # fmt: skip
    assert cli(write_config(data), tmp_path / "out", "-q")[0] == 0
    code, _, err = cli("route", tmp_path / "out")
    assert code == 2 and "rerun with --trust-remote-code" in err and err.count("\n") == 1


def test_overwrite_never_replaces_a_source_model(zoo, write_config, cli, tmp_path):
    before = {p.name: p.read_bytes() for p in zoo["e1"].iterdir()}
    for out in (zoo["e1"], zoo["e1"].parent):
        code, _, err = cli(write_config(cfg(zoo)), out, "--overwrite")
        assert code == 2 and "holds the source model" in err
    assert {p.name: p.read_bytes() for p in zoo["e1"].iterdir()} == before


@pytest.mark.parametrize("source", ["/dev/zero", "folder"])
def test_config_that_is_not_a_regular_file(cli, tmp_path, source):
    if source == "folder":
        source = tmp_path / "folder.yaml"
        source.mkdir()
    code, _, err = cli(source, tmp_path / "out")
    assert code == 2 and "is not a regular file" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()
