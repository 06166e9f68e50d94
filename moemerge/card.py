"""What goes next to the weights besides tensors: config.json, moemerge.yml (resolved config) and the model card."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from moemerge import __version__


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def resolved_config(config: dict[str, Any], *, sources: list[dict[str, Any]]) -> dict[str, Any]:
    """The config as it was run (defaults filled in) plus the moemerge version and where each model came from."""
    return {"moemerge_version": __version__, **config, "sources": sources}


def write_resolved(folder: Path, resolved: dict[str, Any]) -> None:
    text = "# Written by moemerge: the config as it was run. Rerun with `moemerge moemerge.yml OUT`.\n"
    body = {k: v for k, v in resolved.items() if k not in ("moemerge_version", "sources")}
    text += yaml.safe_dump(body, sort_keys=False, allow_unicode=True)
    provenance = yaml.safe_dump(
        {"moemerge_version": resolved["moemerge_version"], "sources": resolved["sources"]}, sort_keys=False
    )
    # commented out so that the file stays a valid config for a rerun
    text += "\n# Provenance\n" + "".join(f"# {line}\n" for line in provenance.splitlines())
    (folder / "moemerge.yml").write_text(text)


def parameter_counts(
    shapes: dict[str, tuple[int, ...]], *, num_experts: int, experts_per_token: int
) -> tuple[int, int]:
    """(total, active per token): active counts experts_per_token routed experts instead of all of them."""

    def numel(shape: tuple[int, ...]) -> int:
        out = 1
        for dim in shape:
            out *= dim
        return out

    total = sum(numel(s) for s in shapes.values())
    expert = sum(numel(s) for n, s in shapes.items() if ".experts.0." in n)
    return total, total - (num_experts - experts_per_token) * expert


def model_card(
    resolved: dict[str, Any], *, arch_class: str, total: int, active: int, notes: tuple[str, ...] = ()
) -> str:
    """README.md with Hub front matter, the experts and their prompts, the config and a usage snippet."""
    models = [resolved["base_model"]] + [e["source_model"] for e in resolved["experts"]]
    front = {
        "base_model": list(dict.fromkeys(models)),
        "tags": ["moe", "frankenmoe", "merge", "moemerge"],
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
    }
    rows = "\n".join(
        f"| {i} | `{e['source_model']}` | {'; '.join(e.get('positive_prompts') or []) or '-'} |"
        for i, e in enumerate(resolved["experts"])
    )
    caveats = "".join(f"\n> **Note:** {note}.\n" for note in notes)
    config_yaml = yaml.safe_dump({k: v for k, v in resolved.items() if k != "sources"}, sort_keys=False)
    return f"""---
{yaml.safe_dump(front, sort_keys=False)}---

# frankenMoE built with moemerge

A Mixture-of-Experts model (`{arch_class}`) built by [moemerge](https://pypi.org/project/moemerge/) from
`{resolved["base_model"]}` (attention, norms and embeddings) and {len(resolved["experts"])} experts (their MLPs).
It has not been trained after merging; the routers were initialised with gate mode `{resolved["gate_mode"]}`.

- Parameters: {total:,} in total, {active:,} active per token ({resolved["experts_per_token"]} experts per token)
- dtype: {resolved["dtype"]}

| expert | source model | positive prompts |
|---|---|---|
{rows}
{caveats}
## Configuration

```yaml
{config_yaml}```

## Usage

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("path/or/repo")
model = AutoModelForCausalLM.from_pretrained("path/or/repo", dtype="auto", device_map="auto")
inputs = tokenizer("Hello, my name is", return_tensors="pt").to(model.device)
print(tokenizer.decode(model.generate(**inputs, max_new_tokens=32)[0]))
```
"""
