"""`plan` runs every check the merge runs before its first weight: prompt lengths (named by their place in the
config), the --device, and a base tokenizer that needs remote code (refused in one line, never a y/N prompt)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest


@pytest.fixture
def data(models, capsys):
    base = models.base("llama")  # max_position_embeddings 256
    experts = [{"source_model": str(models.expert(base, s)), "positive_prompts": [f"topic {s}"]} for s in (1, 2)]
    capsys.readouterr()  # building the models is not part of the output under test
    return {"base_model": str(base), "gate_mode": "hidden", "experts": experts}


@pytest.mark.parametrize("gate_mode", ["hidden", "mlp_input_avg"])
@pytest.mark.parametrize("verb", [["plan"], []])
def test_a_prompt_past_the_base_positions_is_named(cli, write_config, data, tmp_path, verb, gate_mode):
    data["gate_mode"] = gate_mode
    data["experts"][1]["positive_prompts"] = ["ok", "word " * 400]
    out = [] if verb else [tmp_path / "out"]
    code, _, err = cli(*verb, write_config(data), *out)
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("error: experts[1].positive_prompts[1]: ") and "max_position_embeddings (256)" in err
    assert not (tmp_path / "out").exists()


def test_plan_refuses_a_device_that_is_not_there(cli, write_config, data):
    import torch

    code, _, err = cli("plan", write_config(data), "--device", f"cuda:{torch.cuda.device_count()}")
    assert code == 2 and err.count("\n") == 1, err
    assert "is visible" in err or "are visible" in err


def test_random_gates_need_no_device_check(cli, write_config, data):
    data["gate_mode"] = "random"
    code, out, err = cli("plan", write_config(data), "--device", "cuda:7", "--json")
    assert code == 0, err
    assert json.loads(out)["experts"]


@pytest.mark.parametrize("gate_mode", ["hidden", "cheap_embed"])
def test_remote_code_tokenizer_is_refused_without_a_prompt(models, write_config, data, tmp_path, gate_mode):
    data["gate_mode"] = gate_mode
    base = tmp_path / "base"
    shutil.copytree(data["base_model"], base)
    config = json.loads((base / "tokenizer_config.json").read_text())
    config |= {"tokenizer_class": "CustomTok", "auto_map": {"AutoTokenizer": [None, "tok.CustomTok"]}}
    (base / "tokenizer_config.json").write_text(json.dumps(config))
    marker = tmp_path / "remote-code-ran"
    (base / "tok.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
                                 "from transformers import PreTrainedTokenizerFast\n\n\n"
                                 "class CustomTok(PreTrainedTokenizerFast):\n    pass\n")  # fmt: skip
    data["base_model"] = str(base)
    cfg = write_config(data)
    for verb in (["plan", str(cfg)], [str(cfg), str(tmp_path / "out")]):
        done = subprocess.run([sys.executable, "-m", "moemerge", *verb], input="y\n", capture_output=True, text=True,
                              timeout=120, check=False)  # fmt: skip
        assert done.returncode == 2, done.stderr
        assert done.stderr.count("\n") == 1 and "rerun with --trust-remote-code" in done.stderr
        assert "[y/N]" not in done.stdout + done.stderr and not marker.exists()
    assert not (tmp_path / "out").exists()
