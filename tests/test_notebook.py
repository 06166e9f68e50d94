"""The Colab notebook runs top to bottom outside Colab (tiny local models, push skipped) and every cell succeeds."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import freshvenv
import nbformat
import pytest
import yaml
from nbclient import NotebookClient

import moemerge
from moemerge import tiny

NOTEBOOK = Path(__file__).parent.parent / "examples" / "moemerge_colab.ipynb"


def test_notebook_runs_top_to_bottom(tmp_path):
    tiny.main([str(tmp_path / "models")])
    prompts = {"chat": ["Hello! How are you today?", "Thank you, that was helpful."],
               "code": ["def add(a, b): return a + b", "import numpy as np"],
               "math": ["Solve for x: 2x + 3 = 7.", "What is 12 times 7?"]}  # fmt: skip
    config = {"base_model": str(tmp_path / "models" / "base"), "gate_mode": "hidden_avg", "dtype": "float32",
              "experts": [{"source_model": str(tmp_path / "models" / name), "positive_prompts": p}
                          for name, p in prompts.items()]}  # fmt: skip
    nb = nbformat.read(NOTEBOOK, as_version=4)
    _tagged(nb, "config").source = "%%writefile config.yaml\n" + yaml.safe_dump(config)  # the user's edit
    form = nb.cells.index(_tagged(nb, "parameters"))
    # papermill-style: a cell after the form overrides its values
    nb.cells.insert(form + 1, nbformat.v4.new_code_cell("MODEL_NAME = 'Tiny-MoE'\nPUSH = False"))
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "wrote Tiny-MoE (MixtralForCausalLM, 3 experts" in outputs
    assert "averaged over 4 layers" in outputs and "Tiny-MoE: verified" in outputs
    assert "push skipped" in outputs
    assert (tmp_path / "Tiny-MoE" / "routing.png").is_file()


def test_make_notebook_reproduces_the_committed_notebook(tmp_path):
    import subprocess
    import sys

    root = Path(__file__).parent.parent
    written = tmp_path / "notebook.ipynb"
    subprocess.run([sys.executable, str(root / "scripts" / "make_notebook.py"), str(written)], check=True, cwd=root)
    assert written.read_bytes() == NOTEBOOK.read_bytes()


def _tagged(nb, tag: str):
    return next(c for c in nb.cells if tag in c.metadata.get("tags", []))


def test_form_fields_are_single_line_assignments():
    """Colab shows `NAME = value  # @param` as a field only when the value is a one-line literal."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    fields = [line for c in nb.cells if c.cell_type == "code" for line in c.source.splitlines() if "# @param" in line]
    assert len(fields) >= 6
    for line in fields:
        name, _, value = line.split("# @param")[0].partition("=")
        assert name.strip().isidentifier(), line
        ast.literal_eval(value.strip())  # a literal on this one line, not the start of a triple-quoted string
    form = _tagged(nb, "parameters").source
    assert 'CONFIG_FILE = "config.yaml"' in form and _tagged(nb, "config").source.startswith("%%writefile config.yaml")


def _install_cell() -> str:
    return _tagged(nbformat.read(NOTEBOOK, as_version=4), "install").source


def _run_cell(python: Path, cwd: Path, source: str):
    return freshvenv.run(python, ["-c", source], cwd=cwd)


def test_install_cell_installs_an_uploaded_wheel_in_a_fresh_runtime(tmp_path):
    """Before the first release: the wheel `python -m build` makes, uploaded next to the notebook, is installed (not
    editable) with its extra, and the cell says where moemerge came from."""
    pytest.importorskip("build", reason="building the wheel needs the test extra's `build`")
    root = Path(__file__).parent.parent
    content = tmp_path / "content"
    built = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(content),
                            str(root)], capture_output=True, text=True, check=False)  # fmt: skip
    assert built.returncode == 0, built.stderr[-3000:]
    python = freshvenv.make(tmp_path)
    assert _run_cell(python, content, "import moemerge").returncode != 0  # a runtime without moemerge
    done = _run_cell(python, content, _install_cell())
    assert done.returncode == 0, done.stdout + done.stderr
    [wheel] = content.glob("moemerge-*.whl")
    assert f"installed moemerge from the uploaded wheel {wheel.name}" in done.stdout
    assert f"moemerge {moemerge.__version__}" in done.stdout
    where = _run_cell(python, tmp_path, "import moemerge; print(moemerge.__file__)").stdout.strip()
    assert Path(where).is_relative_to(tmp_path / "venv"), where


def test_install_cell_without_a_release_or_a_wheel_says_what_to_do(tmp_path):
    python = freshvenv.make(tmp_path)
    done = _run_cell(python, tmp_path, _install_cell())
    assert done.returncode != 0
    assert f"moemerge {moemerge.__version__} is not on PyPI (yet): upload its wheel" in done.stderr
    assert "set MOEMERGE_GIT to the repository's git URL" in done.stderr


def test_install_cell_asks_pypi_for_this_release():
    assert f'MOEMERGE_VERSION = "{moemerge.__version__}"' in _install_cell()
