"""Bad configs and model sets: exit 2, one line naming the problem, no traceback, nothing written."""

from __future__ import annotations

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
    "empty_prompt": (
        lambda z: {**cfg(z), "experts": [{"source_model": str(z["e1"]), "positive_prompts": ["  "]}]},
        "empty prompt",
    ),
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
