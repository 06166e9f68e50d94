"""`hidden` / `hidden_avg`: routers from the base model's residual stream on each expert's prompts.

Row for layer l = hidden_states[l] (the stream entering layer l) at each prompt's last real token (`hidden`) or
averaged over its real tokens (`hidden_avg`); mean over prompts, minus the mean over negatives, L2-normalised.
"""

from __future__ import annotations

import logging

from moemerge.errors import ConfigError, IncompatibleModelsError
from moemerge.forward.batching import chunks, left_padded, peak_tokens
from moemerge.forward.fit import activation_bytes, pass_tokens
from moemerge.forward.loading import free_memory, input_device, loaded_model

log = logging.getLogger(__name__)
FORWARD_MODES = ("hidden", "hidden_avg", "mlp_input", "mlp_input_avg")  # gate modes that run the base on prompts
HIDDEN_BUDGET_BYTES = 512 * 1024**2  # hidden states kept for one chunk of prompts


def check_inputs(config, base, load) -> list[str]:
    """What would stop the hidden-state pass, found before any work (`plan` runs this too): a --device without
    its GPU, and prompts that tokenise to nothing or run past the base's positions, each named by its place."""
    from moemerge.forward import tokenize
    from moemerge.forward.loading import check_device

    if not base.has_files:
        return []
    if config.gate_mode not in (*FORWARD_MODES, "cheap_embed"):
        return []
    try:  # the tokenizer must load (without a y/N prompt); from tokenizer.json, without transformers, where it can
        tokenizer = tokenize.load(base.path, trust_remote_code=load.trust_remote_code)
    except ConfigError as exc:
        return [str(exc)]
    if config.gate_mode == "cheap_embed":  # no forward pass
        return []
    try:
        check_device(load)
    except ConfigError as exc:
        return [str(exc)]
    limit = base.config.get("max_position_embeddings")
    problems = []
    for group, entries in (("experts", config.experts), ("shared_experts", config.shared_experts or [])):
        for i, expert in enumerate(entries):
            for key in ("positive_prompts", "negative_prompts"):
                for j, prompt in enumerate(getattr(expert, key) or []):
                    length = len(tokenizer.prompt_ids([prompt])[0])
                    where = f"{group}[{i}].{key}[{j}]"
                    if length == 0:
                        problems.append(f"{where}: tokenises to nothing and the tokenizer has no BOS token; drop it")
                    elif isinstance(limit, int) and length > limit:
                        problems.append(f"{where}: {length} tokens, more than the base model's "
                                        f"max_position_embeddings ({limit}); shorten it")  # fmt: skip
    return problems


def compute_last(context):
    return _compute(context, average=False)


def compute_mean(context):
    return _compute(context, average=True)


def _compute(context, *, average: bool):
    from moemerge.gates import prompt_items

    items = prompt_items(context)
    limit = context.base.config.get("max_position_embeddings")
    longest = max((len(ids) for _, ids in items), default=0)
    if isinstance(limit, int) and longest > limit:
        raise IncompatibleModelsError(f"a prompt is {longest} tokens long, more than the base model's "
                                      f"max_position_embeddings ({limit}); shorten it")  # fmt: skip
    sums, counts = _collect(context, items, average=average)
    free_memory()  # the model is gone before any weight is written
    means = sums / counts.clamp_min(1)[:, None, None]
    rows = means[0::2] - means[1::2]  # (E, L, H); an expert with no negatives subtracts zeros
    norms = rows.norm(dim=-1, keepdim=True)
    if (norms == 0).any():
        raise IncompatibleModelsError("some expert's positive and negative prompts cancel out to a zero router row")
    return (rows / norms).transpose(0, 1).float().contiguous()  # (L, E, H)


def _row(states, weights, average: bool):
    """(B, S, H) -> (B, H): each prompt's mean over real tokens, or its last token (last = real: left padding)."""
    states = states.float()
    if not average:
        return states[:, -1, :]
    weights = weights.to(states.device)  # with device_map=auto, layers (and their outputs) sit on several devices
    return (states * weights).sum(1) / weights.sum(1)


def _collect(context, items: list[tuple[int, list[int]]], *, average: bool):
    """Per slot: the sum over its prompts of the (layers, hidden) rows, and the prompt count."""
    import torch

    layers, hidden = context.num_layers, context.hidden_size
    sums = torch.zeros(2 * len(context.experts), layers, hidden, dtype=torch.float64)
    counts = torch.zeros(2 * len(context.experts), dtype=torch.float64)
    max_tokens = max(1, HIDDEN_BUDGET_BYTES // ((layers + 1) * hidden * 4))
    max_tokens = pass_tokens(context.base.path, context.load, max_tokens, logits=False, states=True)
    pad_id = context.tokenizer.pad_token_id or 0
    done = 0
    peak = activation_bytes(context.base.path, peak_tokens(items, max_tokens), logits=False, states=True)
    with (
        loaded_model(context.base.path, context.load, activations=peak, what="the hidden-state pass") as model,
        torch.inference_mode(),
    ):
        device = input_device(model)
        for chunk in chunks(items, max_tokens):
            inputs = left_padded(chunk, pad_id, device)
            out = model(**inputs, output_hidden_states=True, use_cache=False)
            weights = inputs["attention_mask"].to(torch.float32)[:, :, None]  # (B, S, 1)
            rows = torch.stack([_row(h, weights, average).cpu() for h in out.hidden_states[:layers]], dim=1)
            del out
            slots = torch.tensor([slot for slot, _ in chunk])
            sums.index_add_(0, slots, rows.double())
            counts.index_add_(0, slots, torch.ones(len(chunk), dtype=torch.float64))
            done += len(chunk)
            context.progress("prompts", done, len(items))
    return sums, counts
