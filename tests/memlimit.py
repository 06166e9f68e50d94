"""A hard memory limit for a child process, as a container or a hosted notebook has: a memory cgroup (v1 or v2) made
under this process's own, which the child joins before it runs. `available()` says whether this machine allows it
(root and a writable cgroup file system); tests skip cleanly where not."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")


def _own(kind: str) -> Path | None:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        number, controllers, path = line.split(":", 2)
        if kind == "v2" and number == "0" and controllers == "" and (ROOT / "cgroup.controllers").exists():
            return ROOT / path.strip("/")
        if kind == "v1" and "memory" in controllers.split(","):
            return ROOT / "memory" / path.strip("/")
    return None


def _parent() -> tuple[str, Path] | None:
    for kind in ("v1", "v2"):
        folder = _own(kind)
        if folder is not None and folder.is_dir() and os.access(folder, os.W_OK):
            if kind == "v2" and "memory" not in (folder / "cgroup.subtree_control").read_text():
                continue
            return kind, folder
    return None


def available() -> bool:
    return os.geteuid() == 0 and _parent() is not None


@contextlib.contextmanager
def limited(limit: int):
    """A cgroup with a hard limit of `limit` bytes (no swap); yields a function that runs a command in it."""
    kind, parent = _parent()
    group = parent / f"moemerge-test-{uuid.uuid4().hex[:8]}"
    group.mkdir()
    try:
        if kind == "v1":
            (group / "memory.limit_in_bytes").write_text(str(limit))
            with contextlib.suppress(OSError):
                (group / "memory.memsw.limit_in_bytes").write_text(str(limit))
        else:
            (group / "memory.max").write_text(str(limit))
            with contextlib.suppress(OSError):
                (group / "memory.swap.max").write_text("0")
        procs = group / "cgroup.procs"

        def raw(command: list[str], timeout: float = 3600) -> subprocess.CompletedProcess:
            def join() -> None:
                procs.write_text(str(os.getpid()))

            return subprocess.run(command, capture_output=True, text=True, timeout=timeout, preexec_fn=join,
                                  check=False)  # fmt: skip

        def run(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
            return raw([sys.executable, "-m", "moemerge", *args], timeout)

        run.raw = raw
        yield run
    finally:
        for _ in range(50):
            try:
                group.rmdir()
                break
            except OSError:
                import time

                time.sleep(0.1)


def run_free(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """The same command without a limit, to compare against."""
    return subprocess.run([sys.executable, "-m", "moemerge", *args], capture_output=True, text=True, timeout=timeout,
                          check=False)  # fmt: skip
