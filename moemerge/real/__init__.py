"""Real-model assets for the demo, the real-model tests and the benchmarks: SmolLM2-135M-Instruct as a float32
base, three MLP-only fine-tunes of it (code, math, prose) and their held-out texts, built offline and cached.
Never imported by the merge path: `python -m moemerge.real` or `moemerge.real.assets()`."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from moemerge.real import base as _base
from moemerge.real import data as _data
from moemerge.real import experts as _experts
from moemerge.real.cache import built, cache_root

SEED = 0
DATA_RECIPE = {"what": "data", "seed": SEED, "python": list(sys.version_info[:2]), "version": 2}


@dataclass(frozen=True)
class Assets:
    base: Path
    experts: dict[str, Path]  # domain -> expert model folder
    eval_files: dict[str, Path]  # domain -> held-out text file
    prompts: dict[str, list[str]]  # domain -> positive prompts (train side), for the gate config
    held_out_prompts: dict[str, list[str]]  # domain -> prompts from the held-out text, for routing checks


def _write_data(folder: Path) -> None:
    domains = _data.domains(SEED)
    for name, domain in domains.items():
        (folder / f"{name}.txt").write_text(domain.held_out)
        (folder / f"{name}.train.txt").write_text(domain.train)
    for file, field in (("prompts.yaml", "prompts"), ("held_out_prompts.yaml", "held_out_prompts")):
        sets = {name: getattr(domain, field) for name, domain in domains.items()}
        (folder / file).write_text(yaml.safe_dump(sets, sort_keys=False, allow_unicode=True))


def assets(cache: str | Path | None = None) -> Assets:
    """Build what is missing under the cache (see cache.cache_root) and return where everything is."""
    root = cache_root(cache) / "real"
    base = _base.base_model(root)
    data = built(root / "data", DATA_RECIPE, _write_data, "held-out and training texts")
    experts = {}
    for name in _data.DOMAINS:
        recipe = {"what": "expert", "domain": name, "training": _experts.TRAINING, "seed": SEED,
                  "base": _base.RECIPE, "data": DATA_RECIPE}  # fmt: skip
        text = (data / f"{name}.train.txt").read_text()

        def build(folder: Path, name=name, text=text) -> None:
            _experts.build_expert(base, folder, text, seed=SEED, name=name)

        experts[name] = built(root / "experts" / name, recipe, build, f"{name} expert")
    return Assets(
        base=base,
        experts=experts,
        eval_files={name: data / f"{name}.txt" for name in _data.DOMAINS},
        prompts=yaml.safe_load((data / "prompts.yaml").read_text()),
        held_out_prompts=yaml.safe_load((data / "held_out_prompts.yaml").read_text()),
    )


def merge_config(
    found: Assets, *, gate_mode: str = "mlp_input_avg", experts_per_token: int = 1, contrast: bool = True
) -> dict:
    """A moemerge config (as a dict) merging the real experts over the real base, in float32. `contrast`: each
    expert's negative prompts are the other domains' prompts, so its router row leaves out what all domains share.
    The defaults route each domain's held-out prompts to its own expert best (tests/test_real_models.py)."""
    experts = []
    for name, path in found.experts.items():
        expert = {"source_model": str(path), "positive_prompts": found.prompts[name]}
        if contrast:
            expert["negative_prompts"] = [p for other, ps in found.prompts.items() if other != name for p in ps]
        experts.append(expert)
    return {"base_model": str(found.base), "gate_mode": gate_mode, "dtype": "float32",
            "experts_per_token": experts_per_token, "experts": experts}  # fmt: skip


def write_config(path: Path, found: Assets, **options) -> Path:
    """merge_config() written as YAML to `path`."""
    path.write_text(yaml.safe_dump(merge_config(found, **options), sort_keys=False, allow_unicode=True))
    return path


def training_record(found: Assets) -> dict[str, dict]:
    """Each expert's training.json: steps, seconds, threads and the loss of every step."""
    return {name: json.loads((path / "training.json").read_text()) for name, path in found.experts.items()}
