"""`uniform_random`: routers drawn from U(-1/sqrt(H), 1/sqrt(H)), seeded (numpy's default generator: no torch);
needs no prompts."""

from __future__ import annotations

import math


def compute(context):
    import numpy as np

    bound = 1.0 / math.sqrt(context.hidden_size)
    shape = (context.num_layers, len(context.experts), context.hidden_size)
    return np.random.default_rng(context.seed).uniform(-bound, bound, shape).astype(np.float32)
