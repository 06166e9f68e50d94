"""The real-model cache folder and crash-safe builds into it: build in a temporary sibling, write a marker, rename."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

MARKER = ".moemerge-complete"  # written last, holds the recipe the folder was built with


def cache_root(override: str | Path | None = None) -> Path:
    """`override`, else $MOEMERGE_CACHE, else $XDG_CACHE_HOME/moemerge, else ~/.cache/moemerge."""
    if override:
        return Path(override).expanduser()
    if os.environ.get("MOEMERGE_CACHE"):
        return Path(os.environ["MOEMERGE_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "moemerge"


def progress(message: str) -> None:
    """One progress line on stderr (stdout is left for results)."""
    print(f"moemerge.real: {message}", file=sys.stderr, flush=True)


def is_built(folder: Path, recipe: dict) -> bool:
    """True when `folder` holds a finished build of exactly this recipe."""
    try:
        return json.loads((folder / MARKER).read_text()) == recipe
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """One builder at a time per cache (two test sessions may start together)."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def built(folder: Path, recipe: dict, build: Callable[[Path], None], what: str) -> Path:
    """`folder`, built by `build(tmp)` unless it already holds this recipe. The build writes into a temporary
    sibling; the marker is written last and the folder renamed into place, so a killed build never looks complete."""
    if is_built(folder, recipe):
        return folder
    with _locked(folder.parent):
        if is_built(folder, recipe):  # another process finished it while we waited
            return folder
        tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        start = time.perf_counter()
        try:
            build(tmp)
            (tmp / MARKER).write_text(json.dumps(recipe, sort_keys=True))
            if folder.exists():
                shutil.rmtree(folder)  # an older recipe or an unfinished folder
            tmp.rename(folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        progress(f"{what} built in {time.perf_counter() - start:.0f} s: {folder}")
    return folder
