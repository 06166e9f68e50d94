"""Routing of one text, token by token: each token's top-1 expert in every layer and the majority over layers (the
page's coloured tokens and `moemerge route --text`)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from moemerge.errors import ConfigError, MergeFailedError
from moemerge.forward.loading import LoadOptions, free_memory, input_device, load_tokenizer, loaded_model
from moemerge.forward.routing import expert_names


def _pieces(tokenizer, text: str) -> tuple[list[int], list[str]]:
    """The text's token ids and the exact piece of the text each covers (offsets from a fast tokenizer, else each
    token decoded on its own)."""
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return enc["input_ids"], [text[a:b] for a, b in enc["offset_mapping"]]
    except (NotImplementedError, ValueError, TypeError):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids, [tokenizer.decode([i]) for i in ids]


def token_routes(model, tokenizer, text: str, experts: list[str]) -> dict[str, Any]:
    """Run a loaded MoE on BOS + `text` (as the routing report feeds prompts); per text token, its top-1 expert in
    each layer and the majority over layers (ties: the lower index)."""
    import torch

    if not text.strip():
        raise ConfigError("--text: give some text to route")
    ids, pieces = _pieces(tokenizer, text)
    lead = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    with torch.inference_mode():
        out = model(torch.tensor([lead + ids], device=input_device(model)), output_router_logits=True, use_cache=False)
    logits = getattr(out, "router_logits", None)
    if not logits:
        raise MergeFailedError("this model does not report router logits")
    seq = len(lead) + len(ids)
    top1 = [layer.float().cpu().view(seq, -1)[len(lead) :].argmax(-1).tolist() for layer in logits]  # (layers, tokens)
    majority = [min(Counter(col).most_common(), key=lambda c: (-c[1], c[0]))[0] for col in zip(*top1)]
    return {"tokens": pieces, "experts": experts, "layers": len(top1), "top1": top1, "majority": majority}


def route_text(folder: Path, text: str, load: LoadOptions) -> dict[str, Any]:
    """token_routes() for the merged model in `folder`, loaded for this call."""
    if not (folder / "config.json").is_file():
        raise ConfigError(f"{folder}: not a merged model (no config.json)")
    tokenizer = load_tokenizer(folder, load)
    with loaded_model(folder, load, causal_lm=True) as model:
        experts = expert_names(folder, int(num_experts(model.config)))
        result = token_routes(model, tokenizer, text, experts)
    free_memory()
    return result


def num_experts(config) -> int:
    for key in ("num_local_experts", "num_experts", "n_routed_experts"):
        if getattr(config, key, None):
            return getattr(config, key)
    raise MergeFailedError("config.json names no number of experts")
