"""The closed-form router fit (`moemerge tune`'s first step): per layer, ridge regression of the MLP input onto
centred one-hot labels of the expert each token's data file belongs to. Knows no files: a model and windows in, the
routers set in place.

Which expert a file belongs to is measured, not assumed: the fit batch is run with every layer forced to one expert
at a time, and each file goes to the expert whose forced loss is furthest below the file's mean over experts (each
expert once while one is free). Measured on the real code/math pair (top-1): the fit alone closes 101.5 % / 100.1 %
of the base-to-expert gap, where 60 gradient steps reached 97.1 % / 101.5 % (docs/router-training.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ROWS_PER_FILE = 24  # windows of each file in the fit batch (24 x 128 tokens: measured best of 8 and 24 on the demo)
RIDGE = 1e-2  # lambda, relative to the mean diagonal of X^T X
LOSS_TOKENS = 1024  # tokens per forward pass while matching files to experts (bounds the logits)
SCALE_CAP = 1e3  # separable labels push the calibrated scale to infinity: stop here


@dataclass
class Fitted:
    mapping: dict[str, int]  # data file name -> expert
    scales: list[float]  # per layer
    accuracy: list[float]  # per layer: share of fit tokens whose top-1 pick is their file's expert
    tokens: int


def _force(expert: int):
    """A router forward hook: every token to `expert`, whatever the router computed (transformers 5's routers return
    (logits, weights, indices); 4.x's gate is a Linear whose logits are then top-k'ed)."""
    import torch

    def hook(module, args, output):
        if isinstance(output, tuple):
            logits, scores, indices = output
            scores = torch.zeros_like(scores)
            scores[:, 0] = 1.0
            return logits, scores, torch.full_like(indices, expert)
        forced = torch.zeros_like(output)
        forced[..., expert] = 1e4
        return forced

    return hook


def forced_losses(model, gates: list, ids) -> Any:
    """(experts, rows, seq_len - 1): each token's next-token loss when every layer sends every token to expert e;
    a few rows at a time, so that the (tokens, vocab) logits stay small."""
    import torch

    out = []
    rows = max(1, LOSS_TOKENS // ids.shape[1])
    with torch.no_grad():
        for e in range(gates[0].weight.shape[0]):
            hooks = [gate.register_forward_hook(_force(e)) for gate in gates]
            losses = []
            try:
                for start in range(0, len(ids), rows):
                    part = ids[start : start + rows]
                    logits = model(input_ids=part, use_cache=False, output_router_logits=False).logits[:, :-1]
                    labels = part[:, 1:].to(logits.device)
                    loss = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), labels, reduction="none")
                    losses.append(loss.cpu())
                    del logits
            finally:
                for hook in hooks:
                    hook.remove()
            out.append(torch.cat(losses))
    return torch.stack(out)


def assign_files(file_loss) -> list[int]:
    """file -> expert from a (files, experts) table of mean forced losses: pairs taken greedily by how far the expert
    is below the file's mean, each expert once while one is free (more files than experts: each takes its best)."""
    files, experts = file_loss.shape
    gain = file_loss.mean(1, keepdim=True) - file_loss
    out, used = [-1] * files, set()
    for f, e in sorted(((f, e) for f in range(files) for e in range(experts)), key=lambda fe: -float(gain[fe])):
        if out[f] < 0 and (e not in used or len(used) == experts):
            out[f] = e
            used.add(e)
    return out


def calibrated_scale(logits, target, *, iters: int = 20) -> float:
    """The s > 0 that maximises sum_t log softmax(s * logits_t)[target_t] (concave in s), by Newton from 1, capped:
    it changes no top-1 pick, only how sharp the top-k weights are."""
    import torch

    s = 1.0
    chosen = logits.gather(1, target[:, None]).squeeze(1)
    for _ in range(iters):
        p = torch.softmax(s * logits, 1)
        mean = (p * logits).sum(1)
        grad = float((chosen - mean).sum())
        hess = -float(((p * logits**2).sum(1) - mean**2).sum())
        if hess > -1e-12:
            break
        step = grad / hess
        s = min(SCALE_CAP, max(s - step, s / 4))
        if abs(step) < 1e-4 * s or s >= SCALE_CAP:
            break
    return s


def fit(model, blocks: list, windows: dict[str, Any], *, seed: int, device) -> Fitted:
    """Set the router (`block.gate.weight`, (experts, hidden)) of every MoE block in place from training windows
    (name -> (windows, seq_len) token ids): one batch of ROWS_PER_FILE seeded windows per file; a pre-hook on each
    block takes its input X (tokens, hidden) and solves W = ((X^T X + lam I)^-1 X^T Y)^T in float64 before the block
    runs, so each layer is fitted on the stream the layers fitted before it produce."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    names = list(windows)
    picked = [windows[n][torch.randperm(len(windows[n]), generator=generator)[:ROWS_PER_FILE]] for n in names]
    ids = torch.cat(picked).to(device)
    file_of_row = torch.cat([torch.full((len(p),), i) for i, p in enumerate(picked)])
    gates = [block.gate for block in blocks]
    experts = gates[0].weight.shape[0]
    loss = forced_losses(model, gates, ids)
    file_loss = torch.stack([loss[:, file_of_row == f].mean(dim=(1, 2)) for f in range(len(names))])
    mapping = assign_files(file_loss)
    target = torch.tensor(mapping)[file_of_row][:, None].expand(ids.shape).reshape(-1)
    labels = torch.nn.functional.one_hot(target, experts).double() - 1.0 / experts  # centred: routers have no bias
    scales, accuracy = [], []

    def solve(block, args):
        x = args[0].reshape(-1, args[0].shape[-1]).double()  # (tokens, hidden)
        gram = x.T @ x
        ridge = RIDGE * gram.diagonal().mean() * torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
        w = torch.linalg.solve(gram + ridge, x.T @ labels.to(x.device)).T  # (experts, hidden)
        logits = (x @ w.T).cpu()
        scale = calibrated_scale(logits, target)
        scales.append(round(scale, 2))
        accuracy.append(round(float((logits.argmax(1) == target).float().mean()), 4))
        block.gate.weight.data.copy_((scale * w).to(block.gate.weight.dtype))

    hooks = [block.register_forward_pre_hook(solve) for block in blocks]
    try:
        with torch.no_grad():  # the decoder alone: the fit needs every layer's input, not the logits
            getattr(model, "model", model)(input_ids=ids, use_cache=False)
    finally:
        for hook in hooks:
            hook.remove()
    return Fitted(dict(zip(names, mapping)), scales, accuracy, ids.numel())
