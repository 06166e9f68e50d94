"""Routing report: which experts a merged model's routers pick for each prompt set (routing.json, table, heatmap)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import yaml

from moemerge.config.schema import MAX_CONFIG_BYTES, MergeConfig, load_config, read_prompt_file, read_text_file
from moemerge.errors import ConfigError, MergeFailedError
from moemerge.forward.batching import chunks, left_padded, peak_tokens
from moemerge.forward.fit import activation_bytes, pass_tokens
from moemerge.forward.loading import LoadOptions, free_memory, input_device, load_tokenizer, loaded_model
from moemerge.publish import card, charts

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
    if not path.exists():
        raise ConfigError(f"--prompts: {path} not found")
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


def owner(set_name: str, experts: list[str]) -> int | None:
    """The expert a prompt set belongs to: the set is named like it (`1: code` or `code`), else None."""
    if set_name in experts:
        return experts.index(set_name)
    short = [e.partition(": ")[2] for e in experts]
    return short.index(set_name) if short.count(set_name) == 1 else None


def measure(model_dir: Path, prompt_sets: dict[str, list[str]], load: LoadOptions) -> dict[str, Any]:
    """Run the merged model on every prompt (batched, left-padded); count, per layer, how often each expert is among
    a real token's top-k picks."""
    import torch

    tokenizer = load_tokenizer(model_dir, load)
    bos = tokenizer.bos_token or ""
    names = list(prompt_sets)
    items = [(s, ids) for s, name in enumerate(names) for p in prompt_sets[name]
             if (ids := tokenizer(bos + p, add_special_tokens=False)["input_ids"])]  # fmt: skip
    counts: dict[int, Any] = {}
    per_pass = pass_tokens(model_dir, load, ROUTE_TOKENS, logits=True)
    peak = activation_bytes(model_dir, peak_tokens(items, per_pass), logits=True)
    with (
        loaded_model(model_dir, load, causal_lm=True, what="the routing pass", activations=peak) as model,
        torch.inference_mode(),
    ):
        top_k = int(getattr(model.config, "num_experts_per_tok", 1) or 1)
        for chunk in chunks(items, per_pass):
            inputs = left_padded(chunk, tokenizer.pad_token_id or 0, input_device(model))
            logits = getattr(model(**inputs, output_router_logits=True, use_cache=False), "router_logits", None)
            if not logits:
                raise MergeFailedError(f"{model_dir}: this model does not report router logits")
            real = inputs["attention_mask"].cpu().bool()  # (B, S)
            for row, (s, _) in enumerate(chunk):
                picks = torch.stack([layer.float().cpu().view(*real.shape, -1)[row][real[row]].topk(top_k).indices
                                     for layer in logits])  # (layers, tokens, k)  # fmt: skip
                # each token picks an expert at most once, so these are also counts of tokens that picked it
                hits = torch.nn.functional.one_hot(picks, logits[0].shape[-1]).sum(dim=(1, 2)).double()  # (L, E)
                counts[s] = counts[s] + hits if s in counts else hits
        num_experts, layers = logits[0].shape[-1], len(logits)
    free_memory()
    experts = expert_names(model_dir, num_experts)
    sets = [_set_figures(name, s, prompt_sets[name], counts[s], items, experts)
            for s, name in enumerate(names) if s in counts]  # fmt: skip
    return {"experts": experts, "experts_per_token": top_k, "layers": layers, "prompt_sets": sets}


def _set_figures(name, s, prompts, counts, items, experts) -> dict[str, Any]:
    """One prompt set's entry: pick shares per layer and, for a set that belongs to an expert, its hit rate (the
    share of the set's tokens whose top-k picks include that expert)."""
    per_layer = counts / counts.sum(-1, keepdim=True)  # (layers, experts), rows sum to 1
    tokens = sum(len(ids) for t, ids in items if t == s)
    own = owner(name, experts)
    hits = (counts[:, own] / tokens).tolist() if own is not None else None  # (layers,)
    return {"name": name, "prompts": len(prompts), "tokens": tokens, "share": per_layer.mean(0).tolist(),
            "per_layer": per_layer.tolist(), "expert": own, "hit_rate": sum(hits) / len(hits) if hits else None,
            "hit_rate_per_layer": hits}  # fmt: skip


def write_report(report: dict[str, Any], folder: Path) -> list[Path]:
    """routing.json and routing.png (shares per prompt set and expert; hit rate per layer)."""
    paths = [folder / REPORT_JSON, folder / REPORT_PNG]
    paths[0].write_text(json.dumps(report, indent=2) + "\n")
    charts.save(charts.routing_figure(report), paths[1])
    return paths


def format_table(report: dict[str, Any]) -> str:
    """The report as a plain-text table: one row per prompt set, one column per expert, then the set's hit rate."""
    experts = report["experts"]
    width = max([len(s["name"]) for s in report["prompt_sets"]] + [10])
    columns = [max(len(e), 6) for e in experts]
    hit_head = "own-expert hit"
    lines = [" " * width + "  " + "  ".join(e.rjust(w) for e, w in zip(experts, columns)) + "  " + hit_head]
    for s in report["prompt_sets"]:
        cells = [f"{v:.1%}".rjust(w) for v, w in zip(s["share"], columns)]
        hit = "-" if s["hit_rate"] is None else f"{s['hit_rate']:.1%}"
        lines.append(s["name"].ljust(width) + "  " + "  ".join(cells) + "  " + hit.rjust(len(hit_head)))
    k = report["experts_per_token"]
    lines.append(f"(share of each prompt set's top-{k} expert picks, averaged over {report['layers']} layers;")
    lines.append(f" own-expert hit: share of the set's tokens whose top-{k} picks include the set's own expert)")
    return "\n".join(lines)


def report(model_dir: Path, *, prompts: Path | None, load: LoadOptions) -> dict[str, Any]:
    """Measure routing on the config's prompts (OUT/moemerge.yml) or on `prompts`; writes the report into OUT and
    refreshes the routing section of OUT's model card when moemerge wrote one."""
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
    card.update_card(model_dir, "routing", card.routing_section(result))
    return result
