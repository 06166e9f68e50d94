"""The Colab notebook runs top to bottom outside Colab (tiny local models, push skipped) and every cell succeeds."""

from __future__ import annotations

from pathlib import Path

import nbformat
import yaml
from nbclient import NotebookClient

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
    form = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    # papermill-style: a cell after the form overrides its values
    nb.cells.insert(form + 1, nbformat.v4.new_code_cell(
        f"CONFIG_YAML = {yaml.safe_dump(config)!r}\nMODEL_NAME = 'Tiny-MoE'\nPUSH = False"))  # fmt: skip
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
