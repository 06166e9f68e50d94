"""A fresh venv without moemerge, as a new machine or a Colab runtime has: the packages moemerge depends on come from
this environment through a folder of links (never moemerge itself or its editable finder), so that nothing is
downloaded and only a wheel installed into the venv can provide moemerge."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

OURS = ("moemerge", "__editable__", "__editable___moemerge")


def make(root: Path) -> Path:
    """The venv's python."""
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    deps = root / "deps"
    deps.mkdir()
    for entry in Path(sysconfig.get_path("purelib")).iterdir():
        if not entry.name.startswith(OURS) and entry.suffix != ".pth":
            (deps / entry.name).symlink_to(entry)
    site = subprocess.check_output([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], text=True)
    (Path(site.strip()) / "deps.pth").write_text(f"{deps}\n")
    return python


def run(python: Path, args: list, *, cwd: Path) -> subprocess.CompletedProcess:
    """`python ARGS` (or a console script of the venv) with no index to download from."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PIP_NO_INDEX="1", PIP_FIND_LINKS="", PIP_DISABLE_PIP_VERSION_CHECK="1")
    return subprocess.run([str(a) for a in [python, *args]], cwd=cwd, env=env, capture_output=True, text=True,
                          check=False)  # fmt: skip
