"""With the Hub unreachable (a port where nothing listens), the first connection failure ends the run within
seconds, in one line, without huggingface_hub's retry chatter; models already in the cache still merge."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time

import yaml


def _dead_endpoint() -> str:
    with socket.socket() as sock:  # bound, then closed: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _run(args, tmp_path, hf_home):
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env |= {"HF_ENDPOINT": _dead_endpoint(), "HF_HOME": str(hf_home)}
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "moemerge", *map(str, args)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    return done, time.monotonic() - start


def _config(tmp_path, base="org/base"):
    data = {
        "base_model": base,
        "gate_mode": "random",
        "experts": [{"source_model": "org/a"}, {"source_model": "org/b"}],
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_unreachable_hub_fails_fast_in_one_line(tmp_path):
    for verb in (["plan", _config(tmp_path)], [_config(tmp_path), tmp_path / "out"]):
        done, seconds = _run(verb, tmp_path, tmp_path / "hf")
        assert done.returncode == 1, done.stderr
        assert done.stderr.count("\n") == 1 and "Retrying" not in done.stderr, done.stderr
        assert done.stderr.startswith("error: cannot reach the Hugging Face Hub at http://127.0.0.1:")
        assert "HF_HUB_OFFLINE=1" in done.stderr and "org/base" in done.stderr
        assert seconds < 10
    assert not (tmp_path / "out").exists()


def _cache(hf_home, repo_id, folder):
    """`folder` as huggingface_hub's cache holds a downloaded snapshot of `repo_id` (main -> commit)."""
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    commit = "0" * 40
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def test_cached_models_merge_with_the_hub_unreachable(models, tmp_path):
    base = models.base("llama")
    hf_home = tmp_path / "hf"
    _cache(hf_home, "org/base", base)
    _cache(hf_home, "org/a", models.expert(base, 1))
    _cache(hf_home, "org/b", models.expert(base, 2))
    done, _ = _run([_config(tmp_path), tmp_path / "out"], tmp_path, hf_home)
    assert done.returncode == 0, done.stderr
    assert "Retrying" not in done.stderr and (tmp_path / "out" / "model.safetensors").is_file()


def test_transformers_cache_is_where_models_are_found(models, tmp_path):
    base = models.base("llama")
    custom = tmp_path / "custom"  # mergekit's --transformers-cache: the folder that holds models--org--name
    for repo_id, folder in (("org/base", base), ("org/a", models.expert(base, 1)), ("org/b", models.expert(base, 2))):
        _cache(custom.parent / "unused", repo_id, folder)
        shutil.move(custom.parent / "unused" / "hub" / f"models--{repo_id.replace('/', '--')}", custom / "x")
        (custom / "x").rename(custom / f"models--{repo_id.replace('/', '--')}")
    done, _ = _run([_config(tmp_path), tmp_path / "out"], tmp_path, tmp_path / "empty-hf-home")
    assert done.returncode == 1 and "cannot reach the Hugging Face Hub" in done.stderr  # not in the default cache
    done, _ = _run([_config(tmp_path), tmp_path / "out", "--transformers-cache", custom], tmp_path, tmp_path / "hf")
    assert done.returncode == 0, done.stderr
