"""Inf and NaN never reach a checkpoint: non-finite numbers in a config are refused with the field's path before any
work, and a tensor the merge computes (scaled, noised, cast to a narrower dtype) that overflows stops the merge."""

from __future__ import annotations

import pytest


def _config(models, **expert):
    base = models.base("llama")
    return {"base_model": str(base), "gate_mode": "random", "dtype": "float16",
            "experts": [{"source_model": str(models.expert(base, 1)), **expert},
                        {"source_model": str(models.expert(base, 2))}]}  # fmt: skip


@pytest.mark.parametrize(
    "field,value",
    [
        ("residual_scale", ".nan"),
        ("residual_scale", ".inf"),
        ("residual_scale", "-.inf"),
        ("noise_scale", ".nan"),
        ("noise_scale", ".inf"),
    ],  # fmt: skip
)
def test_non_finite_scales_are_refused(models, write_config, tmp_path, cli, capsys, field, value):
    import yaml

    text = yaml.safe_dump(_config(models)).replace("- source_model:", f"- {field}: {value}\n  source_model:", 1)
    config = write_config(text)
    capsys.readouterr()  # the models' build output
    for args in (("plan", config), (config, tmp_path / "out")):
        code, _, err = cli(*args)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1, lines
        assert f"config.yaml: experts[0].{field}: Input should be a finite number" in lines[0], lines
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("expert", [{"residual_scale": 1e6}, {"noise_scale": 1e6}])
def test_an_overflowing_computed_tensor_stops_the_merge(models, write_config, tmp_path, cli, capsys, expert):
    """Finite settings whose result leaves float16's range (65504): no all-Inf w2 written, nothing published."""
    config = write_config(_config(models, **expert))
    capsys.readouterr()
    code, _, err = cli(config, tmp_path / "out")
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1, lines
    assert "Inf or NaN after" in lines[0] and "float16" in lines[0] and ".experts.0." in lines[0], lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]
