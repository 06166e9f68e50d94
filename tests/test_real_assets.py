"""The real-asset tooling without a model: cache location, crash-safe builds, deterministic offline texts, configs."""

from __future__ import annotations

import pytest

from moemerge.config.schema import load_config
from moemerge.real import Assets, cache, data, write_config


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("MOEMERGE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_root() == tmp_path / "xdg" / "moemerge"
    monkeypatch.setenv("MOEMERGE_CACHE", str(tmp_path / "mine"))
    assert cache.cache_root() == tmp_path / "mine"
    assert cache.cache_root(tmp_path / "given") == tmp_path / "given"


def test_a_build_is_reused_and_a_new_recipe_rebuilds(tmp_path, capsys):
    calls = []

    def build(folder):
        calls.append(folder)
        (folder / "weights").write_text(str(len(calls)))

    target = tmp_path / "thing"
    assert cache.built(target, {"v": 1}, build, "thing") == target
    assert cache.built(target, {"v": 1}, build, "thing") == target
    assert len(calls) == 1 and (target / "weights").read_text() == "1"
    assert "thing built in" in capsys.readouterr().err
    cache.built(target, {"v": 2}, build, "thing")
    assert (target / "weights").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "thing"]  # no temporary folder left


def test_a_failed_build_never_looks_complete(tmp_path):
    def broken(folder):
        (folder / "half").write_text("x")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        cache.built(tmp_path / "thing", {"v": 1}, broken, "thing")
    assert not (tmp_path / "thing").exists()
    assert [p.name for p in tmp_path.iterdir()] == [".lock"]
    (tmp_path / "thing").mkdir()  # a folder without the marker is rebuilt, not trusted
    cache.built(tmp_path / "thing", {"v": 1}, lambda f: (f / "ok").write_text("y"), "thing")
    assert (tmp_path / "thing" / "ok").is_file()


def test_domains_are_deterministic_distinct_and_held_out():
    first, again = data.domains(0), data.domains(0)
    assert list(first) == list(data.DOMAINS)
    for name, domain in first.items():
        assert domain == again[name]
        assert len(domain.train) == data.TRAIN_CHARS and len(domain.held_out) == data.EVAL_CHARS
        assert len(domain.prompts) == len(domain.held_out_prompts) == data.PROMPTS
        assert not set(domain.held_out_prompts) & set(domain.prompts)
    code, math, prose = first["code"], first["math"], first["prose"]
    # split by file: no 200-character stretch of held-out code appears in the training code
    assert not any(code.held_out[i : i + 200] in code.train for i in range(0, len(code.held_out) - 200, 200))
    assert math.held_out != data.domains(1)["math"].held_out
    assert "def " in code.train and "The answer is" in math.held_out
    assert "def " not in prose.train and "The answer is" not in prose.train
    for domain in first.values():  # training documents end like chat answers; held-out text is plain
        assert domain.train.count(data.END) > 10 and data.END not in domain.held_out


def test_word_problems_are_right():
    import random
    import re

    for i in range(200):
        problem = data._problem(random.Random(i))
        for a, op, b, result in re.findall(r"(\d+) ([-+x/]) (\d+) = (\d+)", problem):
            a, b, result = int(a), int(b), int(result)
            assert {"+": a + b, "-": a - b, "x": a * b, "/": a // b}[op] == result, problem
        assert problem.split("The answer is ")[1].rstrip(".") == re.findall(r"= (\d+)", problem)[-1]


def test_written_config_is_a_valid_merge_config(tmp_path):
    found = Assets(
        base=tmp_path / "base",
        experts={name: tmp_path / name for name in data.DOMAINS},
        eval_files={name: tmp_path / f"{name}.txt" for name in data.DOMAINS},
        prompts={name: [f"a {name} prompt"] for name in data.DOMAINS},
        held_out_prompts={},
    )
    config = load_config(write_config(tmp_path / "c.yaml", found, gate_mode="hidden_avg", experts_per_token=2))
    assert config.gate_mode == "hidden_avg" and config.experts_per_token == 2
    assert [e.source_model for e in config.experts] == [str(tmp_path / n) for n in data.DOMAINS]
    assert config.experts[1].positive_prompts == ["a math prompt"]
    assert config.experts[1].negative_prompts == ["a code prompt", "a prose prompt"]
    plain = load_config(write_config(tmp_path / "p.yaml", found, contrast=False))
    assert plain.gate_mode == "mlp_input_avg" and plain.experts_per_token == 1 and not plain.experts[0].negative_prompts


def test_the_merge_path_never_imports_the_real_assets():
    import subprocess
    import sys

    code = ("import sys, moemerge.cli, moemerge.merge.pipeline, moemerge.forward.routing, moemerge.forward.evaluate; "
            "print([m for m in sys.modules if m.startswith('moemerge.real')])")  # fmt: skip
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"
