"""The README's demo path: tiny models from `moemerge.tiny`, merged with examples/configs/demo.yaml, then routed."""

from __future__ import annotations

import shutil
from pathlib import Path

from conftest import load_moe

from moemerge import tiny
from moemerge.routing import routing_shares

DEMO = Path(__file__).parent.parent / "examples" / "configs" / "demo.yaml"


def test_demo_config_end_to_end(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the demo config names demo/models/... relative to the current folder
    tiny.main(["demo/models"])
    shutil.copy(DEMO, tmp_path / "demo.yaml")
    code, out, err = cli("demo.yaml", "demo/out")
    assert code == 0, err
    assert "MixtralForCausalLM, 3 experts" in out
    load_moe(tmp_path / "demo" / "out")
    shares = routing_shares(tmp_path / "demo" / "out", {"code": ["def add(a, b): return a + b"]})
    assert len(shares["code"]) == 4 and all(abs(sum(layer) - 1) < 1e-9 for layer in shares["code"])
