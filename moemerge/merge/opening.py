"""Opening the models a config names: the base first (sanity-checked before anything iterates over it), then the
experts, indexed (and, from the Hub, downloaded) for the base's MLP tensors only."""

from __future__ import annotations

from pathlib import Path

from moemerge.config.schema import MergeConfig, normalise_dtype
from moemerge.errors import SourceError
from moemerge.merge import checks
from moemerge.sources import lora_source as adapters
from moemerge.sources.folder import ModelSource, open_source


def open_models(
    config: MergeConfig, base_dir: Path, *, headers_only: bool
) -> tuple[list[ModelSource | None], list[str]]:
    """Base, experts, shared experts in that order (None where a model could not be opened) and the problems. Every
    model is tried: without a usable base, the experts are still opened on their own, for their own problems."""
    refs = [config.base_model] + [e.source_model for e in config.experts + (config.shared_experts or [])]
    labels = ["base_model"] + [f"experts[{i}]" for i in range(len(config.experts))]
    labels += [f"shared_experts[{i}]" for i in range(len(config.shared_experts or []))]
    problems, base_ref = [], refs[0]
    if (split := adapters.split_ref(base_ref, base_dir=base_dir)) is not None:
        problems.append(f"base_model: '{base_ref}': a LoRA reference (BASE+ADAPTER) can be an expert, not the base; "
                        "use the adapter's base model as base_model")  # fmt: skip
        base_ref = split[0]  # the adapter's base stands in, so that the experts are still checked against it
    try:
        base = open_source(base_ref, base_dir=base_dir, side_files=True, headers_only=headers_only)
        problems += checks.check_base_config(base)  # before anything iterates over the base's layers
    except SourceError as exc:
        base = None
        problems.append(f"base_model: {exc}")
    usable = base is not None and not problems
    opened: dict[str, ModelSource] = {refs[0]: base} if usable else {}
    models: list[ModelSource | None] = [base if usable else None]
    for ref, label in zip(refs[1:], labels[1:]):
        try:
            if ref not in opened:
                opened[ref] = _open_expert(ref, base if usable else None, base_dir, headers_only)
            models.append(opened[ref])
        except SourceError as exc:
            problems.append(f"{label}: {exc}")
            models.append(None)
    return models, problems


def _open_expert(ref: str, base: ModelSource | None, base_dir: Path, headers_only: bool) -> ModelSource:
    """An expert indexed (and, from the Hub, downloaded) for the base's MLP tensors only; without a base, only
    opened (headers, nothing downloaded) to find its own problems."""
    if base is None:
        nothing = lambda _: False  # noqa: E731
        if (split := adapters.split_ref(ref, base_dir=base_dir)) is None:
            return open_source(ref, base_dir=base_dir, wanted=nothing, headers_only=True)
        adapters.open_adapter(split[1], base_dir=base_dir, headers_only=True)
        return open_source(split[0], base_dir=base_dir, wanted=nothing, headers_only=True)
    wanted = checks.mlp_names(base.config).__contains__
    if adapters.split_ref(ref, base_dir=base_dir) is None:
        return open_source(ref, base_dir=base_dir, wanted=wanted, headers_only=headers_only)
    return adapters.open_lora(ref, base_dir=base_dir, wanted=wanted, headers_only=headers_only)


def output_dtype(config: MergeConfig, base: ModelSource) -> str:
    if config.dtype:
        return config.dtype
    declared = base.config.get("dtype") or base.config.get("torch_dtype")
    try:
        return normalise_dtype(declared) if declared else base.tensors["model.embed_tokens.weight"].dtype
    except (ValueError, KeyError):
        return "float32"
