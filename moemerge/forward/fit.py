"""Fitting a model load into the room it has (SPEC 14): what a forward pass needs (weights as loaded, plus its
activations), against what the process may use; in memory when it fits, else the same exact computation with the
weights beyond a budget offloaded to disk (accelerate), else a refusal before anything is loaded."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

from moemerge.errors import ConfigError
from moemerge.forward.room import Room, cpu_room, gpu_room

log = logging.getLogger(__name__)
RUNTIME_BYTES = 64 * 2**20  # what loading holds beside the weights (one tensor read at a time; imports are already in)
MARGIN = 1.10  # weights as loaded take a little more than their bytes (buffers, the allocator's slack)
ACTIVATION_SHARE = 0.15  # of the room, for one pass's activations when memory is tight
USABLE = 0.75  # share of the room a load plans to fill (measured: past ~85 % a 500 MB cgroup killed the process)
BYTES_PER_PARAM = {"4bit": 0.56, "8bit": 1.06}  # bitsandbytes weights plus their scales


@dataclass(frozen=True)
class Fit:
    """A decision: `path` is "memory", "offload" or "refuse"; figures in bytes."""

    path: str
    need: int  # weights as loaded + activations + runtime
    room: Room
    budget: int = 0  # offload: bytes of weights kept in memory, the rest read from disk as needed
    smallest: int = 0  # the least that can run: one layer, the embeddings, activations and runtime

    def line(self, what: str) -> str:
        need, room = _gb(self.need), f"{_gb(self.room.bytes)} ({self.room.source})"
        match self.path:
            case "memory":
                return f"memory: {what} needs about {need}, {room} free: loading it in memory"
            case "offload":
                return (f"memory: {what} needs about {need} but {room} is free: keeping {_gb(self.budget)} of weights "
                        "in memory and reading the rest from disk as each layer runs (same results, slower)")  # fmt: skip
        return (f"memory: {what} needs at least {_gb(self.smallest)} even with its weights offloaded to disk (one layer "
                f"and its activations), but {room} is free; free memory or raise the limit")  # fmt: skip


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


@dataclass(frozen=True)
class Weights:
    """What a folder's weights take when loaded: in all, the largest layer, and what sits outside the layers."""

    total: int
    largest_layer: int
    outside: int  # embeddings, lm_head, final norm: kept on the execution device
    params: int


def weights(folder: Path, bytes_per_param: float) -> Weights | None:
    """From the safetensors headers of `folder` (no tensor data read); None when it has none (a .bin checkpoint)."""
    from moemerge.sources.headers import read_json, read_safetensors_header

    index = folder / "model.safetensors.index.json"
    files = sorted({folder / f for f in read_json(index)["weight_map"].values()}) if index.is_file() else []
    files = files or sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    shapes = {name: info.shape for file in files for name, info in read_safetensors_header(file).items()}
    return weights_of(shapes, bytes_per_param)


def weights_of(shapes: dict[str, tuple[int, ...]], bytes_per_param: float) -> Weights:
    """Tensor name -> shape, as loaded at `bytes_per_param`: in all, per layer (`...layers.N.`), and outside them."""
    layers: dict[str, int] = {}
    params = 0
    for name, shape in shapes.items():
        count = 1
        for dim in shape:
            count *= dim
        params += count
        parts = name.split(".")
        key = ".".join(parts[: parts.index("layers") + 2]) if "layers" in parts[:-1] else "outside"
        layers[key] = layers.get(key, 0) + count
    outside = layers.pop("outside", 0)
    scale = bytes_per_param
    return Weights(int(params * scale), int(max(layers.values(), default=0) * scale), int(outside * scale), params)


def decide(found: Weights, activations: int, room: Room) -> Fit:
    """Memory, offload or refuse, for a load of `found` weights running `activations` bytes at a time. Only
    USABLE of the room is planned for: the kernel needs slack for the page cache the reads and writes go through."""
    room = Room(int(room.bytes * USABLE), room.source)
    need = int(found.total * MARGIN) + activations + RUNTIME_BYTES
    smallest = int((found.largest_layer * 1.5 + found.outside) * MARGIN) + activations + RUNTIME_BYTES
    if need <= room.bytes:
        return Fit("memory", need, room, smallest=smallest)
    if smallest > room.bytes:
        return Fit("refuse", need, room, smallest=smallest)
    budget = int((room.bytes - activations - RUNTIME_BYTES) / MARGIN) - found.outside
    return Fit("offload", need, room, budget=max(budget, found.largest_layer), smallest=smallest)


