"""Command-line details: --version, global flags before a verb, --quiet, usage errors, plurals, and exit codes that
stay the same with -vv or MOEMERGE_DEBUG=1."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file, save_file


@pytest.fixture
def config(models, write_config):
    base = models.base("llama")
    experts = [{"source_model": str(models.expert(base, s)), "positive_prompts": [f"topic {s}"]} for s in (1, 2)]
    return write_config({"base_model": str(base), "gate_mode": "cheap_embed", "experts": experts})


def test_version_is_in_help_and_works_with_other_options(cli):
    code, out, _ = cli("--help")
    assert code == 0 and "--version" in out
    assert out.splitlines()[0] == "Usage: moemerge [OPTIONS] CONFIG OUT"
    for args in (["--version"], ["--version", "-q"], ["-q", "-V"], ["cfg.yml", "out", "--version"]):
        code, out, err = cli(*args)
        assert (code, err) == (0, "") and out.startswith("moemerge "), args


def test_arguments_are_named_as_the_usage_line_names_them(cli):
    code, out, _ = cli("verify", "--help")
    assert code == 0 and out.splitlines()[0] == "Usage: moemerge verify [OPTIONS] OUT"
    assert cli("plan")[2] == "error: Missing argument 'CONFIG'. (see `moemerge plan --help`)\n"


def test_flags_before_a_verb_go_to_the_verb(cli, config):
    code, out, err = cli("-v", "plan", config)
    assert code == 0, err
    assert "output:" in out


def test_plan_quiet_prints_nothing_but_json_when_asked(cli, config):
    code, out, err = cli("plan", config, "-q")
    assert (code, out, err) == (0, "", "")
    code, out, _ = cli("plan", config, "-q", "--json")
    assert code == 0 and json.loads(out)["experts"]


def test_unknown_option_suggests_only_a_near_miss(cli, config, tmp_path):
    code, _, err = cli(config, tmp_path / "out", "--bogus")
    assert code == 2 and err == "error: No such option: --bogus (see `moemerge --help`)\n"
    code, _, err = cli(config, tmp_path / "out", "--verbos")
    assert code == 2 and "--verbose" in err


def test_one_expert_is_singular(cli, models, write_config, tmp_path):
    base = models.base("llama")
    config = write_config({"base_model": str(base), "gate_mode": "random",
                           "experts": [{"source_model": str(models.expert(base, 1))}]})  # fmt: skip
    code, out, err = cli(config, tmp_path / "out")
    assert code == 0, err
    assert "(MixtralForCausalLM, 1 expert, 1 shard," in out
    card = (tmp_path / "out" / "README.md").read_text()
    assert "1 expert (" in card and "1 expert," in card and "1 experts" not in card
    code, out, _ = cli("plan", config)
    assert code == 0 and ", 1 expert, top-1" in out and "1 shard (" in out and "1 experts" not in out


@pytest.mark.parametrize("debug", [[], ["-vv"], ["MOEMERGE_DEBUG"]])
def test_exit_codes_do_not_change_with_debugging(cli, config, write_config, tmp_path, monkeypatch, debug):
    if debug == ["MOEMERGE_DEBUG"]:
        monkeypatch.setenv("MOEMERGE_DEBUG", "1")
        debug = []
    bad = write_config({"base_model": "x", "experts": [{"source_model": "y"}], "gate_mode": "nope"}, "bad.yaml")
    assert cli(bad, tmp_path / "out", *debug)[0] == 2  # bad config
    assert cli(config, tmp_path / "out", "--out-shard-size", "lots", *debug)[0] == 2  # bad argument
    full = tmp_path / "full"
    full.mkdir()
    (full / "x.txt").write_text("x")
    code, _, err = cli(config, full, *debug)  # a non-empty OUT
    assert code == 2 and "not empty" in err


def test_nan_weights_exit_2_and_write_nothing(cli, models, write_config, tmp_path):
    import shutil

    base = models.base("llama")
    broken = tmp_path / "broken"
    shutil.copytree(models.expert(base, 1), broken)
    tensors = load_file(broken / "model.safetensors")
    tensors["model.layers.0.mlp.up_proj.weight"][0, 0] = float("nan")
    save_file(tensors, broken / "model.safetensors", metadata={"format": "pt"})
    config = write_config({"base_model": str(base), "gate_mode": "random",
                           "experts": [{"source_model": str(broken)}, {"source_model": str(models.expert(base, 2))}]})  # fmt: skip
    code, _, err = cli(config, tmp_path / "out")
    assert code == 2 and "NaN or Inf" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()
