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
    """Base, experts, shared experts in that order (None where a model could not be opened) and the problems."""
    refs = [config.base_model] + [e.source_model for e in config.experts + (config.shared_experts or [])]
    labels = ["base_model"] + [f"experts[{i}]" for i in range(len(config.experts))]
    labels += [f"shared_experts[{i}]" for i in range(len(config.shared_experts or []))]
    opened: dict[str, ModelSource] = {}
    models, problems = [], []
    for i, (ref, label) in enumerate(zip(refs, labels)):
        try:
            if i == 1 and (base_problems := checks.check_base_config(models[0])):
                problems += base_problems  # before anything iterates over the base's layers
                break
            if ref not in opened:
                # experts are indexed (and downloaded) for the base's MLP tensors only
                wanted = (lambda _: True) if i == 0 else checks.mlp_names(opened[refs[0]].config).__contains__
                if adapters.split_ref(ref, base_dir=base_dir) is None:
                    opened[ref] = open_source(ref, base_dir=base_dir, wanted=wanted, side_files=i == 0,
                                              headers_only=headers_only)  # fmt: skip
                elif i == 0:
                    raise SourceError(f"'{ref}': a LoRA reference (BASE+ADAPTER) can be an expert, not the base; "
                                      "use the adapter's base model as base_model")  # fmt: skip
                else:
                    opened[ref] = adapters.open_lora(ref, base_dir=base_dir, wanted=wanted, headers_only=headers_only)
            models.append(opened[ref])
        except SourceError as exc:
            problems.append(f"{label}: {exc}")
            models.append(None)
            if i == 0:
                break  # without the base there is nothing to compare the experts with
    return models, problems


def output_dtype(config: MergeConfig, base: ModelSource) -> str:
    if config.dtype:
        return config.dtype
    declared = base.config.get("dtype") or base.config.get("torch_dtype")
    try:
        return normalise_dtype(declared) if declared else base.tensors["model.embed_tokens.weight"].dtype
    except (ValueError, KeyError):
        return "float32"
