"""`random`: standard-normal routers, seeded (torch.manual_seed(seed); torch.randn(L, E, H))."""

from __future__ import annotations


def compute(context):
    import torch

    torch.manual_seed(context.seed)
    return torch.randn(context.num_layers, len(context.experts), context.hidden_size, dtype=torch.float32)
