"""Registry of output architectures and the automatic choice between them."""

from __future__ import annotations

from typing import Any

from moemerge.archs.base import DENSE_MLP, MoeShape, OutputArch
from moemerge.archs.mixtral import MIXTRAL

ARCHITECTURES: dict[str, OutputArch] = {arch.name: arch for arch in (MIXTRAL,)}

__all__ = ["ARCHITECTURES", "DENSE_MLP", "MoeShape", "OutputArch", "choose_architecture"]


def choose_architecture(
    requested: str | None, config: dict[str, Any], tensor_names: set[str], *, num_shared: int
) -> tuple[OutputArch | None, list[str]]:
    """The requested (or first fitting) architecture, or None and one reason per candidate."""
    if requested is not None and requested not in ARCHITECTURES:
        return None, [f"{requested}: not supported by this version of moemerge (use {', '.join(ARCHITECTURES)})"]
    candidates = [ARCHITECTURES[requested]] if requested else list(ARCHITECTURES.values())
    reasons = []
    for arch in candidates:
        why = arch.reasons(config, tensor_names)
        if num_shared > arch.max_shared_experts:
            why.append(f"takes at most {arch.max_shared_experts} shared experts, the config gives {num_shared}")
        if not why:
            return arch, []
        reasons += [f"{arch.name}: {reason}" for reason in why]
    return None, reasons
