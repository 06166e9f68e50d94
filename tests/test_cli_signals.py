"""Ctrl-C and SIGTERM during a merge (real subprocesses): exit 130/143, one line, nothing written, OUT unchanged;
a folder an interrupted run had moved aside comes back and is never replaced without --overwrite."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml


@pytest.fixture(scope="module")
def slow_job(models, tmp_path_factory):
    """A hidden-gate merge of 8 experts over 8 layers into 10 MB shards (about 200 MB): each stage lasts long
    enough for a signal to land inside it."""
    base = models.base("llama", hidden_size=256, intermediate_size=1024, num_hidden_layers=8)
    sources = [models.expert(base, seed) for seed in (1, 2)]
    experts = [{"source_model": str(sources[i % 2]), "positive_prompts": [f"prompt number {i}"]} for i in range(8)]
    config = tmp_path_factory.mktemp("signals") / "config.yaml"
    config.write_text(yaml.safe_dump({"base_model": str(base), "gate_mode": "hidden", "experts": experts}))
    return config


def _state(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())} if folder.exists() else {}


@pytest.mark.parametrize(
    ("signum", "stage", "existing"),
    [
        (signal.SIGINT, "computing routers", False),  # during the hidden-state pass (model loading, forward)
        (signal.SIGTERM, "computing routers", True),
        (signal.SIGTERM, "writing model-00002", False),  # while shards are written
        (signal.SIGINT, "writing model-00002", True),
    ],
)
def test_interrupted_merge_exits_with_the_signal_and_writes_nothing(slow_job, tmp_path, signum, stage, existing):
    out = tmp_path / "out"
    extra = ["--overwrite"] if existing else []
    if existing:
        out.mkdir()
        (out / "previous.txt").write_text("an earlier merge")
    before = _state(out)
    command = [sys.executable, "-m", "moemerge", str(slow_job), str(out), "--out-shard-size", "10MB", "-v", *extra]
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if stage in line:
            proc.send_signal(signum)
            break
    _, rest = proc.communicate(timeout=600)  # a busy machine is slow, not wrong
    lines += rest.splitlines(keepends=True) if rest else []
    errors = [line for line in lines if line.startswith("error:")]
    name = "Ctrl-C (SIGINT)" if signum == signal.SIGINT else "SIGTERM"
    assert proc.returncode == 128 + signum, "".join(lines)
    assert errors == [f"error: interrupted by {name}; nothing was written\n"], "".join(lines)
    assert "Traceback" not in "".join(lines)
    assert _state(out) == before
    assert [p.name for p in tmp_path.iterdir()] == (["out"] if existing else [])  # no partial folder left


def _dead_pid() -> int:
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    return int(done.stdout)


def test_restored_folder_is_not_replaced_without_overwrite(models, write_config, cli, tmp_path):
    base = models.base("llama")
    config = write_config({"base_model": str(base), "gate_mode": "random",
                           "experts": [{"source_model": str(models.expert(base, s))} for s in (1, 2)]})  # fmt: skip
    out = tmp_path / "out"
    aside = tmp_path / f".out.moemerge-old-{_dead_pid()}"  # left by a run killed between its two renames
    aside.mkdir()
    (aside / "keep.txt").write_text("the user's earlier output")
    code, stdout, err = cli(config, out)
    assert code == 2, err
    assert "restored your earlier output" in err
    assert (
        err.strip().splitlines()[-1] == f"error: {out}: folder exists and is not empty; pass --overwrite to replace it"
    )
    assert (out / "keep.txt").read_text() == "the user's earlier output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "out"]
    code, _, err = cli(config, out, "--overwrite")  # asked for: now it is replaced
    assert code == 0, err
    assert not (out / "keep.txt").exists() and (out / "config.json").is_file()


def test_interrupt_between_the_renames_puts_out_back(tmp_path, monkeypatch):
    from moemerge.merge import output

    out, tmp = tmp_path / "out", tmp_path / ".out.moemerge-tmp-1"
    out.mkdir()
    (out / "previous.txt").write_text("an earlier merge")
    tmp.mkdir()
    (tmp / "config.json").write_text("{}")
    real_rename = Path.rename

    def interrupted_rename(self, target):
        if self == tmp:
            raise KeyboardInterrupt  # the signal lands after OUT was moved aside
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", interrupted_rename)
    with pytest.raises(KeyboardInterrupt):
        output.publish(tmp, out)
    assert (out / "previous.txt").read_text() == "an earlier merge"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.moemerge-tmp-1", "out"]
