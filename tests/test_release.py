"""Release readiness: `python -m build` makes an sdist and a wheel that `twine check` accepts, with the licence and
the one version; the wheel, installed (not editable) into a fresh venv, runs a tiny merge from outside the checkout."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import freshvenv
import pytest
import yaml

import moemerge

ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """The sdist and the wheel, built as a release builds them (without build isolation: no index needed)."""
    pytest.importorskip("build", reason="the release checks need the test extra's `build` and `twine`")
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def _one(dist: Path, pattern: str) -> Path:
    [found] = dist.glob(pattern)
    return found


def test_sdist_and_wheel_pass_twine_check(dist):
    files = [str(_one(dist, "*.whl")), str(_one(dist, "*.tar.gz"))]
    done = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", *files], capture_output=True,
                          text=True, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("PASSED") == 2


def test_one_version_and_the_licence_ship(dist):
    version = moemerge.__version__
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "moemerge.__version__"}
    wheel = _one(dist, f"moemerge-{version}-py3-none-any.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        metadata = z.read(f"moemerge-{version}.dist-info/METADATA").decode()
        licence = z.read(f"moemerge-{version}.dist-info/licenses/LICENSE").decode()
    assert f"\nVersion: {version}\n" in metadata and "\nLicense-Expression: Apache-2.0\n" in metadata
    assert "Apache License" in licence and "Version 2.0, January 2004" in licence
    assert licence == (ROOT / "LICENSE").read_text()
    assert not any(n.startswith(("tests/", "scripts/", "examples/")) for n in names)
    with tarfile.open(_one(dist, f"moemerge-{version}.tar.gz")) as t:
        assert f"moemerge-{version}/LICENSE" in t.getnames()


def test_the_wheel_merges_from_a_fresh_venv(dist, models, tmp_path):
    """A fresh venv holds the wheel, installed without --editable (its dependencies come from this environment, so
    that nothing is downloaded), and `moemerge CONFIG OUT` runs from it outside the checkout."""
    python = freshvenv.make(tmp_path)
    installed = freshvenv.run(sys.executable, ["-m", "pip", "--python", python, "install", "-q", "--no-deps",
                                               _one(dist, "*.whl")], cwd=tmp_path)  # fmt: skip
    assert installed.returncode == 0, installed.stderr
    where = freshvenv.run(python, ["-c", "import moemerge; print(moemerge.__file__)"], cwd=tmp_path).stdout.strip()
    assert Path(where).is_relative_to(tmp_path / "venv"), where
    base = models.base("llama")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"base_model": str(base), "gate_mode": "random",
                                      "experts": [{"source_model": str(models.expert(base, s))} for s in (1, 2)]}))  # fmt: skip
    done = freshvenv.run(python.parent / "moemerge", [config, tmp_path / "out", "-q"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "out" / "config.json").read_text())["num_local_experts"] == 2
    assert f"moemerge_version: {moemerge.__version__}" in (tmp_path / "out" / "moemerge.yml").read_text()
