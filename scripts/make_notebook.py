"""Regenerate examples/moemerge_colab.ipynb (run from the repo root): the notebook is built here so it diffs well,
and the same script always writes the same bytes (tests/test_notebook.py checks the committed file)."""

import sys

import nbformat as nbf

from moemerge import __version__  # the release the install cell asks PyPI for

nb = nbf.v4.new_notebook()
cells = []
cells.append(
    nbf.v4.new_markdown_cell("""# moemerge: build a frankenMoE in Colab

Merge a base model and fine-tunes of the same family (Llama, Mistral, Qwen2/2.5, Qwen3) into one Mixture-of-Experts
checkpoint (Mixtral, Qwen2-MoE, Qwen3-MoE or DeepSeek-MoE layout), see which experts its routers pick, and publish it
to the Hugging Face Hub with a model card.

1. Run the install cell. Until moemerge has a release on PyPI, first upload its wheel (`python -m build` in a
   checkout makes `dist/moemerge-<version>-py3-none-any.whl`) to the Files pane on the left, or set `MOEMERGE_GIT`
   to the repository's git URL; once released, the cell installs it from PyPI.
2. Edit the config cell (mergekit-moe configs work unchanged), or upload a config file and name it in the form;
   set the model name in the form.
3. Run the rest. On a GPU runtime the hidden-state pass runs on the GPU (in 4-bit on small GPUs); on CPU it runs in
   float32. To push, add your Hugging Face token as a Colab secret named `HF_TOKEN` (key icon on the left) and tick
   `PUSH`.""")
)
INSTALL = """# Install moemerge (skipped when it is already installed), from the first of:
# 1. a wheel uploaded to the Files pane (moemerge-*.whl): the way before moemerge's first release on PyPI;
# 2. the release MOEMERGE_VERSION on PyPI;
# 3. the git repository MOEMERGE_GIT (e.g. git+https://github.com/OWNER/moemerge), when it is set.
import glob
import importlib.util
import subprocess
import sys

MOEMERGE_VERSION = "@VERSION@"  # @param {type:"string"}
MOEMERGE_GIT = ""  # @param {type:"string"}


def pip_install(requirement, quiet=False):
    command = [sys.executable, "-m", "pip", "install", "-q", requirement]
    return subprocess.run(command, capture_output=quiet, check=False).returncode == 0


if importlib.util.find_spec("moemerge") is None:
    wheels = sorted(set(glob.glob("moemerge-*.whl") + glob.glob("/content/moemerge-*.whl")))
    if wheels:
        source, ok = f"the uploaded wheel {wheels[-1]}", pip_install(f"{wheels[-1]}[quant]")
    elif pip_install(f"moemerge[quant]=={MOEMERGE_VERSION}", quiet=True):
        source, ok = f"PyPI (moemerge {MOEMERGE_VERSION})", True
    elif MOEMERGE_GIT:
        source, ok = MOEMERGE_GIT, pip_install(f"moemerge[quant] @ {MOEMERGE_GIT}")
    else:
        raise RuntimeError(
            f"moemerge {MOEMERGE_VERSION} is not on PyPI (yet): upload its wheel (moemerge-*.whl) to the Files pane, "
            "or set MOEMERGE_GIT to the repository's git URL, then run this cell again"
        )
    if not ok:
        raise RuntimeError(f"pip could not install moemerge from {source}: see its message above")
    print("installed moemerge from", source)
import moemerge

print("moemerge", moemerge.__version__)"""
install = nbf.v4.new_code_cell(INSTALL.replace("@VERSION@", __version__))
install.metadata["tags"] = ["install"]
cells.append(install)
# Colab form fields are single-line assignments (a multi-line string shows as no field at all), so the config is a
# cell of its own, written to a file; the form names that file (tests/test_notebook.py checks both)
config = nbf.v4.new_code_cell('''%%writefile config.yaml
base_model: Qwen/Qwen2.5-0.5B
gate_mode: hidden
dtype: bfloat16
experts_per_token: 2
experts:
  - source_model: Qwen/Qwen2.5-0.5B-Instruct
    positive_prompts:
      - "Hi! Can you help me plan a trip to Lisbon?"
      - "Write a friendly email to my landlord about the heating."
  - source_model: Qwen/Qwen2.5-Coder-0.5B-Instruct
    positive_prompts:
      - "Write a Python function that reverses a linked list."
      - "Fix the bug in this JavaScript code:"''')
