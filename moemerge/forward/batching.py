"""Batching prompts for a forward pass: length-sorted chunks under a token budget, left padding, position ids."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

Item = tuple[int, list[int]]  # (which set the prompt belongs to, its token ids)


def chunks(items: list[Item], max_tokens: int) -> Iterator[list[Item]]:
    """Prompts sorted by length, grouped so that rows x longest prompt stays within max_tokens."""
    items = sorted(items, key=lambda item: len(item[1]))
    chunk: list[Item] = []
    for item in items:
        if chunk and (len(chunk) + 1) * len(item[1]) > max_tokens:
            yield chunk
            chunk = []
        chunk.append(item)
    if chunk:
        yield chunk


def left_padded(chunk: list[Item], pad_id: int, device: Any) -> dict[str, Any]:
    """Model inputs for a chunk: left padding with an attention mask, and position ids that start at 0 at each
    prompt's first real token, so a prompt's outputs are the same alone or in a batch."""
    import torch

    width = max(len(ids) for _, ids in chunk)
    input_ids = torch.tensor([[pad_id] * (width - len(ids)) + ids for _, ids in chunk])
    mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for _, ids in chunk])
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    return {"input_ids": input_ids.to(device), "attention_mask": mask.to(device), "position_ids": positions.to(device)}


def peak_tokens(items: list[Item], max_tokens: int) -> int:
    """The largest rows x width of chunks(items, max_tokens): what one forward pass holds at once."""
    return max((len(chunk) * len(chunk[-1][1]) for chunk in chunks(items, max_tokens)), default=1)
