"""The README's demo path: tiny models from `moemerge.tiny`, merged with examples/configs/demo.yaml, then routed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import load_moe

from moemerge import tiny

ROOT = Path(__file__).parent.parent
DEMO = ROOT / "examples" / "configs" / "demo.yaml"


def test_demo_config_end_to_end(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the demo config names demo/models/... relative to the current folder
    tiny.main(["demo/models"])
    shutil.copy(DEMO, tmp_path / "demo.yaml")
    code, out, err = cli("demo.yaml", "demo/out", "--routing-report")
    assert code == 0, err
    assert "MixtralForCausalLM, 3 experts" in out
    load_moe(tmp_path / "demo" / "out")
    report = json.loads((tmp_path / "demo" / "out" / "routing.json").read_text())
    assert [s["name"] for s in report["prompt_sets"]] == ["0: chat", "1: code", "2: math"]
    # the demo's experts stay close to the base (as fine-tunes do): each prompt set's favourite is its own expert
    assert [max(range(3), key=s["share"].__getitem__) for s in report["prompt_sets"]] == [0, 1, 2]
    shown = subprocess.run([sys.executable, str(ROOT / "examples" / "show.py"), "demo/out"], capture_output=True,
                           text=True, check=True).stdout  # fmt: skip
    assert "generate(" in shown and "1: code" in shown and "averaged over 4 layers" in shown