def per_param(options) -> float:
    """Bytes per parameter as loaded: 4/8-bit's, bfloat16 on a GPU, float32 on the CPU."""
    if options.quantize:
        return BYTES_PER_PARAM[options.quantize]
    return 2 if options.device.startswith("cuda") else 4


def plan_load(folder: Path, options, *, activations: int, what: str = "the model"):
    """The LoadOptions to load `folder` with, and the line that says why (None when nothing had to change).
    Raises ConfigError (exit 2) before loading when even an offloaded run cannot fit."""
    if options.max_memory:  # the user's own budget for accelerate: theirs to choose
        return options, None
    found = weights(folder, per_param(options))
    if found is None:
        return options, None
    if options.device.startswith("cuda"):
        return _on_gpu(found, options, activations, what)
    fit = decide(found, activations, cpu_room())
    if fit.path == "refuse":
        raise ConfigError(fit.line(what))
    if options.device == "auto":  # accelerate sizes the CPU by the host's free memory: give it the real room
        budget = fit.budget if fit.path == "offload" else fit.room.bytes
        return replace(options, max_memory={**_gpus(), "cpu": budget}), None
    if fit.path == "memory" or options.quantize:
        return options, None
    return replace(options, device="auto", max_memory={"cpu": fit.budget}), fit.line(what)


def _gpus() -> dict[str, int]:
    import torch

    if not torch.cuda.is_available():
        return {}
    return {str(i): int(gpu_room(i).bytes * 0.9) for i in range(torch.cuda.device_count())}


def _on_gpu(found: Weights, options, activations: int, what: str):
    index = int(options.device.partition(":")[2] or 0)
    fit = decide(found, activations, gpu_room(index))
    if fit.path == "memory":
        return options, None
    cpu = cpu_room()
    if fit.path == "refuse" or options.quantize:
        raise ConfigError(fit.line(what).replace("free; free memory", "free on the GPU; use --device auto"))
    line = (f"memory: {what} needs about {_gb(fit.need)} of GPU memory but {_gb(fit.room.bytes)} is free: "
            f"{_gb(fit.budget)} of weights on GPU {index}, the rest in CPU memory and on disk (same results, slower)")  # fmt: skip
    budget = {str(index): fit.budget, "cpu": int(cpu.bytes * 0.8)}
    return replace(options, device="auto", max_memory=budget), line


def activation_bytes(folder: Path, tokens: int, *, logits: bool, training: bool = False, states: bool = False) -> int:
    """What a forward pass over `tokens` tokens holds at once, from config.json: a layer's working set (the stream,
    attention, the MLP's widest step), every layer's stream with `states` (output_hidden_states) or `training`
    (kept for the backward pass), and the (tokens, vocab) logits with `logits` (twice: a float copy for the loss)."""
    from moemerge.sources.headers import read_json

    try:
        config = read_json(folder / "config.json")
        hidden, layers = int(config["hidden_size"]), int(config["num_hidden_layers"])
        wide = int(config.get("moe_intermediate_size") or config.get("intermediate_size") or 4 * hidden)
        vocab = int(config.get("vocab_size") or 0)
    except (KeyError, TypeError, ValueError, OSError):
        return 256 * 2**20
    per_token = 4 * (8 * hidden + 3 * wide)
    if states or training:
        per_token += 4 * hidden * (layers + 1) * (12 if training else 1)
    if logits:
        per_token += 4 * vocab * (3 if training else 2)
    return tokens * per_token


def pass_tokens(folder: Path, options, tokens: int, *, logits: bool, states: bool = False) -> int:
    """Tokens per forward pass: `tokens`, or fewer when their activations would take more than ACTIVATION_SHARE of
    the room (then the weights keep the rest, and smaller passes give the same results)."""
    if options.max_memory:
        return tokens
    if options.device.startswith("cuda"):
        free = gpu_room(int(options.device.partition(":")[2] or 0)).bytes
    else:
        free = cpu_room().bytes
    per_token = max(1, activation_bytes(folder, 1, logits=logits, states=states))
    return max(64, min(tokens, int(free * ACTIVATION_SHARE) // per_token))
