"""Every exit path returns the terminal: a merge interrupted at many points is gone within seconds (no thread of
moemerge's holds the process), and the Inf/NaN checker's thread is a daemon."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import pytest
import yaml

from moemerge.merge import finite
from moemerge.sources.folder import ByteRange


def test_the_checker_thread_never_holds_the_process(tmp_path):
    (tmp_path / "x.bin").write_bytes(b"\0" * 4096)
    assert (
        finite._thread()
        .submit(finite.mapped_nonfinite, ByteRange(tmp_path / "x.bin", 0, 4096, "float32"))
        .result(timeout=10)
        is False
    )
    checkers = [t for t in threading.enumerate() if t.name.startswith("moemerge-check")]
    assert checkers and all(t.daemon for t in checkers)


@pytest.fixture(scope="module")
def cheap_job(models, tmp_path_factory):
    """A random-gate merge into 2 MB shards: many shards, each copied (and checked) as stored."""
    base = models.base("llama", hidden_size=256, intermediate_size=1024, num_hidden_layers=8)
    sources = [models.expert(base, seed) for seed in (1, 2)]
    experts = [{"source_model": str(sources[i % 2])} for i in range(4)]
    config = tmp_path_factory.mktemp("interrupt") / "config.yaml"
    config.write_text(yaml.safe_dump({"base_model": str(base), "gate_mode": "random", "experts": experts}))
    return config


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_merge_is_gone_within_seconds(cheap_job, tmp_path, signum):
    for delay in (0.0, 0.01, 0.03, 0.08, 0.15, 0.3):
        out = tmp_path / f"out-{delay}"
        proc = subprocess.Popen([sys.executable, "-m", "moemerge", str(cheap_job), str(out), "--out-shard-size", "2MB",
                                 "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if any(tmp_path.glob(f".out-{delay}.moemerge-tmp-*/*.safetensors")):
                break
            time.sleep(0.002)
        time.sleep(delay)
        proc.send_signal(signum)
        try:
            _, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail(f"the merge interrupted {delay} s after its first shard did not exit within 20 s")
        # interrupted (128 + signal) or, when the signal came after the last write, finished
        assert proc.returncode in (0, 128 + signum), (delay, err)
        if proc.returncode:
            assert not out.exists() and not list(tmp_path.glob(f".out-{delay}.*"))
