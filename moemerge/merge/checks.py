"""Cross-model validation before any weight is read (config.json files and safetensors headers only).

Each check returns a list of problems; the pipeline gathers them all and raises once.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path

from moemerge.archs import MoeShape, OutputArch, effective
from moemerge.archs.inputs import mlp_source_names
from moemerge.config.schema import PROMPT_GATE_MODES, MergeConfig
from moemerge.errors import MergeFailedError
from moemerge.sources.folder import ModelSource

log = logging.getLogger(__name__)
SHAPE_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads")


def _prompt_problems(where: str, prompts: list[str] | None) -> list[str]:
    """An empty prompt is only the BOS token: mergekit-moe uses it, so it is a warning, not a problem."""
    for i, prompt in enumerate(prompts or []):
        if not prompt.strip():
            log.warning("%s[%d]: empty prompt, so only the BOS token is used (as mergekit-moe does)", where, i)
    return []


def check_config_rules(config: MergeConfig) -> list[str]:
    """Rules on the config alone: experts_per_token, prompts, prompt sets."""
    problems = []
    n = len(config.experts)
    if config.experts_per_token > n:
        problems.append(f"experts_per_token: {config.experts_per_token} is more than the {n} expert(s) given")
    needs_prompts = config.gate_mode in PROMPT_GATE_MODES
    for group, entries in (("experts", config.experts), ("shared_experts", config.shared_experts or [])):
        for i, expert in enumerate(entries):
            if needs_prompts and group == "experts" and not expert.positive_prompts:
                problems.append(
                    f"{group}[{i}].positive_prompts: gate_mode '{config.gate_mode}' needs positive prompts for every "
                    "expert (or use gate_mode random)"
                )
            problems += _prompt_problems(f"{group}[{i}].positive_prompts", expert.positive_prompts)
            problems += _prompt_problems(f"{group}[{i}].negative_prompts", expert.negative_prompts)
    prompt_sets = {(frozenset(e.positive_prompts or []), frozenset(e.negative_prompts or [])) for e in config.experts}
    if needs_prompts and n > 1 and len(prompt_sets) == 1 and config.experts[0].positive_prompts:
        problems.append("experts: every expert has the same prompts, so their routers would be identical; give each "
                        "expert prompts of its own")  # fmt: skip
    return problems


def _dims(config: dict) -> dict[str, object]:
    dims = {key: config.get(key) for key in SHAPE_KEYS}
    dims["num_key_value_heads"] = dims["num_key_value_heads"] or dims["num_attention_heads"]
    heads = config.get("num_attention_heads") or 1
    dims["head_dim"] = config.get("head_dim") or (config.get("hidden_size") or 0) // heads
    return dims


def _missing_mlp(base: ModelSource, expert: ModelSource, label: str) -> list[str]:
    wanted = [name for name in base.tensors if name in mlp_names(base.config)]
    missing = [name for name in wanted if name not in expert.tensors]
    wrong = [n for n in wanted if n in expert.tensors and expert.tensors[n].shape != base.tensors[n].shape]
    problems = []
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        problems.append(
            f"{label}: missing MLP tensor {missing[0]}{more}; the expert must be a full model of the same shape"
        )
    if wrong:
        n = wrong[0]
        problems.append(
            f"{label}: {n} has shape {list(expert.tensors[n].shape)}, base has {list(base.tensors[n].shape)}"
        )
    return problems


SIZE_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
LAYER_NAME = re.compile(r"^model\.layers\.(\d+)\.")


def check_base_config(base: ModelSource) -> list[str]:
    """The base's config.json must be sane before anything iterates over it: positive sizes, and as many layers as
    its weights hold (a hostile or broken config must not make moemerge loop over a billion layers)."""
    bad = [k for k in SIZE_KEYS if not isinstance(base.config.get(k), int) or base.config[k] <= 0]
    if bad:
        return [f"base_model '{base.ref}': config.json needs a positive integer {bad[0]} (a dense decoder config)"]
    layers = {int(m.group(1)) for name in base.tensors if (m := LAYER_NAME.match(name))}
    declared = base.config["num_hidden_layers"]
    if len(layers) != declared or (layers and (min(layers), max(layers)) != (0, declared - 1)):
        held = f"layers 0..{max(layers)}" if layers else "no model.layers.N tensors"
        return [f"base_model '{base.ref}': config.json says num_hidden_layers {declared}, the weights hold {held}"]
    return []


def mlp_names(config: dict) -> set[str]:
    """Every MLP tensor name the base config implies (what each expert must supply)."""
    return mlp_source_names(config)


def check_models(base: ModelSource, experts: list[tuple[str, ModelSource]], *, allow_crimes: bool) -> list[str]:
    """Families, shapes and MLP tensors of every expert against the base."""
    problems = []
    missing_in_base = sorted(mlp_names(base.config) - set(base.tensors))
    if missing_in_base:
        problems.append(f"base_model '{base.ref}': no dense MLP tensor {missing_in_base[0]} "
                        f"(model_type '{base.model_type}' is not a dense llama/mistral/qwen/phi3-style model)")  # fmt: skip
    base_dims = _dims(base.config)
    for label, expert in experts:
        label = f"{label} '{expert.ref}'"
        if expert.model_type != base.model_type and not allow_crimes:
            problems.append(f"{label}: model_type '{expert.model_type}' differs from the base's '{base.model_type}' "
                            "(pass --allow-crimes to merge across families of the same shape)")  # fmt: skip
        dims = _dims(expert.config)
        mismatched = [key for key in dims if dims[key] != base_dims[key]]
        if len(mismatched) > 1 and "head_dim" in mismatched:
            mismatched.remove("head_dim")  # a derived head_dim only echoes the hidden size or head count
        problems += [f"{label}: {key} is {dims[key]}, the base has {base_dims[key]}" for key in mismatched]
        if dims == base_dims and not missing_in_base:
            problems += _missing_mlp(base, expert, label)
        problems += _mlp_differences(base, expert, label)
        vocab, base_vocab = expert.config.get("vocab_size"), base.config.get("vocab_size")
        if vocab != base_vocab:
            log.warning("%s: vocab_size %s differs from the base's %s (only the base's embeddings are used)",
                        label, vocab, base_vocab)  # fmt: skip
    return problems


def _mlp_settings(model: ModelSource) -> dict[str, object]:
    """What, besides its weights, decides what a model's MLP computes (dropout, vocab padding, ... do not)."""
    found = effective.settings(model.config)
    biased = found.mlp_bias or any(n.endswith(".bias") and ".mlp." in n for n in model.tensors)
    return {"hidden_act": found.hidden_act, "mlp_bias": biased}


