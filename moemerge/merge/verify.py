"""`moemerge verify OUT`: shard/index integrity, a tensor census against config.json, config consistency, and (full
check) a load with every key accounted for, a short generation and sane routers. Returns findings; never raises on
a broken folder."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

from moemerge.archs import ARCHITECTURES, OutputArch
from moemerge.errors import MoemergeError, SourceError
from moemerge.forward.loading import LoadOptions, free_memory, input_device, loaded_model
from moemerge.sources.folder import TensorInfo, read_safetensors_header
from moemerge.sources.headers import read_json

log = logging.getLogger(__name__)
INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
LAYER = re.compile(r"^model\.layers\.(\d+)\.")


def check_files(folder: Path) -> tuple[dict[str, TensorInfo], list[str], set[str]]:
    """Every tensor in the weight files, what is wrong with the files and the index, and the weight files that are
    missing or unreadable."""
    if (folder / INDEX).is_file():
        try:
            weight_map = read_json(folder / INDEX)["weight_map"]
            assert isinstance(weight_map, dict)
        except (OSError, ValueError, KeyError, TypeError, AssertionError):
            return {}, [f"{INDEX}: not a valid index (needs a `weight_map` object)"], set()
        files = sorted(set(weight_map.values()))
    elif (folder / SINGLE).is_file():
        weight_map, files = None, [SINGLE]
    else:
        return {}, [f"no {SINGLE} or {INDEX}"], set()
    tensors: dict[str, TensorInfo] = {}
    findings: list[str] = []
    broken = set()  # missing or unreadable files: reported once, not once per tensor they should hold
    for name in files:
        if Path(name).name != name or not (folder / name).is_file():
            findings.append(f"{name}: listed in the index but missing")
            broken.add(name)
            continue
        try:
            header = read_safetensors_header(folder / name)
        except SourceError as exc:
            findings.append(str(exc).replace(f"{folder}{os.sep}", ""))
            broken.add(name)
            continue
        for tensor, info in header.items():
            if weight_map is not None and weight_map.get(tensor) != name:
                findings.append(f"{name}: holds '{tensor}', which the index does not map to this file")
            tensors.setdefault(tensor, info)
    if weight_map is not None:
        findings += [f"{INDEX}: '{t}' maps to {f}, which does not hold it" for t, f in weight_map.items()
                     if t not in tensors and f not in broken]  # fmt: skip
        stray = sorted(p.name for p in folder.glob("*.safetensors") if p.name not in files)
        findings += [f"{name}: a weight file the index does not list" for name in stray]
    return tensors, findings, broken


def _arch(config: dict[str, Any]) -> OutputArch | None:
    return next((a for a in ARCHITECTURES.values() if a.model_type == config.get("model_type")), None)


def expected_tensors(arch: OutputArch, config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """The MoE tensors config.json promises: routers, every expert's MLP, the shared expert and its gate."""
    shape = arch.shape_of(config)
    hidden, size, shared = config["hidden_size"], shape.intermediate_size, shape.shared_intermediate_size
    dims = {"gate": (size, hidden), "up": (size, hidden), "down": (hidden, size)}
    out = {}
    for layer in range(config["num_hidden_layers"]):
        out[arch.router.format(layer=layer)] = (shape.num_experts, hidden)
        for expert in range(shape.num_experts):
            out.update({t.format(layer=layer, expert=expert): dims[r] for r, t in arch.experts.items()})
        if shared:
            shared_dims = {"gate": (shared, hidden), "up": (shared, hidden), "down": (hidden, shared)}
            out.update({t.format(layer=layer): shared_dims[r] for r, t in arch.shared_expert.items()})
            if arch.shared_gate:
                out[arch.shared_gate.format(layer=layer)] = (1, hidden)
    return out


def check_census(config: dict[str, Any], tensors: dict[str, TensorInfo]) -> list[str]:
    """config.json against the tensors: counts, shapes, nothing missing, nothing extra in the MoE blocks."""
    arch = _arch(config)
    if arch is None:
        return [f"config.json: model_type '{config.get('model_type')}' is not a MoE layout moemerge writes"]
    try:
        shape = arch.shape_of(config)
        expected = expected_tensors(arch, config)
    except (KeyError, TypeError) as exc:
        return [f"config.json: missing or invalid field {exc} for {arch.class_name}"]
    findings = []
    if not 1 <= shape.experts_per_token <= shape.num_experts:
        findings.append(f"config.json: num_experts_per_tok {shape.experts_per_token} with {shape.num_experts} experts")
    for name, dims in expected.items():
        if name not in tensors:
            findings.append(f"missing tensor {name} {list(dims)}")
        elif tensors[name].shape != dims:
            findings.append(f"{name}: shape {list(tensors[name].shape)}, config.json implies {list(dims)}")
    moe_part = re.compile(r"\.(block_sparse_moe|mlp)\.(experts|shared_experts?|gate|shared_expert_gate)\b")
    layers = config["num_hidden_layers"]
    for name in sorted(tensors):
        match = LAYER.match(name)
        if match and int(match.group(1)) >= layers:
            findings.append(f"{name}: layer beyond num_hidden_layers {layers}")
        elif moe_part.search(name) and name not in expected:
            findings.append(f"{name}: not part of the MoE layout config.json describes")
    embed = tensors.get("model.embed_tokens.weight")
    if embed is not None and embed.shape != (config.get("vocab_size"), config["hidden_size"]):
        findings.append(f"model.embed_tokens.weight: shape {list(embed.shape)}, config.json implies "
                        f"{[config.get('vocab_size'), config['hidden_size']]}")  # fmt: skip
    return findings


