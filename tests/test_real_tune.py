"""Real tier: `moemerge tune` with its defaults (the closed-form fit) on the real code and math experts (a top-1
`hidden` MoE of the two) lowers the held-out loss on both domains and closes at least 98 % of each base-to-expert gap
(the gradient recipe it replaced reached 97 % / 101 %; the issue's own, 94 % / 96 %). Measured: 99.4 % / 99.9 %
(docs/router-training.md)."""

from __future__ import annotations

import json

import pytest
import yaml

from moemerge.cli import main
from moemerge.real import merge_config

pytestmark = pytest.mark.real
DOMAINS = ("code", "math")
REFERENCE = {"code": 0.98, "math": 0.98}


def _cli(*args) -> int:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    return exc.value.code


def _losses(out, real_assets, *compare) -> dict[str, dict[str, float]]:
    data = [f"--data={name}={real_assets.eval_files[name]}" for name in DOMAINS]
    assert _cli("eval", out, *data, *compare, "-q") == 0
    return {row["name"]: row["loss"] for row in json.loads((out / "eval.json").read_text())["datasets"]}


def test_tune_defaults_close_the_gap_to_each_expert(real_assets, tmp_path):
    config = merge_config(real_assets, gate_mode="hidden", contrast=False)
    config["experts"] = [e for e in config["experts"] if any(e["source_model"] == str(real_assets.experts[d])
                                                              for d in DOMAINS)]  # fmt: skip
    (tmp_path / "moe.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "out"
    assert _cli(tmp_path / "moe.yaml", out, "-q") == 0
    before = _losses(out, real_assets, "--compare")
    train = [f"--data={d}={real_assets.eval_files[d].with_name(f'{d}.train.txt')}" for d in DOMAINS]
    assert _cli("tune", out, *train, "-q") == 0
    after = _losses(out, real_assets)
    for i, domain in enumerate(DOMAINS):
        base, expert = before[domain]["base"], before[domain][f"{i}: {domain}"]
        closed = (base - after[domain]["MoE"]) / (base - expert)
        assert after[domain]["MoE"] < before[domain]["MoE"], (domain, before, after)
        assert closed >= REFERENCE[domain], (domain, closed, before, after)