config.metadata["tags"] = ["config"]
cells.append(config)
form = nbf.v4.new_code_cell("""# @title Config file and model name { display-mode: "form" }
CONFIG_FILE = "config.yaml"  # @param {type:"string"}
MODEL_NAME = "Qwen2.5-2x0.5B-MoE"  # @param {type:"string"}
HF_USERNAME = "your-name"  # @param {type:"string"}
PUSH = False  # @param {type:"boolean"}
PRIVATE = True  # @param {type:"boolean"}""")
form.metadata["tags"] = ["parameters"]
cells.append(form)
cells.append(
    nbf.v4.new_code_cell("""# Plan (a dry run: checks everything from config.json files and headers, downloads no weights), then merge
from pathlib import Path

import torch

device = []  # CPU runtime: float32 hidden-state pass
if torch.cuda.is_available():
    device = ["--device", "cuda"]
    if torch.cuda.get_device_properties(0).total_memory < 24 * 2**30:  # T4 and friends: 4-bit hidden-state pass
        device += ["--load-in-4bit"]
print("device flags:", " ".join(device) or "(none: CPU)")


def moemerge_cli(*args):
    result = subprocess.run(
        [sys.executable, "-m", "moemerge", *map(str, args)], capture_output=True, text=True, check=False
    )
    print(result.stdout + result.stderr)
    if result.returncode != 0:
        raise RuntimeError(f"moemerge exited with {result.returncode}: see the message above")


moemerge_cli("plan", CONFIG_FILE, *device)
moemerge_cli(CONFIG_FILE, MODEL_NAME, *device, "--routing-report", "--overwrite")""")
)
cells.append(
    nbf.v4.new_code_cell("""# Routing report: which experts the merged model's routers pick for each expert's prompts
import json

from IPython.display import Image, display

from moemerge.forward.routing import format_table

report = Path(MODEL_NAME) / "routing.json"
if report.is_file():
    print(format_table(json.loads(report.read_text())))
    display(Image(filename=str(Path(MODEL_NAME) / "routing.png")))
else:
    print("no routing report (see the merge output above)")""")
)
cells.append(
    nbf.v4.new_code_cell("""# Check what was written: shards, index, tensor census, a load and a short generation
moemerge_cli("verify", MODEL_NAME)""")
)
cells.append(
    nbf.v4.new_code_cell("""# Push to the Hub (tick PUSH in the form; the token comes from the Colab secret HF_TOKEN and is never printed)
import os

if PUSH:
    try:
        from google.colab import userdata  # only in Colab

        os.environ["HF_TOKEN"] = userdata.get("HF_TOKEN")
    except ImportError:
        pass  # elsewhere: HF_TOKEN in the environment or `hf auth login`
    moemerge_cli("push", MODEL_NAME, f"{HF_USERNAME}/{MODEL_NAME}", *(["--private"] if PRIVATE else []))
else:
    print("push skipped: tick PUSH in the form to upload")""")
)
cells.append(
    nbf.v4.new_code_cell("""# @title The web page (optional): build, inspect, tune and publish from a page inside this cell
WEB_PAGE = False  # @param {type:"boolean"}

if WEB_PAGE:
    import importlib.util

    if importlib.util.find_spec("gradio") is None:
        pip_install("gradio")
    from moemerge.ui.app import launch

    launch(share=True, block=False, inline=True)  # Colab shows the page here; share=True for its proxy
else:
    print("web page skipped: tick WEB_PAGE to open it in this cell")""")
)
for number, cell in enumerate(cells):
    cell.id = f"cell-{number:02d}"  # stable ids: the script reproduces the committed notebook byte for byte
nb.cells = cells
nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
nb.metadata["language_info"] = {"name": "python"}
nb.metadata["colab"] = {"provenance": []}
nbf.write(nb, sys.argv[1] if len(sys.argv) > 1 else "examples/moemerge_colab.ipynb")
