"""Routing report: which experts a merged model's routers pick for each prompt set (routing.json, table, heatmap)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import yaml

from moemerge.batching import chunks, left_padded
from moemerge.config import MAX_CONFIG_BYTES, MergeConfig, load_config, read_prompt_file, read_text_file
from moemerge.errors import ConfigError, MergeFailedError
from moemerge.loading import LoadOptions, free_memory, input_device, loaded_model

log = logging.getLogger(__name__)
REPORT_JSON = "routing.json"
REPORT_PNG = "routing.png"


def prompt_sets_from_config(config: MergeConfig) -> dict[str, list[str]]:
    """One set per expert with positive prompts, named `index: model`, in expert order."""
    return {f"{i}: {_short(e.source_model)}": list(e.positive_prompts)
            for i, e in enumerate(config.experts) if e.positive_prompts}  # fmt: skip


def read_prompt_sets(path: Path) -> dict[str, list[str]]:
    """Prompt sets from `--prompts FILE`: a .txt file (one set, one prompt per line), a YAML mapping
    `{name: [prompts]}`, or a moemerge/mergekit config (one set per expert)."""
    if path.suffix.lower() not in (".yaml", ".yml", ".json"):
        return {path.stem: read_prompt_file(path)}
    try:
        data = yaml.safe_load(read_text_file(path, MAX_CONFIG_BYTES, "prompt sets file"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the prompt sets ({exc.__class__.__name__})") from None
    if isinstance(data, dict) and "experts" in data:
        return prompt_sets_from_config(load_config(path))
    if (
        not isinstance(data, dict)
        or not data
        or not all(isinstance(v, list) and v and all(isinstance(p, str) for p in v) for v in data.values())
    ):
        raise ConfigError(f"{path}: expected a mapping of set name -> list of prompts, or a merge config")
    return {str(k): list(v) for k, v in data.items()}


def _short(ref: str) -> str:
    return ref.rstrip("/").split("/")[-1] or ref


def expert_names(model_dir: Path, num_experts: int) -> list[str]:
    """Experts named from the resolved config in OUT when present, else by index."""
    resolved = model_dir / "moemerge.yml"
    try:
        experts = yaml.safe_load(resolved.read_text())["experts"]
        names = [f"{i}: {_short(e['source_model'])}" for i, e in enumerate(experts)]
        if len(names) == num_experts:
            return names
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        pass
    return [str(i) for i in range(num_experts)]


ROUTE_TOKENS = 4096  # tokens per forward pass: bounds activations and attention memory


def measure(model_dir: Path, prompt_sets: dict[str, list[str]], load: LoadOptions) -> dict[str, Any]:
    """Run the merged model on every prompt (batched, left-padded); count, per layer, how often each expert is among
    a real token's top-k picks."""
    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    bos = tokenizer.bos_token or ""
    names = list(prompt_sets)
    items = [(s, ids) for s, name in enumerate(names) for p in prompt_sets[name]
             if (ids := tokenizer(bos + p, add_special_tokens=False)["input_ids"])]  # fmt: skip
    counts: dict[int, Any] = {}
    with loaded_model(model_dir, load, causal_lm=True) as model, torch.inference_mode():
        top_k = int(getattr(model.config, "num_experts_per_tok", 1) or 1)
        for chunk in chunks(items, ROUTE_TOKENS):
            inputs = left_padded(chunk, tokenizer.pad_token_id or 0, input_device(model))
            logits = getattr(model(**inputs, output_router_logits=True, use_cache=False), "router_logits", None)
            if not logits:
                raise MergeFailedError(f"{model_dir}: this model does not report router logits")
            real = inputs["attention_mask"].cpu().bool()  # (B, S)
            for row, (s, _) in enumerate(chunk):
                picks = torch.stack([layer.float().cpu().view(*real.shape, -1)[row][real[row]].topk(top_k).indices
                                     for layer in logits])  # (layers, tokens, k)  # fmt: skip
                hits = torch.nn.functional.one_hot(picks, logits[0].shape[-1]).sum(dim=(1, 2)).double()  # (L, E)
                counts[s] = counts[s] + hits if s in counts else hits
        num_experts, layers = logits[0].shape[-1], len(logits)
    free_memory()
    sets = []
    for s, name in enumerate(names):
        if s not in counts:
            continue
        per_layer = counts[s] / counts[s].sum(-1, keepdim=True)  # (layers, experts), rows sum to 1
        tokens = sum(len(ids) for t, ids in items if t == s)
        sets.append({"name": name, "prompts": len(prompt_sets[name]), "tokens": tokens,
                     "share": per_layer.mean(0).tolist(), "per_layer": per_layer.tolist()})  # fmt: skip
    return {"experts": expert_names(model_dir, num_experts), "experts_per_token": top_k, "layers": layers,
            "prompt_sets": sets}  # fmt: skip


def write_report(report: dict[str, Any], folder: Path) -> list[Path]:
    """routing.json and the routing.png heatmap (prompt set x expert, share of picks averaged over layers)."""
    paths = [folder / REPORT_JSON, folder / REPORT_PNG]
    paths[0].write_text(json.dumps(report, indent=2) + "\n")
    _heatmap(report, paths[1])
    return paths


def _heatmap(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets, experts = report["prompt_sets"], report["experts"]
    values = [s["share"] for s in sets]
    fig, ax = plt.subplots(figsize=(1.6 + 1.1 * len(experts), 1.2 + 0.5 * len(sets)), dpi=100)
    image = ax.imshow(values, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(experts)), labels=experts, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(sets)), labels=[s["name"] for s in sets], fontsize=8)
    for r, row in enumerate(values):
        for c, value in enumerate(row):
            ax.text(c, r, f"{value:.2f}", ha="center", va="center", color="white" if value < 0.6 else "black")
    ax.set_xlabel("expert picked (share of top-k picks, mean over layers)")
    ax.set_ylabel("prompt set")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def format_table(report: dict[str, Any]) -> str:
    """The report as a plain-text table: one row per prompt set, one column per expert."""
    experts = report["experts"]
    width = max([len(s["name"]) for s in report["prompt_sets"]] + [10])
    columns = [max(len(e), 6) for e in experts]
    lines = [" " * width + "  " + "  ".join(e.rjust(w) for e, w in zip(experts, columns))]
    for s in report["prompt_sets"]:
        cells = [f"{v:.1%}".rjust(w) for v, w in zip(s["share"], columns)]
        lines.append(s["name"].ljust(width) + "  " + "  ".join(cells))
    k = report["experts_per_token"]
    lines.append(f"(share of each prompt set's top-{k} expert picks, averaged over {report['layers']} layers)")
    return "\n".join(lines)


def report(model_dir: Path, *, prompts: Path | None, load: LoadOptions) -> dict[str, Any]:
    """Measure routing on the config's prompts (OUT/moemerge.yml) or on `prompts`; writes the report into OUT."""
    if not (model_dir / "config.json").is_file():
        raise ConfigError(f"{model_dir}: not a merged model (no config.json)")
    if prompts is not None:
        sets = read_prompt_sets(prompts)
    elif (model_dir / "moemerge.yml").is_file():
        sets = prompt_sets_from_config(load_config(model_dir / "moemerge.yml"))
    else:
        raise ConfigError(f"{model_dir}: no moemerge.yml with the experts' prompts; pass --prompts FILE")
    if not sets:
        raise ConfigError(f"{model_dir}: the experts have no positive_prompts to route; pass --prompts FILE")
    result = measure(model_dir, sets, load)
    write_report(result, model_dir)
    return result
