"""Crash safety: a merge killed at any point leaves OUT absent or as it was, and the rerun succeeds; full disks."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from moemerge.merge import output


@pytest.fixture(scope="module")
def job(models, tmp_path_factory):
    """A hidden-gate merge into many small shards: long enough to be killed in each stage."""
    import yaml

    base = models.base("llama", hidden_size=128, intermediate_size=256, num_hidden_layers=4)
    experts = [{"source_model": str(models.expert(base, i + 1)), "positive_prompts": [f"prompt number {i}"] * 3}
               for i in range(4)]  # fmt: skip
    root = tmp_path_factory.mktemp("crash")
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump({"base_model": str(base), "gate_mode": "hidden", "experts": experts}))
    return config


def _command(config: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "moemerge", str(config), str(out), "--out-shard-size", "200k", "-v", *extra]


def _killed_at(command: list[str], trigger: str) -> None:
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    for line in proc.stderr:
        if trigger in line:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before `{trigger}`"


def _state(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())} if folder.exists() else {}


@pytest.mark.parametrize("trigger", ["computing routers", "writing model-00003", "moving"])
@pytest.mark.parametrize("existing", [False, True])
def test_killed_merge_leaves_out_absent_or_unchanged(job, tmp_path, trigger, existing):
    out = tmp_path / "out"
    extra = ["--overwrite"] if existing else []
    if existing:
        out.mkdir()
        (out / "previous.txt").write_text("an earlier merge")
    before = _state(out)
    _killed_at(_command(job, out, *extra), trigger)
    after = _state(out)
    assert after == before or (existing and after == {})  # killed between the two renames: OUT moved aside
    rerun = subprocess.run(_command(job, out, *extra), capture_output=True, text=True, check=False)
    assert rerun.returncode == 0, rerun.stderr
    verified = subprocess.run([sys.executable, "-m", "moemerge", "verify", str(out), "--quick"], capture_output=True, check=False,
                              text=True)  # fmt: skip
    assert verified.returncode == 0, verified.stderr
    assert not (out / "previous.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no partial or moved-aside folder left behind


def test_recover_puts_back_a_moved_aside_out(tmp_path):
    out = tmp_path / "out"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=False
    )
    pid = int(dead.stdout)
    (tmp_path / f".out.moemerge-old-{pid}").mkdir()
    (tmp_path / f".out.moemerge-old-{pid}" / "config.json").write_text("{}")
    (tmp_path / f".out.moemerge-tmp-{pid}").mkdir()
    output.recover(out)
    assert (out / "config.json").read_text() == "{}"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


@contextlib.contextmanager
def small_filesystem(folder: Path, size: str):
    """A real size-limited tmpfs when this machine allows mounting; None otherwise."""
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                             capture_output=True, check=False).returncode == 0 if os.geteuid() == 0 else False  # fmt: skip
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", str(folder)], check=False)


def _fill_after(monkeypatch, limit: int) -> None:
    """Stand-in for a full disk where mounting is not allowed: writes fail with ENOSPC after `limit` bytes."""
    import builtins

    real_open, written = builtins.open, [0]

    class Filling:
        def __init__(self, fh):
            self.fh = fh

        def write(self, data):
            written[0] += len(data)
            if written[0] > limit:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.fh.write(data)

        def __getattr__(self, name):
            return getattr(self.fh, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self.fh.__exit__(*exc)

    def filling_open(file, mode="r", *args, **kwargs):
        fh = real_open(file, mode, *args, **kwargs)
        return Filling(fh) if "w" in mode and str(file).endswith(".safetensors") else fh

    monkeypatch.setattr("moemerge.merge.writer.open", filling_open, raising=False)

    def no_kernel_copy(*args, **kwargs):  # an in-kernel copy would bypass the stand-in's write()
        raise OSError(errno.EXDEV, "stand-in: copy through memory")

    monkeypatch.setattr(os, "copy_file_range", no_kernel_copy, raising=False)


def test_full_disk_fails_before_any_work(job, cli, tmp_path, monkeypatch):
    with small_filesystem(tmp_path / "small", "1m") as mounted:
        if not mounted:
            monkeypatch.setattr(output.shutil, "disk_usage", lambda p: type("U", (), {"free": 10**6})())
        code, _, err = cli(job, tmp_path / "small" / "out")
        assert code == 2 and err.count("\n") == 1
        assert "GB free, the merge needs about" in err and "choose another output folder" in err
        assert list((tmp_path / "small").iterdir()) == []


def test_disk_filling_up_mid_write_cleans_up(job, cli, tmp_path, monkeypatch):
    monkeypatch.setattr(output, "check_space", lambda out, need: None)  # the disk fills after the check
    with small_filesystem(tmp_path / "small", "1m") as mounted:
        if not mounted:
            _fill_after(monkeypatch, 10**6)
        code, _, err = cli(job, tmp_path / "small" / "out")
        assert code == 2 and err.count("\n") == 1, err
        assert "disk full; the merge needs about" in err
        assert list((tmp_path / "small").iterdir()) == []


def _wait_for_exec(process: subprocess.Popen) -> None:
    """Until the child has exec'd, /proc/PID/cmdline is still the test runner's own (fork, then exec)."""
    wanted = [str(a).encode() for a in process.args]
    deadline = time.monotonic() + 30
    while Path(f"/proc/{process.pid}/cmdline").read_bytes().split(b"\0")[1 : len(wanted)] != wanted[1:]:
        assert time.monotonic() < deadline, "the child process never started"
        time.sleep(0.01)


def test_a_live_merge_into_the_same_out_is_refused(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "moemerge"])
    _wait_for_exec(sleeper)
    try:
        (tmp_path / f".out.moemerge-tmp-{sleeper.pid}").mkdir()
        with pytest.raises(output.OutputError, match="another moemerge"):
            output.recover(tmp_path / "out")
    finally:
        sleeper.kill()
        sleeper.wait()
    output.recover(tmp_path / "out")  # once it is gone, its partial folder is cleaned up
    assert list(tmp_path.iterdir()) == []


def test_a_reused_pid_is_not_a_live_merge(tmp_path):
    other = subprocess.Popen(["sleep", "30"])  # a live process, but not a moemerge run
    _wait_for_exec(other)
    try:
        (tmp_path / f".out.moemerge-tmp-{other.pid}").mkdir()
        output.recover(tmp_path / "out")
    finally:
        other.kill()
        other.wait()
    assert list(tmp_path.iterdir()) == []
