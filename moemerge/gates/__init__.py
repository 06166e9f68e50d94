"""Gate modes: each is a function from a GateContext to routers of shape (layers, experts, hidden), float32."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from moemerge.config.schema import ExpertConfig
from moemerge.errors import ConfigError
from moemerge.forward.loading import LoadOptions
from moemerge.sources.folder import ModelSource

log = logging.getLogger(__name__)
DEGENERATE_CONDITION = 5.0


@dataclass
class GateContext:
    """Everything a gate mode may use; the tokenizer is loaded only when a mode asks for it."""

    base: ModelSource
    experts: list[ExpertConfig]
    num_layers: int
    hidden_size: int
    seed: int
    embed_name: str = "model.embed_tokens.weight"
    load: LoadOptions = field(default_factory=LoadOptions)
    progress: Callable[[str, int, int], None] = lambda stage, done, total: None  # (stage, done, total)

    @cached_property
    def tokenizer(self) -> Any:
        return base_tokenizer(self.base, self.load)

    def prompt_ids(self, prompts: list[str]) -> list[list[int]]:
        """Token ids of each prompt as SPEC section 6 tokenises it: BOS text + prompt, no other special tokens."""
        bos = self.tokenizer.bos_token or ""
        return [self.tokenizer(bos + p, add_special_tokens=False)["input_ids"] for p in prompts]


GateFn = Callable[[GateContext], Any]


def prompt_items(context: GateContext) -> list[tuple[int, list[int]]]:
    """One entry per prompt: (slot, token ids); slot 2e = expert e's positives, 2e+1 = its negatives."""
    from moemerge.errors import IncompatibleModelsError

    items = []
    for e, expert in enumerate(context.experts):
        items += [(2 * e, ids) for ids in context.prompt_ids(expert.positive_prompts or [])]
        items += [(2 * e + 1, ids) for ids in context.prompt_ids(expert.negative_prompts or [])]
    if any(not ids for _, ids in items):
        raise IncompatibleModelsError("a prompt tokenises to nothing and the tokenizer has no BOS token; drop it")
    return items


def base_tokenizer(base: ModelSource, load: LoadOptions) -> Any:
    """The base's tokenizer, loaded with the --trust-remote-code value: never transformers' y/N prompt."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(base.path), trust_remote_code=load.trust_remote_code)
    except ValueError as exc:
        if "trust_remote_code" not in str(exc):
            raise
        raise ConfigError(f"base_model '{base.ref}': its tokenizer needs its own Python code; rerun with "
                          "--trust-remote-code if you trust it") from None  # fmt: skip


def _registry() -> dict[str, GateFn]:
    from moemerge.gates import cheap_embed, hidden, mlp_input, random, uniform_random

    return {
        "random": random.compute,
        "uniform_random": uniform_random.compute,
        "cheap_embed": cheap_embed.compute,
        "hidden": hidden.compute_last,
        "hidden_avg": hidden.compute_mean,
        "mlp_input": mlp_input.compute_last,
        "mlp_input_avg": mlp_input.compute_mean,
    }


def compute_routers(mode: str, context: GateContext):
    """Routers (layers, experts, hidden) as a float32 numpy array for `mode`; warns about near-degenerate layers."""
    import numpy as np

    routers = _registry()[mode](context)
    if not isinstance(routers, np.ndarray):  # a torch tensor (the forward-pass modes, `random`)
        routers = routers.detach().cpu().float().numpy()
    routers = routers.astype(np.float32, copy=False)
    expected = (context.num_layers, len(context.experts), context.hidden_size)
    if tuple(routers.shape) != expected:
        raise AssertionError(f"gate mode {mode} returned {tuple(routers.shape)}, expected {expected}")
    if mode not in ("random", "uniform_random"):
        warn_degenerate(routers)
    return routers


def combine(positive, negative):
    """normalise(normalise(pos) - normalise(neg)); plain normalise(pos) without negatives. float32 numpy arrays of
    shape (..., hidden)."""
    import numpy as np

    def unit(v):
        return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), np.finfo(v.dtype).tiny)

    return unit(positive) if negative is None else unit(unit(positive) - unit(negative))


def warn_degenerate(routers) -> list[int]:
    """Layers whose router matrix (experts, hidden) has condition number > 5; logged as a warning."""
    import numpy as np

    routers = np.asarray(routers, dtype=np.float64)
    if routers.shape[1] < 2:
        return []
    with np.errstate(divide="ignore", invalid="ignore"):  # a singular matrix has condition number inf
        conditions = np.linalg.cond(routers)
    bad = [i for i, c in enumerate(conditions.tolist()) if not c < DEGENERATE_CONDITION]
    if bad:
        where = f"all {len(bad)} layers" if len(bad) == routers.shape[0] > 1 else "layer(s) " + ", ".join(map(str, bad))
        log.warning(
            "router matrix near-degenerate in %s (condition number > %g): the experts' prompts are too similar; "
            "give each expert more distinct positive prompts",
            where,
            DEGENERATE_CONDITION,
        )
    return bad
