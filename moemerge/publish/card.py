"""What goes next to the weights besides tensors: config.json, moemerge.yml (resolved config) and the model card."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from moemerge import __version__


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def resolved_config(config: dict[str, Any], *, sources: list[dict[str, Any]]) -> dict[str, Any]:
    """The config as it was run (defaults filled in) plus the moemerge version and where each model came from."""
    return {"moemerge_version": __version__, **config, "sources": sources}


def resolved_yaml(resolved: dict[str, Any]) -> str:
    """moemerge.yml's text: a valid config for a rerun, then the provenance (version, sources) as comments."""
    text = "# Written by moemerge: the config as it was run. Rerun with `moemerge moemerge.yml OUT`.\n"
    body = {k: v for k, v in resolved.items() if k not in ("moemerge_version", "sources")}
    text += yaml.safe_dump(body, sort_keys=False, allow_unicode=True)
    provenance = yaml.safe_dump(
        {"moemerge_version": resolved["moemerge_version"], "sources": resolved["sources"]},
        sort_keys=False,
        allow_unicode=True,
    )
    # commented out so that the file stays a valid config for a rerun
    return text + "\n# Provenance\n" + "".join(f"# {line}\n" for line in provenance.splitlines())


def write_resolved(folder: Path, resolved: dict[str, Any]) -> None:
    (folder / "moemerge.yml").write_text(resolved_yaml(resolved), encoding="utf-8")


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


def source_license(folder: Path, config: dict[str, Any]) -> str | None:
    """The license a model declares: its README.md front matter (as the Hub reads it), else its config.json."""
    from huggingface_hub import ModelCard

    readme = folder / "README.md"
    if readme.is_file():
        try:
            license = ModelCard.load(readme).data.license
        except Exception:  # noqa: BLE001 -- a malformed card of someone else's model is no reason to fail
            license = None
        if isinstance(license, str) and license:
            return license
    declared = config.get("license")
    return declared if isinstance(declared, str) and declared else None


def _cell(prompts: list[str] | None, limit: int = 8) -> str:
    """Prompts as one Markdown table cell: pipes escaped, newlines flattened, long lists cut."""
    if not prompts:
        return "-"
    shown = [" ".join(p.split()).replace("|", "\\|") for p in prompts[:limit]]
    more = f"; ... ({len(prompts) - limit} more)" if len(prompts) > limit else ""
    return "; ".join(shown) + more


SECTION = "<!-- moemerge:{name} -->\n{body}<!-- /moemerge:{name} -->\n"