def _mlp_differences(base: ModelSource, expert: ModelSource, label: str) -> list[str]:
    """One line for an expert whose MLP computes differently from the base's: the MoE runs every expert's tensors
    through the base's activation and without biases."""
    try:
        mine = _mlp_settings(base)
    except ValueError:
        return []  # the output architecture check says why the base cannot be merged
    try:
        theirs = _mlp_settings(expert)
    except ValueError as exc:
        return [f"{label}: transformers cannot read its config.json ({(str(exc).splitlines() or [''])[0]})"]
    diffs = [f"{key} {theirs[key]!r} where the base has {mine[key]!r}" for key in mine if theirs[key] != mine[key]]
    if not diffs:
        return []
    why = f"its MLP computes differently from the base's ({', '.join(diffs)})"
    return [f"{label}: {why}; the MoE would run it with the base's settings: use an expert fine-tuned from the base"]


def check_output_config(arch: OutputArch, base_config: dict, shape: MoeShape) -> None:
    """Before anything is written: the output config.json, read back through its class, must give every setting the
    base has (heads, head_dim, norm eps, rope, windows, activation, ...), so that no class default slips in."""
    written = arch.build_config(base_config, shape)
    try:
        base = effective.settings(base_config)
        diffs = effective.mismatches(base, effective.settings(written))
        if not diffs and "transformers" in sys.modules and arch.model_type != "deepseek":
            # transformers is loaded anyway (a hidden-state pass): its own class reads the output too, for free
            diffs = effective.mismatches(base, effective.settings(written, via_transformers=True))
    except ValueError as exc:
        diffs = [f"transformers refuses it ({(str(exc).splitlines() or [''])[0]})"]
    if diffs:
        raise MergeFailedError(f"internal error: the {arch.class_name} config.json moemerge would write does not "
                               f"reproduce the base: {'; '.join(diffs)}; nothing was written (please report this)")  # fmt: skip


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def check_tokenizer(base: ModelSource, gate_mode: str) -> list[str]:
    """Prompt gate modes tokenise with the base's tokenizer: it must be there before any work starts."""
    if gate_mode not in PROMPT_GATE_MODES or not base.has_files:
        return []
    if any((base.path / name).is_file() for name in TOKENIZER_FILES):
        return []
    need = f"gate_mode '{gate_mode}' tokenises the prompts with it (add them, or use gate_mode random)"
    return [f"base_model: {base.path} has no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}); {need}"]


def check_distinct(
    base: ModelSource, experts: list[ModelSource], *, allow_same: bool, gate_mode: str = "hidden"
) -> list[str]:
    """All experts the same model makes a MoE that equals one dense model; refuse unless the user insists. Random
    gates are exempt, as in mergekit-moe: copies of one model with random routers are the start of upcycling."""
    if gate_mode not in PROMPT_GATE_MODES:
        return []
    if allow_same or len(experts) < 2 or len({_identity(e) for e in experts}) > 1:
        return []
    flag = "--i-understand-this-is-not-useful-without-training"
    return [f"experts: every expert is the same model, so the MoE equals that dense model; pass {flag} to build it"]


def _identity(model: ModelSource) -> tuple:
    """Where a model's weights come from: its folder, or a LoRA expert's model folder and adapter folder."""
    return tuple((origin.get("path"), origin.get("revision")) for origin in model.origins)


def check_out_is_not_a_source(out: Path, models: list[ModelSource]) -> list[str]:
    """--overwrite into a source model's folder (or a folder holding one) would delete that model."""
    target = out.resolve()
    for origin in (o for model in dict.fromkeys(models) for o in model.origins):  # a LoRA expert: model and adapter
        source = Path(origin["path"]).resolve()
        if target == source or target in source.parents:
            return [f"{out}: holds the source model '{origin['model']}'; write the merge to another folder"]
    return []


def check_output(out: Path, *, overwrite: bool) -> list[str]:
    """OUT must be absent, empty, or replaceable with --overwrite; its parent must be writable."""
    if out.exists() and not out.is_dir():
        return [f"{out}: exists and is not a folder"]
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        return [f"{out}: folder exists and is not empty; pass --overwrite to replace it"]
    parent = out.resolve().parent
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK | os.X_OK):
        return [f"{parent}: not writable; choose another output folder"]
    return []
