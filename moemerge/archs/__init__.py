"""Registry of output architectures and the automatic choice between them."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from moemerge.archs.base import DENSE_MLP, MoeShape, OutputArch
from moemerge.archs.deepseek import DEEPSEEK
from moemerge.archs.inputs import input_warnings
from moemerge.archs.mixtral import MIXTRAL
from moemerge.archs.qwen2_moe import QWEN2_MOE
from moemerge.archs.qwen3_moe import QWEN3_MOE

# order = preference when the config names no architecture: llama/mistral -> mixtral, qwen2 -> qwen2_moe, ...
ARCHITECTURES: dict[str, OutputArch] = {arch.name: arch for arch in (MIXTRAL, QWEN2_MOE, QWEN3_MOE, DEEPSEEK)}

__all__ = ["ARCHITECTURES", "DENSE_MLP", "MoeShape", "OutputArch", "choose_architecture"]


def choose_architecture(
    requested: str | None, config: dict[str, Any], tensor_names: set[str], *, num_shared: int
) -> tuple[OutputArch | None, list[str]]:
    """The requested (or first fitting) architecture, or None and one reason per candidate. The architecture's
    warnings include those this base brings (said at merge time and in the model card)."""
    if requested is not None and requested not in ARCHITECTURES:
        return None, [f"{requested}: not supported by this version of moemerge (use {', '.join(ARCHITECTURES)})"]
    candidates = [ARCHITECTURES[requested]] if requested else list(ARCHITECTURES.values())
    reasons = []
    for arch in candidates:
        why = arch.reasons(config, tensor_names)
        if num_shared > arch.max_shared_experts:
            allowed = (
                f"at most {arch.max_shared_experts} shared expert" if arch.max_shared_experts else "no shared expert"
            )
            why.append(f"takes {allowed}{'s' if arch.max_shared_experts != 1 else ''}, the config gives {num_shared}")
        if not why:
            extra = input_warnings(config, arch.class_name)
            return (replace(arch, warnings=arch.warnings + extra) if extra else arch), []
        reasons += [f"{arch.name}: {reason}" for reason in why]
    return None, reasons