def _escape(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _stale(report: dict[str, Any]) -> str:
    """The warning a report's section opens with once the routers it measured have been trained (`stale` is set by
    moemerge tune; the verb that wrote the report rewrites it without)."""
    if not report.get("stale"):
        return ""
    return f"**Out of date:** {report.get('stale_reason', 'made before the routers were trained')}.\n\n"


def routing_section(report: dict[str, Any] | None) -> str:
    """The routing report as a card section: shares per prompt set and expert, and each set's own-expert hit rate."""
    if not report:
        return ""
    k = report["experts_per_token"]
    head = "| prompt set | " + " | ".join(f"`{_escape(e)}`" for e in report["experts"]) + " | own-expert hit |"
    rule = "|---" * (len(report["experts"]) + 2) + "|"
    rows = [f"| {_escape(s['name'])} | " + " | ".join(f"{v:.1%}" for v in s["share"])
            + f" | {'-' if s.get('hit_rate') is None else format(s['hit_rate'], '.1%')} |"
            for s in report["prompt_sets"]]  # fmt: skip
    body = (f"\n## Routing\n\n{_stale(report)}Share of each prompt set's top-{k} expert picks, averaged over "
            f"{report['layers']} layers (from `moemerge route`; `routing.json` has the per-layer figures). Own-expert hit: the share of a set's "
            f"tokens whose top-{k} picks include the expert the set belongs to.\n\n"
            + "\n".join([head, rule, *rows]) + "\n\n![routing heatmap](routing.png)\n")  # fmt: skip
    return SECTION.format(name="routing", body=body)


def eval_section(result: dict[str, Any]) -> str:
    """`moemerge eval` as a card section: mean next-token loss (perplexity) per dataset and model, best in bold."""
    names = [m["name"] for m in result["models"]]
    head = "| dataset | tokens | " + " | ".join(f"`{_escape(n)}`" for n in names) + " |"
    rule = "|---" * (len(names) + 2) + "|"
    rows = []
    for d in result["datasets"]:
        cells = []
        for n in names:
            ppl = d["perplexity"][n]
            cell = f"{d['loss'][n]:.3f} ({'inf' if ppl is None else format(ppl, '.2f')})"
            cells.append(f"**{cell}**" if d["best"] == n and len(names) > 1 else cell)
        rows.append(f"| {_escape(d['name'])} | {d['tokens']:,} | " + " | ".join(cells) + " |")
    body = (f"\n## Evaluation\n\n{_stale(result)}Mean next-token loss (perplexity) per dataset, from `moemerge eval` "
            f"(windows of {result['window']} tokens, this model's tokenizer for all; lower is better"
            + (", best in bold" if len(names) > 1 else "") + "; `eval.json` has the figures).\n\n"
            + "\n".join([head, rule, *rows]) + "\n\n![eval chart](eval.png)\n")  # fmt: skip
    return SECTION.format(name="eval", body=body)


def update_card(folder: Path, name: str, section: str) -> bool:
    """Put `section` into the model card moemerge wrote in `folder`, replacing that section if it is there (so a
    rerun never duplicates it), else before `## Usage`. A README.md that moemerge did not write is left alone."""
    path = folder / "README.md"
    if not path.is_file():
        return False
    text = path.read_text(encoding="utf-8")
    front = text.split("\n---\n", 1)[0] if text.startswith("---\n") else ""
    if "- moemerge" not in front.splitlines():
        return False
    start, end = f"<!-- moemerge:{name} -->\n", f"<!-- /moemerge:{name} -->\n"
    if start in text and end in text.split(start, 1)[1]:
        before, rest = text.split(start, 1)
        text = before + section + rest.split(end, 1)[1]
    elif "\n## Usage\n" in text:
        before, rest = text.split("\n## Usage\n", 1)
        text = before + section + "\n## Usage\n" + rest
    else:
        text = text.rstrip("\n") + "\n" + section
    temp = folder / ".README.md.moemerge-tmp"  # replaced in one step: a kill never leaves half a card
    temp.write_text(text, encoding="utf-8")
    os.replace(temp, path)
    return True


def ranks(values: list[int]) -> str:
    """[4] -> `rank 4`; [2, 8] -> `rank 2-8` (rank_pattern gives modules ranks of their own)."""
    return f"rank {values[0]}" if len(values) == 1 else f"rank {values[0]}-{values[-1]}"


def _lora_section(sources: list[dict[str, Any]]) -> str:
    loras = [s for s in sources if s.get("lora_on")]
    if not loras:
        return ""
    lines = [f"- `{s['model']}` on `{s['lora_on']}`: {ranks(s['ranks'])}; {', '.join(s['targets'])}" for s in loras]
    return ("\nLoRA experts: each adapter's `W + scale * (B @ A)` on its model's MLP weights (its other deltas are not "
            "used):\n\n" + "\n".join(lines) + "\n")  # fmt: skip


def model_card(
    resolved: dict[str, Any],
    *,
    name: str,
    arch_class: str,
    total: int,
    active: int,
    hub_models: list[str],
    license: str | None = None,
    notes: tuple[str, ...] = (),
    routing: dict[str, Any] | None = None,
) -> str:
    """README.md: Hub front matter (huggingface_hub's ModelCardData), what the model is, its experts and prompts,
    sizes, the config, usage (also in 4-bit) and the routing report when there is one."""
    from huggingface_hub import ModelCard, ModelCardData

    data = ModelCardData(
        base_model=hub_models or None,  # the Hub only accepts repo ids here; local folders are listed below
        tags=["moe", "frankenmoe", "merge", "moemerge"],
        library_name="transformers",
        pipeline_tag="text-generation",
        license=license,
    )
    experts = resolved["experts"]
    rows = "\n".join(
        f"| {i} | `{e['source_model']}` | {_cell(e.get('positive_prompts'))} | {_cell(e.get('negative_prompts'))} |"
        for i, e in enumerate(experts)
    )
    shared = "".join(
        f"\nShared expert (always active): `{e['source_model']}`.\n" for e in resolved.get("shared_experts") or []
    )
    caveats = "".join(f"\n> **Note:** {note}.\n" for note in notes) + _lora_section(resolved.get("sources") or [])
    license_line = license or "not set: the base model's license applies; pass `--license` to state it"
    config_yaml = resolved_yaml(resolved)  # exactly moemerge.yml: the block reruns as it is
    counted = f"{len(experts)} expert" + ("" if len(experts) == 1 else "s")
    remote = ", trust_remote_code=True" if arch_class == "DeepseekForCausalLM" else ""  # no class in transformers
    body = f"""
# {name}

A Mixture-of-Experts model (`{arch_class}`) built with moemerge from
`{resolved["base_model"]}` (attention, norms and embeddings) and {counted} (one per fine-tune: its MLP
layers). It has not been trained after merging; each layer's router was initialised with gate mode
`{resolved["gate_mode"]}` from the prompts below.

- Architecture: `{arch_class}`, {counted}, {resolved["experts_per_token"]} active per token
- Parameters: {total:,} in total, {active:,} active per token
- dtype: `{resolved["dtype"]}`
- License: {license_line}

| expert | source model | positive prompts | negative prompts |
|---|---|---|---|
{rows}
{shared}{caveats}{routing_section(routing)}
## Usage

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

repo = "your-name/{name}"  # or the local folder
tokenizer = AutoTokenizer.from_pretrained(repo{remote})
model = AutoModelForCausalLM.from_pretrained(repo, dtype="auto", device_map="auto"{remote})
inputs = tokenizer("Hello, my name is", return_tensors="pt").to(model.device)
print(tokenizer.decode(model.generate(**inputs, max_new_tokens=32)[0], skip_special_tokens=True))
```

In 4-bit on a small GPU (`pip install bitsandbytes`):

```python
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

model = AutoModelForCausalLM.from_pretrained(
    repo, device_map="auto", quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype="bfloat16"){remote}
)
```

## Configuration

This is `moemerge.yml` (in this repo); rerun it with `moemerge moemerge.yml OUT`:

```yaml
{config_yaml}```
"""
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n{body}"))
