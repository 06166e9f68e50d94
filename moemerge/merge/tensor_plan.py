"""Pure planning: from headers to the ordered list of output tensors (name, source, transform, dtype, shard)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from moemerge.archs import OutputArch
from moemerge.archs.inputs import Part, mlp_parts, mlp_source_names, split_parts
from moemerge.sources.folder import TensorInfo

LAYER = re.compile(r"^model\.layers\.(\d+)\.")
FLOAT_DTYPES = ("float32", "float16", "bfloat16", "float64")
ELEMENT_SIZE = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4, "int16": 2}


@dataclass(frozen=True)
class FromModel:
    """A source tensor (rows from `start` on): model 0 is the base, 1..E the experts, E+1.. the shared experts."""

    model: int
    name: str
    start: int = 0


@dataclass(frozen=True)
class FromRouter:
    """Layer `layer` of the routers (layers, experts, hidden): `routed`, or `shared` for a shared-expert gate."""

    layer: int
    group: str = "routed"


@dataclass(frozen=True)
class Zeros:
    """A tensor of zeros (a zero-output shared expert, zero attention biases)."""


@dataclass(frozen=True)
class PlannedTensor:
    name: str
    shape: tuple[int, ...]
    dtype: str
    source: FromModel | FromRouter | Zeros
    noise_scale: float = 0.0  # add randn * noise_scale (seeded by tensor name)
    scale: float = 1.0  # multiply (residual_scale on down projections)

    @property
    def nbytes(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count * ELEMENT_SIZE.get(self.dtype, 1)


@dataclass(frozen=True)
class Shard:
    filename: str
    tensors: list[PlannedTensor] = field(default_factory=list)


@dataclass(frozen=True)
class Plan:
    arch: OutputArch
    shards: list[Shard]

    @property
    def tensors(self) -> list[PlannedTensor]:
        return [t for shard in self.shards for t in shard.tensors]

    @property
    def total_size(self) -> int:
        return sum(t.nbytes for t in self.tensors)


@dataclass(frozen=True)
class ExpertSpec:
    noise_scale: float = 0.0
    residual_scale: float = 1.0


def _order(name: str) -> tuple[int, int, str]:
    match = LAYER.match(name)
    if match:
        return (1, int(match.group(1)), name)
    return (0 if "embed" in name else 2, 0, name)


def _cast(dtype: str, out_dtype: str) -> str:
    return out_dtype if dtype in FLOAT_DTYPES else dtype


def _zero_shared(arch: OutputArch, layer: int, hidden: int, dtype: str) -> list[PlannedTensor]:
    """A shared expert of intermediate size 1 whose down projection is zero: it adds exactly nothing."""
    shapes = {"gate": (1, hidden), "up": (1, hidden), "down": (hidden, 1)}
    return [PlannedTensor(arch.shared_expert[r].format(layer=layer), shapes[r], dtype, Zeros()) for r in shapes]


def _part(part: Part, model: int, info: TensorInfo, dtype: str, **transform) -> tuple[tuple[int, ...], FromModel]:
    """Output shape and source of `part` of a tensor whose full shape is info.shape."""
    stop = info.shape[0] if part.stop is None else part.stop
    return (stop - part.start, *info.shape[1:]), FromModel(model, part.name, part.start)


def _moe_block(arch, config, layer, headers, experts, num_routed, hidden, dtype) -> list[PlannedTensor]:
    block = [PlannedTensor(arch.router.format(layer=layer), (num_routed, hidden), dtype, FromRouter(layer))]
    has_shared = len(experts) > num_routed
    if arch.shared_expert and not has_shared and arch.zero_shared_expert:
        block += _zero_shared(arch, layer, hidden, dtype)
    if arch.shared_gate:
        source = FromRouter(layer, "shared") if has_shared else Zeros()
        block.append(PlannedTensor(arch.shared_gate.format(layer=layer), (1, hidden), dtype, source))
    for index, spec in enumerate(experts):
        templates = arch.experts if index < num_routed else arch.shared_expert
        for role, part in mlp_parts(config, layer).items():
            info = headers[index + 1][part.name]
            shape, source = _part(part, index + 1, info, dtype)
            block.append(
                PlannedTensor(
                    templates[role].format(layer=layer, expert=index),
                    shape,
                    _cast(info.dtype, dtype),
                    source,
                    noise_scale=spec.noise_scale,
                    scale=spec.residual_scale if role == "down" else 1.0,
                )
            )
    return block


def build_plan(
    *,
    arch: OutputArch,
    base_config: dict,
    headers: list[dict[str, TensorInfo]],
    experts: list[ExpertSpec],
    num_routed: int,
    hidden_size: int,
    dtype: str,
    max_shard_bytes: int,
) -> Plan:
    """Every output tensor in write order (embeddings, layer by layer with its MoE block, final norm, head)."""
    tensors: list[PlannedTensor] = []
    done_layers: set[int] = set()
    zeros = arch.zero_tensors(base_config, set(headers[0]))
    mlp = mlp_source_names(base_config)
    splits = {
        k: v
        for layer in range(int(base_config["num_hidden_layers"]))
        for k, v in split_parts(base_config, layer).items()
    }
    names = [n for n in headers[0] if n not in splits] + [out for parts in splits.values() for out in parts]
    for name in sorted([*names, *zeros], key=_order):
        if name in zeros:
            tensors.append(PlannedTensor(name, zeros[name], dtype, Zeros()))
        elif name in mlp:
            layer = int(LAYER.match(name).group(1))
            if layer not in done_layers:
                done_layers.add(layer)
                tensors += _moe_block(arch, base_config, layer, headers, experts, num_routed, hidden_size, dtype)
        else:
            part = next((p[name] for p in splits.values() if name in p), Part(name))
            info = headers[0][part.name]
            shape, source = _part(part, 0, info, dtype)
            tensors.append(PlannedTensor(name, shape, _cast(info.dtype, dtype), source))
    return Plan(arch, split_shards(tensors, max_shard_bytes))


def split_shards(tensors: list[PlannedTensor], max_shard_bytes: int) -> list[Shard]:
    """Greedy split in write order; 0 = one file. Names follow transformers' model-0000k-of-0000n pattern."""
    groups: list[list[PlannedTensor]] = [[]]
    size = 0
    for tensor in tensors:
        if max_shard_bytes and groups[-1] and size + tensor.nbytes > max_shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(tensor)
        size += tensor.nbytes
    if len(groups) == 1:
        return [Shard("model.safetensors", groups[0])]
    n = len(groups)
    return [Shard(f"model-{k + 1:05d}-of-{n:05d}.safetensors", group) for k, group in enumerate(groups)]
