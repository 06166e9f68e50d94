"""`cheap_embed`: the sum of the base's embedding rows over every prompt token, normalised; same row every layer.
Prompts are tokenised from tokenizer.json (moemerge.forward.tokenize) and rows summed in numpy: this mode imports neither
transformers nor torch."""

from __future__ import annotations

from collections import Counter

from moemerge.errors import IncompatibleModelsError
from moemerge.forward import tokenize


def _runs(ids: list[int]) -> list[tuple[int, int]]:
    """Sorted unique ids grouped into contiguous [start, stop) runs, so each run is one slice read."""
    runs: list[tuple[int, int]] = []
    for i in ids:
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


def prompt_sum(context, tokenizer: tokenize.PromptTokenizer, prompts: list[str]):
    """Sum of embedding rows (hidden,) over all tokens of all prompts, float32; reads only the rows used."""
    import numpy as np

    counts = Counter(t for ids in tokenizer.prompt_ids(prompts) for t in ids)
    ids = sorted(counts)
    vocab = context.base.tensors[context.embed_name].shape[0]
    if ids and ids[-1] >= vocab:
        raise IncompatibleModelsError(f"tokenizer produced id {ids[-1]} but the base has {vocab} embedding rows")
    if not ids:
        return np.zeros(context.hidden_size, dtype=np.float32)
    rows = np.concatenate([context.base.read_float32(context.embed_name, slice(a, b)) for a, b in _runs(ids)])
    weights = np.array([counts[i] for i in ids], dtype=np.float32)
    return weights @ rows  # (hidden,)


def compute(context):
    import numpy as np

    tokenizer = tokenize.load(context.base.path, trust_remote_code=context.load.trust_remote_code)
    rows = []
    for index, expert in enumerate(context.experts):
        positive = prompt_sum(context, tokenizer, expert.positive_prompts or [])
        negative = prompt_sum(context, tokenizer, expert.negative_prompts) if expert.negative_prompts else None
        row = _combine(positive, negative)
        if not np.isfinite(row).all() or not np.linalg.norm(row) > 0:
            raise IncompatibleModelsError(f"experts[{index}]: prompts give a zero router row (positives = negatives?)")
        rows.append(row)
    return np.broadcast_to(np.stack(rows), (context.num_layers, len(rows), context.hidden_size)).copy()


def _combine(positive, negative):
    from moemerge.gates import combine

    return combine(positive, negative)
