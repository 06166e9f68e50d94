"""The output folder's life: free-space check, a temporary sibling to write into, recovery after a killed run, and
the durable rename into place (a killed run never leaves a folder that looks finished)."""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

from moemerge.errors import OutputError

log = logging.getLogger(__name__)
LEFTOVER = re.compile(r"^\.(?P<name>.+)\.moemerge-(?P<kind>tmp|old)-(?P<pid>\d+)$")
SPACE_MARGIN = 16 * 2**20  # config, tokenizer, card, index


def followed(out: Path) -> Path:
    """OUT as the folder to write: a symlink is followed, so that its target gets the output and the link stays a
    link (renaming the link itself would leave the real folder unchanged and a stray link behind)."""
    return Path(os.path.realpath(out)) if out.is_symlink() else out


def temp_folder(out: Path) -> Path:
    return out.parent / f".{out.name}.moemerge-tmp-{os.getpid()}"


def _alive(pid: int) -> bool:
    """Is a moemerge process `pid` still running? (A reused pid of some other program does not count.)"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        return b"moemerge" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc: assume it is ours rather than delete a live run's files


def recover(out: Path) -> None:
    """Clean up after a run into OUT that was killed: drop its partial folder; put back an OUT it had moved aside
    (call it before checking OUT, so that a restored folder is refused like any non-empty OUT)."""
    if not out.parent.is_dir():
        return
    for entry in sorted(out.parent.iterdir()):
        match = LEFTOVER.match(entry.name)
        if not match or match["name"] != out.name or int(match["pid"]) == os.getpid():
            continue
        if _alive(int(match["pid"])):
            raise OutputError(f"{out}: another moemerge (pid {match['pid']}) is writing it; wait for it to finish")
        if match["kind"] == "old" and not out.exists():
            entry.rename(out)
            # it is the user's earlier output: the caller's non-empty-OUT check now protects it
            log.warning("%s: restored your earlier output, which an interrupted run had moved aside", out)
        else:
            shutil.rmtree(entry, ignore_errors=True)
            log.info("removed %s, left by an interrupted run", entry)


def check_space(out: Path, need: int) -> None:
    """Fail before any work when OUT's filesystem cannot hold the merge."""
    parent = out.resolve().parent
    while not parent.exists():
        parent = parent.parent
    free = shutil.disk_usage(parent).free
    if free < need + SPACE_MARGIN:
        raise OutputError(f"{parent}: {free / 1e9:.2f} GB free, the merge needs about {(need + SPACE_MARGIN) / 1e9:.2f}"
                          " GB; free some space or choose another output folder")  # fmt: skip


def fsync(path: Path) -> None:
    """Make a file or folder durable (a folder: its entries)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(tmp: Path, out: Path) -> None:
    """Make every file durable, then swap the folder into place. An existing OUT (--overwrite) is moved aside first
    and deleted last; a run killed between the two renames gets it back from recover()."""
    for file in tmp.iterdir():
        fsync(file)
    fsync(tmp)
    old = out.parent / f".{out.name}.moemerge-old-{os.getpid()}" if out.exists() else None
    try:
        if old is not None:
            out.rename(old)
        tmp.rename(out)
    except BaseException:  # Ctrl-C or SIGTERM between the renames: the user's folder goes back at once
        if old is not None and old.exists() and not out.exists():
            old.rename(out)
        raise
    fsync(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
