"""`mlp_input` / `mlp_input_avg`: routers from what a router actually multiplies, each layer's MLP input (the stream
after attention and `post_attention_layernorm`), read with forward hooks on the base model's MLPs.

Row for layer l = that input at each prompt's last real token (`mlp_input`) or averaged over its real tokens
(`mlp_input_avg`); mean over prompts, minus the mean over negatives, L2-normalised (as `hidden` does).
"""

from __future__ import annotations

import re

from moemerge.errors import IncompatibleModelsError
from moemerge.forward.batching import chunks, left_padded, peak_tokens
from moemerge.forward.fit import activation_bytes, pass_tokens
from moemerge.forward.loading import free_memory, input_device, loaded_model
from moemerge.gates.hidden import _row

PASS_TOKENS = 4096  # tokens per forward pass: the rows are reduced inside the hooks, so only activations count
MLP = re.compile(r"(?:.*\.)?layers\.(\d+)\.mlp")


def compute_last(context):
    return _compute(context, average=False)


def compute_mean(context):
    return _compute(context, average=True)


def _compute(context, *, average: bool):
    from moemerge.gates import prompt_items

    items = prompt_items(context)  # slot 2e = expert e's positive prompts, 2e+1 = its negatives
    sums, counts = _collect(context, items, average=average)
    free_memory()
    means = sums / counts.clamp_min(1)[:, None, None]
    rows = means[0::2] - means[1::2]  # (E, L, H)
    norms = rows.norm(dim=-1, keepdim=True)
    if (norms == 0).any():
        raise IncompatibleModelsError("some expert's positive and negative prompts cancel out to a zero router row")
    return (rows / norms).transpose(0, 1).float().contiguous()  # (L, E, H)


def mlp_modules(model, layers: int) -> list:
    """Each decoder layer's MLP module, in layer order."""
    found = {int(m.group(1)): module for name, module in model.named_modules() if (m := MLP.fullmatch(name))}
    if sorted(found) != list(range(layers)):
        raise IncompatibleModelsError(f"the base model has MLPs in layers {sorted(found)[:8]}..., not one in each of "
                                      f"its {layers} layers; use gate_mode hidden")  # fmt: skip
    return [found[layer] for layer in range(layers)]


def _collect(context, items: list[tuple[int, list[int]]], *, average: bool):
    """Per slot: the sum over its prompts of the (layers, hidden) MLP-input rows, and the prompt count."""
    import torch

    layers, hidden = context.num_layers, context.hidden_size
    sums = torch.zeros(2 * len(context.experts), layers, hidden, dtype=torch.float64)
    counts = torch.zeros(2 * len(context.experts), dtype=torch.float64)
    max_tokens = pass_tokens(context.base.path, context.load, PASS_TOKENS, logits=False)
    pad_id = context.tokenizer.pad_token_id or 0
    rows: list = [None] * layers
    weights = None  # (B, S, 1) real-token mask of the chunk being run

    def hook(layer: int):
        def capture(module, args):
            rows[layer] = _row(args[0], weights, average).cpu()  # (B, H)

        return capture

    done = 0
    peak = activation_bytes(context.base.path, peak_tokens(items, max_tokens), logits=False)
    with (
        loaded_model(context.base.path, context.load, activations=peak, what="the MLP-input pass") as model,
        torch.inference_mode(),
    ):
        handles = [m.register_forward_pre_hook(hook(i)) for i, m in enumerate(mlp_modules(model, layers))]
        try:
            device = input_device(model)
            for chunk in chunks(items, max_tokens):
                inputs = left_padded(chunk, pad_id, device)
                weights = inputs["attention_mask"].to(torch.float32)[:, :, None]
                model(**inputs, use_cache=False)
                slots = torch.tensor([slot for slot, _ in chunk])
                sums.index_add_(0, slots, torch.stack(rows, dim=1).double())
                counts.index_add_(0, slots, torch.ones(len(chunk), dtype=torch.float64))
                done += len(chunk)
                context.progress("prompts", done, len(items))
        finally:
            for handle in handles:
                handle.remove()
    return sums, counts
