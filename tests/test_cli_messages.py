"""Messages that say what is wrong once, in the user's terms: verify on an empty folder or a truncated shard, a
prompt written as a bare string, `route --prompts` with a missing file, a skipped routing report."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="module")
def sharded(models, tmp_path_factory):
    """A merge written in several shards (built once; tests copy what they break)."""
    import yaml

    from moemerge.cli import main

    base = models.base("llama")
    root = tmp_path_factory.mktemp("sharded")
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump({"base_model": str(base), "gate_mode": "random",
                                      "experts": [{"source_model": str(models.expert(base, s))} for s in (1, 2)]}))  # fmt: skip
    with pytest.raises(SystemExit) as done:
        main([str(config), str(root / "out"), "--out-shard-size", "40k", "-q"])
    assert done.value.code == 0
    return root / "out"


def test_verify_an_empty_folder(cli, tmp_path):
    (tmp_path / "empty").mkdir()
    code, _, err = cli("verify", tmp_path / "empty")
    assert code == 1 and err == f"error: {tmp_path / 'empty'}: the folder is empty; give the folder a merge wrote\n"


def test_verify_a_truncated_shard_reports_it_once(cli, sharded, tmp_path):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(sharded, out)
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) > 2
    os.truncate(shards[1], shards[1].stat().st_size // 2)
    for quick in (["--quick"], []):
        code, _, err = cli("verify", out, *quick)
        assert code == 1 and err.count("\n") == 1, err
        assert err.startswith(f"error: {out}: {shards[1].name}: truncated") and f"{out}: {out}" not in err


def test_a_prompt_written_as_a_string_asks_for_a_list(cli, models, write_config, tmp_path):
    base = models.base("llama")
    experts = [{"source_model": str(models.expert(base, 1)), "positive_prompts": "Write a poem about the sea"},
               {"source_model": str(models.expert(base, 2)), "positive_prompts": ["def f(x):"]}]  # fmt: skip
    code, _, err = cli(write_config({"base_model": str(base), "experts": experts}), tmp_path / "out")
    assert code == 2 and err.count("\n") == 1
    assert "experts[0].positive_prompts: prompt file 'Write a poem about the sea' not found" in err
    assert "write a single prompt as a list: positive_prompts: ['Write a poem about the sea']" in err


def test_route_prompts_file_missing_is_relative_to_here(cli, sharded, tmp_path):
    code, _, err = cli("route", sharded, "--prompts", tmp_path / "nope.txt")
    assert code == 2 and "not found" in err and "relative to the config" not in err


def test_skipped_routing_report_names_out_not_the_temporary_folder(cli, models, write_config, tmp_path):
    base = models.base("llama")
    config = write_config({"base_model": str(base), "gate_mode": "random",
                           "experts": [{"source_model": str(models.expert(base, s))} for s in (1, 2)]})  # fmt: skip
    code, _, err = cli(config, tmp_path / "out", "--routing-report")
    assert code == 0, err
    assert "routing report skipped: the experts have no positive prompts" in err
    assert ".moemerge-tmp" not in err and "moemerge route OUT --prompts FILE" in err
