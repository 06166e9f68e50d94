"""`moemerge tune` killed at each stage leaves OUT with all old or all new routers, verifying; Ctrl-C keeps the old
ones; `accelerate launch` with two CPU processes gives the routers of one process with the same global batch."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import pytest
import tunekit

ARGS = ("--steps", "30", "--seq-len", "32", "--batch-tokens", "128", "-v")


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """The tiny MoE, its data, and the routers a finished run gives."""
    root = tmp_path_factory.mktemp("tune-crash")
    moe, data = tunekit.build(root)
    done = tunekit.copy(moe, root / "done")
    tunekit.run("tune", str(done), *_data(data), *ARGS)
    return moe, data, tunekit.state(moe), tunekit.state(done)


def _data(data) -> list[str]:
    return ["--data", f"a={data['a']}", "--data", f"b={data['b']}"]


def _stopped_at(command: list[str], trigger: str, signum: int) -> subprocess.Popen:
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    for line in proc.stderr:
        if trigger in line:
            proc.send_signal(signum)
            break
    proc.stderr.read()
    proc.wait()
    return proc


@pytest.mark.parametrize("trigger", ["step 10/30", "copying", "moving the new routers into place"])
def test_killed_tune_leaves_old_or_new_routers(job, tmp_path, trigger):
    moe, data, old, new = job
    out = tunekit.copy(moe, tmp_path / "out")
    proc = _stopped_at([sys.executable, "-m", "moemerge", "tune", str(out), *_data(data), *ARGS], trigger,
                       signal.SIGKILL)  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, f"the run ended before `{trigger}`"
    now = tunekit.state(out)
    was_old = _weights(now) == _weights(old)
    if was_old:
        assert now == old  # nothing of the run is in OUT
    else:
        assert _weights(now) == _weights(new)  # every router new, and the record with them
        assert set(now) == set(new) and now["moemerge.yml"] != old["moemerge.yml"]
    assert tunekit.run("verify", str(out)).returncode == 0
    tunekit.run("tune", str(out), *_data(data), *ARGS)  # the rerun cleans up after the killed one
    if was_old:
        assert _weights(tunekit.state(out)) == _weights(new)  # and gives what an uninterrupted run gives
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def _weights(state: dict[str, bytes]) -> dict[str, bytes]:
    return {name: data for name, data in state.items() if name.endswith(".safetensors")}


def test_ctrl_c_keeps_the_old_routers(job, tmp_path):
    moe, data, old, _ = job
    out = tunekit.copy(moe, tmp_path / "out")
    proc = subprocess.Popen([sys.executable, "-m", "moemerge", "tune", str(out), *_data(data), *ARGS],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)  # fmt: skip
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if "step 10/30" in line:
            proc.send_signal(signal.SIGINT)
    proc.wait()
    assert proc.returncode == 130 and lines[-1].startswith("error: interrupted by Ctrl-C"), lines[-3:]
    assert tunekit.state(out) == old and [p.name for p in tmp_path.iterdir()] == ["out"]


@pytest.mark.skipif(shutil.which("accelerate") is None, reason="accelerate's launcher is not installed")
@pytest.mark.parametrize("aux", ["0", "0.001"])
def test_two_processes_equal_one_with_the_same_global_batch(job, tmp_path, aux):
    """Each of the two processes takes every other window of the global batch; DDP averages their gradients.
    The next-token loss is a mean over equally many tokens per process, so the averaged gradient is the one-process
    gradient up to float summation order (measured: about 1e-6 after 10 steps). The load-balancing loss is a product of
    per-process token shares and probabilities, not of global ones: with its default weight it moves the routers
    apart by about 1e-4 after 10 steps (routers change by about 0.1 over the run)."""
    moe, data, _, _ = job
    one, two = tunekit.copy(moe, tmp_path / "one"), tunekit.copy(moe, tmp_path / "two")
    args = ("--steps", "10", "--seq-len", "32", "--batch-tokens", "128", "--aux-loss-coef", aux)
    tunekit.run("tune", str(one), *_data(data), *args)
    launch = [shutil.which("accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "moemerge", "tune", str(two), *_data(data),
              *args]  # fmt: skip
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # CPU processes (gloo), also on a machine with GPUs
    done = subprocess.run(launch, capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert '"processes": 2' in (two / "tune.json").read_text()
    a, b, start = tunekit.routers(one), tunekit.routers(two), tunekit.routers(moe)
    moved = max((a[k] - start[k]).abs().max().item() for k in a)
    apart = max((a[k] - b[k]).abs().max().item() for k in a)
    assert moved > 0.02 and apart < (1e-5 if aux == "0" else 1e-3), (moved, apart)
