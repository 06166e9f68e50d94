"""Training the routers of a loaded MoE model: everything else frozen, next-token loss plus the load-balancing loss,
seeded batches, held-out loss before and after; data-parallel through an accelerate Accelerator. Knows no files."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from moemerge.forward.loading import input_device

log = logging.getLogger(__name__)
OnStep = Callable[
    [int, int, float, float], None
]  # (step, steps, train loss, tokens per second); step 0: the fit begins


@dataclass(frozen=True)
class TuneSettings:
    """What a run does; the defaults are the measured recipe (docs/router-training.md): the closed-form fit alone."""

    steps: int = 0  # gradient steps after the fit (0: the fit alone, measured best on top-1 models)
    lr: float = 1e-2
    batch_tokens: int = 512  # per optimiser step, over all processes
    seq_len: int = 128  # tokens per training window
    aux_loss_coef: float = 0.001  # transformers' default router_aux_loss_coef
    seed: int = 0
    train_top_k: int | None = None  # experts per token while training; None: max(the model's, 2)
    fit: str = "ridge"  # "ridge": the closed-form fit (training.ridge) first, with two or more data files; "none"

    @property
    def rows(self) -> int:
        return self.batch_tokens // self.seq_len


@dataclass
class TuneResult:
    routers: dict[str, Any]  # checkpoint tensor name -> new value (float32, CPU)
    loss_before: dict[str, float]
    loss_after: dict[str, float]
    train_loss: list[float] = field(default_factory=list)
    fit: dict[str, Any] | None = None  # what the closed-form fit found (file -> expert, per-layer accuracy)
    seconds: float = 0.0
    tokens: int = 0  # training tokens seen, all processes


def router_parameters(model, templates: list[str]) -> dict[str, Any]:
    """The trainable tensors: for each template (`model.layers.{layer}.mlp.gate.weight`), the parameter of every layer
    whose loaded name ends like it (transformers renames some blocks when it loads: block_sparse_moe -> mlp)."""
    found = {}
    for template in templates:
        leaf = re.escape(template.split("{layer}.")[-1].split(".", 1)[-1])  # e.g. gate\.weight
        pattern = re.compile(rf"layers\.(\d+)\.[a-z_]+\.{leaf}$")
        for name, param in model.named_parameters():
            if match := pattern.search(name):
                found[template.format(layer=int(match.group(1)))] = param
    return found


def _set_top_k(model, k: int) -> dict[Any, int]:
    """Experts per token for training; returns the modules' old values. A top-1 router gets no gradient from the
    next-token loss (its one renormalised weight is always 1), so training routes to at least two."""
    old = {}
    for module in model.modules():
        if isinstance(getattr(module, "top_k", None), int) and hasattr(module, "weight"):
            old[module] = module.top_k
            module.top_k = k
    return old


def schedule(files: int, rows: int, step: int) -> list[int]:
    """Which data file each row of step `step` (1-based) comes from: rows run through the files in turn and carry on
    across steps, so over a run every file gets an equal share of the windows (and every file is reached once
    steps x rows >= files), whatever the number of rows per step."""
    first = (step - 1) * rows
    return [(first + r) % files for r in range(rows)]


def _batches(train: dict[str, Any], settings: TuneSettings, step: int, generator) -> Any:
    """The global batch of a step (rows, seq_len): rows from the files in schedule()'s turn, a seeded random window
    of that file each."""
    import torch

    names = list(train)
    rows = []
    for f in schedule(len(names), settings.rows, step):
        windows = train[names[f]]
        rows.append(windows[torch.randint(len(windows), (1,), generator=generator).item()])
    return torch.stack(rows)


def held_out_loss(model, windows: dict[str, Any], *, rows: int, accelerator, autocast) -> dict[str, float]:
    """Mean next-token loss per dataset (no auxiliary loss), over the windows this process owns, summed over all."""
    import torch

    device = input_device(model)
    out = {}
    for name, tensor in windows.items():
        mine = tensor[accelerator.process_index :: accelerator.num_processes]
        total = torch.zeros(2, dtype=torch.float64, device=accelerator.device)  # (loss sum, tokens)
        with torch.no_grad(), autocast():
            for start in range(0, len(mine), rows):
                ids = mine[start : start + rows].to(device)
                # output_router_logits=False: the plain next-token loss, whatever config.json says (True would add
                # the auxiliary load-balancing loss to it)
                loss = model(input_ids=ids, labels=ids, output_router_logits=False, use_cache=False).loss.double()
                tokens = ids.shape[0] * (ids.shape[1] - 1)
                total += torch.stack([loss.to(total.device) * tokens, torch.tensor(float(tokens), device=total.device)])
        total = accelerator.reduce(total, reduction="sum")
        out[name] = (total[0] / total[1]).item()
    return out


def train(model, train: dict[str, Any], held_out: dict[str, Any], settings: TuneSettings, *, templates: list[str],
          accelerator, on_step: OnStep | None = None) -> TuneResult:  # fmt: skip
    """Train the router tensors named by `templates` on windows of token ids (name -> (windows, seq_len) tensors);
    the model is changed in place and the new router values are returned."""
    import contextlib

    import torch

    torch.manual_seed(settings.seed)
    routers = router_parameters(model, templates)
    if not routers:
        raise ValueError("the model has no router parameters to train")
    for param in model.parameters():
        param.requires_grad_(False)
    for param in routers.values():
        param.data = param.data.float()  # float32 master copy even for a bf16 model (autocast does the forward)
        param.requires_grad_(True)
    bf16 = next(p for p in model.parameters() if p.device.type != "meta").dtype == torch.bfloat16
    device_type = next(iter(routers.values())).device.type

    def autocast():
        return torch.autocast(device_type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    experts = int(getattr(model.config, "num_local_experts", None) or model.config.num_experts)
    top_k = settings.train_top_k or min(experts, max(2, int(model.config.num_experts_per_tok)))
    model.router_aux_loss_coef = settings.aux_loss_coef
    model.config.router_aux_loss_coef = settings.aux_loss_coef
    optimizer = torch.optim.AdamW(list(routers.values()), lr=settings.lr, weight_decay=0.0)
    rows, world = settings.rows, accelerator.num_processes
    wrapped = accelerator.prepare(model) if world > 1 else model  # DistributedDataParallel: gradients averaged
    generator = torch.Generator().manual_seed(settings.seed)
    device = accelerator.device if world > 1 else None
    before = held_out_loss(model, held_out, rows=rows, accelerator=accelerator, autocast=autocast)
    result = TuneResult({}, before, {})
    start = time.perf_counter()
    if settings.fit == "ridge" and len(train) >= 2:
        if on_step is not None:
            on_step(0, settings.steps, float("nan"), 0.0)
        result.fit = _fit(model, routers, train, settings, autocast)
        result.seconds = time.perf_counter() - start
    old_top_k = _set_top_k(model, top_k)
    try:
        for step in range(1, settings.steps + 1):
            batch = _batches(train, settings, step, generator)[accelerator.process_index :: world]
            ids = batch.to(device or input_device(model))
            with autocast():
                out = wrapped(input_ids=ids, labels=ids, output_router_logits=True, use_cache=False)
            accelerator.backward(out.loss)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            loss = accelerator.reduce(out.loss.detach().float().reshape(1), reduction="mean").item()
            result.train_loss.append(loss)
            result.tokens += rows * settings.seq_len
            result.seconds = time.perf_counter() - start
            if on_step is not None:
                on_step(step, settings.steps, loss, result.tokens / max(result.seconds, 1e-9))
        _restore(old_top_k)
        old_top_k = {}
        result.loss_after = held_out_loss(model, held_out, rows=rows, accelerator=accelerator, autocast=autocast)
    finally:
        _restore(old_top_k)
    result.routers = {name: param.detach().float().cpu().clone() for name, param in routers.items()}
    return result


def _fit(model, routers: dict[str, Any], train: dict[str, Any], settings: TuneSettings, autocast) -> dict[str, Any]:
    """The closed-form fit of every routed-expert router (not a shared-expert gate), in place."""
    from dataclasses import asdict

    from moemerge.training import ridge

    mine = {id(p) for p in routers.values()}
    blocks = [m for m in model.modules() if id(getattr(getattr(m, "gate", None), "weight", None)) in mine]
    with autocast():
        fitted = ridge.fit(model, blocks, train, seed=settings.seed, device=input_device(model))
    return {"method": "ridge", **asdict(fitted)}


def _restore(old: dict[Any, int]) -> None:
    for module, k in old.items():
        module.top_k = k
