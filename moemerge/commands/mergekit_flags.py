"""mergekit-moe's command-line options (its `MergeOptions`), accepted so that its scripts run unchanged: the ones
with a meaning here map onto moemerge's behaviour, the others are no-ops that say so with -v."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from moemerge.errors import ConfigError

log = logging.getLogger("moemerge")
HELP_NOTE = (
    "mergekit compatibility: mergekit-moe's other options are accepted, each also as --no-X: --cuda and --gpu-rich "
    "(= --device cuda), -j/--num-threads N, --transformers-cache PATH, --write-model-card, --safe-serialization, "
    "and the no-ops --clone-tensors, --lora-merge-cache PATH, --lora-merge-dtype DTYPE, --low-cpu-memory, "
    "--read-to-gpu, --multi-gpu, --async-write, --write-threads N (-v says why each has no effect)."
)
# why each option has nothing to do in moemerge (said with -v when given)
NO_EFFECT = {
    "clone_tensors": "moemerge never writes one tensor twice from shared memory",
    "lora_merge_cache": "LoRA experts are merged chunk by chunk while writing; nothing is cached",
    "lora_merge_dtype": "LoRA deltas are computed in float32 and cast to the output dtype",
    "low_cpu_memory": "weights are always streamed (about one layer in memory)",
    "read_to_gpu": "weights are copied, not computed on; only the hidden-state pass uses --device",
    "multi_gpu": "use --device auto to spread the hidden-state pass over several GPUs",
    "async_write": "shards are written while the tensors stream",
    "write_threads": "shards are written while the tensors stream",
    "lazy_unpickle": ".bin files are always read lazily",
}


def _flag(name: str) -> typer.models.OptionInfo:
    return typer.Option(f"--{name}/--no-{name}", hidden=True)


CudaOpt = Annotated[bool, _flag("cuda")]
GpuRichOpt = Annotated[bool, _flag("gpu-rich")]
ThreadsOpt = Annotated[int | None, typer.Option("--num-threads", "-j", hidden=True, min=1)]
CacheOpt = Annotated[Path | None, typer.Option("--transformers-cache", hidden=True)]
CardOpt = Annotated[bool, _flag("write-model-card")]
SafeOpt = Annotated[bool, _flag("safe-serialization")]
CloneOpt = Annotated[bool, _flag("clone-tensors")]
LoraCacheOpt = Annotated[str | None, typer.Option("--lora-merge-cache", hidden=True)]
LoraDtypeOpt = Annotated[str | None, typer.Option("--lora-merge-dtype", hidden=True)]
LowMemOpt = Annotated[bool, _flag("low-cpu-memory")]
ReadGpuOpt = Annotated[bool, _flag("read-to-gpu")]
MultiGpuOpt = Annotated[bool, _flag("multi-gpu")]
AsyncOpt = Annotated[bool, _flag("async-write")]
WriteThreadsOpt = Annotated[int | None, typer.Option("--write-threads", hidden=True, min=1)]


def device(given: str | None, *, cuda: bool, gpu_rich: bool) -> str:
    """`--cuda`/`--gpu-rich` mean `--device cuda` unless --device is given; moemerge's default is cpu."""
    if given is not None:
        return given
    return "cuda" if cuda or gpu_rich else "cpu"


def apply(
    *, num_threads: int | None, transformers_cache: Path | None, safe_serialization: bool, ignored: dict[str, object]
) -> None:
    """Carry out the options that have an effect in this process; log the no-ops (`ignored`: name -> value given)."""
    if not safe_serialization:
        raise ConfigError("--no-safe-serialization: moemerge writes only safetensors files; drop the option")
    if num_threads is not None:
        import torch

        torch.set_num_threads(num_threads)
    if transformers_cache is not None:
        from moemerge.sources import hub_reach as hub_access

        hub_access.use_cache(transformers_cache)
    for name, value in ignored.items():
        if value not in (None, False):
            log.info("--%s: accepted for mergekit-moe compatibility, no effect (%s)", name.replace("_", "-"),
                     NO_EFFECT[name])  # fmt: skip
