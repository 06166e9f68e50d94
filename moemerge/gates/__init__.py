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
DEGENERATE_CONDITION = 5.0  # mergekit's rule for rows that are plain prompt means


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
        contrastive = [bool(expert.negative_prompts) for expert in context.experts]
        warn_degenerate(routers, contrastive=contrastive)
    return routers


def combine(positive, negative):
    """normalise(normalise(pos) - normalise(neg)); plain normalise(pos) without negatives. float32 numpy arrays of
    shape (..., hidden)."""
    import numpy as np

    def unit(v):
        return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), np.finfo(v.dtype).tiny)

    return unit(positive) if negative is None else unit(unit(positive) - unit(negative))


def degenerate_layers(routers, *, contrastive=None) -> dict[int, str]:
    """Layers whose routers (layers, experts, hidden) cannot tell the experts apart, each with its reason.

    Rows that are plain prompt means (experts without negative prompts): mergekit's rule, condition number > 5.
    Prompt means share large directions, so rows that differ little make that matrix ill-conditioned.
    Rows with negatives are differences: when each domain's prompts are the others' negatives they sum to about zero
    by construction, and their condition number is huge however well they route. Routing does not change when one
    vector is added to every row (every expert's logit moves by the same amount), so with any contrastive row the
    rule is applied to the rows minus their mean row, over the experts - 1 directions those can span: it fires when
    rows coincide, or when one expert's row is nearly a weighted average of the others' (it can hardly win)."""
    import numpy as np

    routers = np.asarray(routers, dtype=np.float64)
    experts = routers.shape[1]
    contrastive = list(contrastive) if contrastive is not None else [False] * experts
    plain = [e for e in range(experts) if not contrastive[e]]
    bad: dict[int, str] = {}
    with np.errstate(divide="ignore", invalid="ignore"):  # a singular matrix has condition number inf
        if len(plain) >= 2:
            for layer, c in enumerate(np.linalg.cond(routers[:, plain]).tolist()):
                if not c < DEGENERATE_CONDITION:
                    bad[layer] = f"condition number > {DEGENERATE_CONDITION:g}"
        if any(contrastive) and experts >= 2:
            spread = np.linalg.svd(routers - routers.mean(axis=1, keepdims=True), compute_uv=False)[:, : experts - 1]
            length = np.linalg.norm(routers, axis=-1).max(axis=-1)  # rows coinciding to float32 rounding: spread 0
            spread = np.where(spread > 1e-6 * length[:, None], spread, 0.0)
            for layer, c in enumerate((spread[:, 0] / spread[:, -1]).tolist()):
                if not c < DEGENERATE_CONDITION:
                    reason = f"condition number of the rows minus their mean > {DEGENERATE_CONDITION:g}"
                    bad.setdefault(layer, reason)
    return bad


def warn_degenerate(routers, *, contrastive=None) -> list[int]:
    """The degenerate layers (see degenerate_layers), logged as one warning per reason; returns their indices."""
    bad = degenerate_layers(routers, contrastive=contrastive)
    layers = len(routers)
    for reason in dict.fromkeys(bad.values()):
        these = [layer for layer, why in bad.items() if why == reason]
        where = f"all {layers} layers" if len(these) == layers > 1 else "layer(s) " + ", ".join(map(str, these))
        log.warning(
            "router matrix near-degenerate in %s (%s): the experts' prompts are too similar; "
            "give each expert more distinct positive prompts",
            where,
            reason,
        )
    return sorted(bad)
