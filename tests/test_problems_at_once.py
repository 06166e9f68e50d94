"""Every problem of a config is reported in one run: prompt files, unknown keys, models and adapters together."""

from __future__ import annotations

from moemerge.config.schema import read_config


def test_missing_prompt_file_unknown_key_and_missing_base_in_one_run(models, write_config, cli, tmp_path):
    expert = models.expert(models.base("llama"), 1)
    config = write_config({"base_model": "/nonexistent/base", "gateway_mode": "hidden",
                           "experts": [{"source_model": str(expert), "positive_prompts": "missing.txt"},
                                       {"source_model": "/nonexistent/expert", "positive_prompts": ["b"]}]})  # fmt: skip
    code, _, err = cli(config, tmp_path / "out")
    assert code == 2
    assert "experts[0].positive_prompts: prompt file 'missing.txt' not found" in err
    assert "unknown key 'gateway_mode' (did you mean 'gate_mode'?)" in err
    assert "base_model: model '/nonexistent/base': no such folder" in err
    assert "experts[1]: model '/nonexistent/expert': no such folder" in err
    assert "needs positive prompts" not in err  # the unread file is one problem, not two
    assert not (tmp_path / "out").exists()


def test_unknown_gate_mode_adds_no_guessed_prompt_rules(write_config):
    config, problems = read_config(write_config({"base_model": "b", "gate_mode": "smart",
                                                 "experts": [{"source_model": "e"}]}))  # fmt: skip
    assert config is not None and len(problems) == 1 and "unknown gate_mode 'smart'" in problems[0]


def test_lora_base_does_not_hide_the_experts_adapter_problems(models, write_config, cli, tmp_path):
    base = models.base("llama")
    not_an_adapter = tmp_path / "not_an_adapter"
    not_an_adapter.mkdir()
    config = write_config({"base_model": f"{base}+{not_an_adapter}", "gate_mode": "random",
                           "experts": [{"source_model": f"{base}+{not_an_adapter}"},
                                       {"source_model": "/nonexistent/expert"}]})  # fmt: skip
    code, _, err = cli(config, tmp_path / "out")
    assert code == 2
    assert "can be an expert, not the base" in err
    assert f"experts[0]: adapter '{not_an_adapter}': no adapter_config.json" in err
    assert "experts[1]: model '/nonexistent/expert': no such folder" in err


def test_missing_base_does_not_hide_the_experts_problems(models, write_config, cli, tmp_path):
    not_an_adapter = tmp_path / "not_an_adapter"
    not_an_adapter.mkdir()
    base = models.base("llama")
    config = write_config({"base_model": "/nonexistent/base", "gate_mode": "random",
                           "experts": [{"source_model": f"{base}+{not_an_adapter}"}]})  # fmt: skip
    code, _, err = cli(config, tmp_path / "out")
    assert code == 2 and "base_model: model '/nonexistent/base'" in err
    assert f"experts[0]: adapter '{not_an_adapter}': no adapter_config.json" in err
