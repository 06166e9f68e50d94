"""`uniform_random`: routers drawn from U(-1/sqrt(H), 1/sqrt(H)), seeded; needs no prompts."""

from __future__ import annotations

import math


def compute(context):
    import torch

    torch.manual_seed(context.seed)
    bound = 1.0 / math.sqrt(context.hidden_size)
    shape = (context.num_layers, len(context.experts), context.hidden_size)
    return (torch.rand(shape, dtype=torch.float32) * 2 - 1) * bound