def check_structure(folder: Path) -> tuple[list[str], dict[str, Any], dict[str, TensorInfo]]:
    """The cheap checks (no tensor data read): files, index, census, config.
    Returns (findings, config, tensors) so that later checks need not read them again."""
    if folder.is_dir() and not any(folder.iterdir()):
        return ["the folder is empty; give the folder a merge wrote"], {}, {}
    try:
        config = read_json(folder / "config.json")
        assert isinstance(config, dict)
    except (OSError, ValueError, AssertionError):
        return ["config.json missing or not a JSON object; not a merged model"], {}, {}
    tensors, findings, broken = check_files(folder)
    if tensors and not broken:  # with a file missing or broken, the census would only echo that once per tensor
        findings += check_census(config, tensors)
    return findings, config, tensors


def check_routers(folder: Path, config: dict[str, Any], tensors: dict[str, TensorInfo]) -> tuple[list[str], list[str]]:
    """Routers must be finite with no all-zero row; near-degenerate layers (moemerge.gates.degenerate_layers, with
    the experts' negative prompts from moemerge.yml when it is there) are only noted."""
    import torch
    from safetensors import safe_open

    from moemerge.gates import degenerate_layers

    arch = _arch(config)
    findings, sound = [], {}
    for layer in range(config["num_hidden_layers"]):
        name = arch.router.format(layer=layer)
        if name not in tensors:
            continue
        with safe_open(str(tensors[name].file), "pt") as f:
            router = f.get_tensor(name).double()
        if not torch.isfinite(router).all():
            findings.append(f"{name}: router has NaN or Inf values")
        elif (router.norm(dim=-1) == 0).any():
            findings.append(f"{name}: router has an all-zero row (that expert can never win)")
        elif router.shape[0] > 1:
            sound[layer] = router.numpy()
    notes = []
    if sound:
        layers = list(sound)
        bad = degenerate_layers(list(sound.values()), contrastive=_contrastive(folder, len(sound[layers[0]])))
        notes = [f"routers near-degenerate ({why}) in layers {[layers[i] for i in bad if bad[i] == why]}"
                 for why in dict.fromkeys(bad.values())]  # fmt: skip
    return findings, notes


def _contrastive(folder: Path, experts: int) -> list[bool] | None:
    """Which experts were given negative prompts, from OUT/moemerge.yml; None when it cannot tell."""
    import yaml

    try:
        recorded = yaml.safe_load((folder / "moemerge.yml").read_text(encoding="utf-8"))["experts"]
        flags = [bool(expert.get("negative_prompts")) for expert in recorded]
    except (OSError, ValueError, yaml.YAMLError, KeyError, TypeError, AttributeError):
        return None
    return flags if len(flags) == experts else None


def check_loading(folder: Path, config: dict[str, Any], load: LoadOptions) -> tuple[list[str], list[str]]:
    """Load with transformers (every key accounted for) and generate a few tokens. The checkpoint's own dtype and
    device_map=auto by default, so a model larger than RAM spills to disk instead of failing."""
    import torch

    if config.get("auto_map") and not load.trust_remote_code:
        return [], ["load and generation skipped: this layout needs its own code; pass --trust-remote-code"]
    try:
        with loaded_model(folder, load, causal_lm=True, saved_dtype=True, loading_info=True) as (model, info):
            findings = [f"transformers reports {key.replace('_', ' ')}: {sorted(info[key])[:5]}"
                        for key in ("missing_keys", "unexpected_keys", "mismatched_keys") if info.get(key)]  # fmt: skip
            start = config.get("bos_token_id")
            start = start[0] if isinstance(start, list) else (start if isinstance(start, int) else 0)
            with torch.inference_mode():
                ids = torch.tensor([[start]], device=input_device(model))
                logits = model(ids).logits
                generated = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4,
                                           do_sample=False, pad_token_id=start)  # fmt: skip
            kind = type(model).__name__
    except MoemergeError as exc:
        return [f"transformers cannot load it: {exc}"], []
    except Exception as exc:  # noqa: BLE001 -- any failure to load or generate is the finding
        return [
            f"transformers cannot load or run it: {exc.__class__.__name__}: {(str(exc).splitlines() or [''])[0]}"
        ], []
    free_memory()
    if not torch.isfinite(logits.float()).all():
        findings.append("the model's logits contain NaN or Inf")
    if generated.shape[1] < 2:
        findings.append("generation produced no tokens")
    return findings, [f"loads as {kind} and generates"] if not findings else []


def verify(folder: Path, *, full: bool = True, load: LoadOptions | None = None) -> tuple[list[str], list[str]]:
    """(findings, notes) for a merged folder; no findings means it is sound."""
    findings, config, tensors = check_structure(folder)
    notes = (
        [f"{len(tensors)} tensors, index and shards consistent with config.json"] if tensors and not findings else []
    )
    if findings or not full:
        return findings, notes
    router_findings, router_notes = check_routers(folder, config, tensors)
    load_findings, load_notes = check_loading(folder, config, load or LoadOptions(device="auto"))
    return router_findings + load_findings, notes + router_notes + load_notes
