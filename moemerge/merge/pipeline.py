"""The one place that wires the steps: config -> checks -> routers -> plan -> tensor stream -> writer -> rename."""

from __future__ import annotations

import errno
import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from moemerge.archs import MoeShape, OutputArch, choose_architecture
from moemerge.config import spellings
from moemerge.config.schema import MergeConfig, dump_config, read_config
from moemerge.errors import (
    ConfigError,
    IncompatibleModelsError,
    MergeFailedError,
    MoemergeError,
    OutputError,
    problems_error,
)
from moemerge.forward import routing
from moemerge.forward.loading import LoadOptions
from moemerge.gates import GateContext, compute_routers, hidden
from moemerge.merge import checks, output, tuned, verify
from moemerge.merge.opening import open_models, output_dtype
from moemerge.merge.stream import stream_tensors
from moemerge.merge.tensor_plan import ExpertSpec, Plan, build_plan
from moemerge.merge.writer import ShardLayout, write_shards
from moemerge.publish import card
from moemerge.sources import hub
from moemerge.sources.folder import ModelSource, resolve_path
from moemerge.training import record, run

log = logging.getLogger(__name__)
Progress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass(frozen=True)
class MergeOptions:
    """Command-line options that shape a merge (the config file holds the rest)."""

    out_shard_size: int = 5_000_000_000
    copy_tokenizer: bool = True
    seed: int | None = None
    overwrite: bool = False
    allow_crimes: bool = False
    allow_same_experts: bool = False
    # how the hidden-state pass (and the routing report) load a model
    load: LoadOptions = field(default_factory=LoadOptions)
    routing_report: bool = False
    license: str | None = None  # for the model card; default: the base's
    write_card: bool = True  # README.md (mergekit's --no-write-model-card turns it off)


@dataclass
class Prepared:
    """Everything known before a weight is read: the checked inputs, the architecture and the plan."""

    config: MergeConfig
    base: ModelSource
    experts: list[ModelSource]
    shared: list[ModelSource]
    arch: OutputArch
    dtype: str
    seed: int
    config_dir: Path = Path()  # relative model paths in the config are relative to it (or to the working folder)
    plan: Plan = field(init=False)


def prepare(config_path: Path, out: Path | None, options: MergeOptions) -> Prepared:
    """Load and check everything from config.json files and headers only; raises once with every problem.
    `out` None: a dry run (`moemerge plan`), which has no output folder to check."""
    config, problems = read_config(config_path)  # every problem at once: the models are checked despite these
    error = ConfigError if problems else IncompatibleModelsError
    if config is None:
        raise problems_error(ConfigError, problems)
    problems += checks.check_config_rules(config)
    if out is not None:
        problems += checks.check_output(out, overwrite=options.overwrite)
    models, open_problems = open_models(config, config_path.resolve().parent, headers_only=out is None)
    problems += open_problems
    if open_problems:
        raise problems_error(error, problems)
    base, rest = models[0], models[1:]
    experts, shared = rest[: len(config.experts)], rest[len(config.experts) :]
    labelled = [(f"experts[{i}]", m) for i, m in enumerate(experts)] + [
        (f"shared_experts[{i}]", m) for i, m in enumerate(shared)
    ]
    problems += checks.check_models(base, labelled, allow_crimes=options.allow_crimes)
    problems += checks.check_distinct(base, experts, allow_same=options.allow_same_experts, gate_mode=config.gate_mode)
    # the hidden-state pass's own checks (device, prompt lengths) need the tokenizer that check_tokenizer vouches for
    problems += checks.check_tokenizer(base, config.gate_mode) or hidden.check_inputs(config, base, options.load)
    if out is not None:
        problems += checks.check_out_is_not_a_source(out, [base, *experts, *shared])
    requested = spellings.for_base(config.architecture, base.model_type)  # `qwen`: the base's Qwen layout
    arch, reasons = choose_architecture(requested, base.config, set(base.tensors), num_shared=len(shared))
    if arch is None:
        problems.append("no output architecture fits these models: " + "; ".join(reasons))
    for i, section in enumerate(config.router_training or []):
        where = "router_training" if len(config.router_training) == 1 else f"router_training[{i}]"
        problems += run.check_section(section, arch.model_type if arch else None, len(config.experts), where=where)
    if problems:
        raise problems_error(error, problems)
    for warning in arch.warnings:
        log.warning("%s: %s", arch.name, warning)
    seed = options.seed if options.seed is not None else (config.seed if config.seed is not None else 0)
    prepared = Prepared(config, base, experts, shared, arch, output_dtype(config, base), seed,
                        config_path.resolve().parent)  # fmt: skip
    checks.check_output_config(arch, base.config, _moe_shape(prepared))  # before anything is written
    specs = [ExpertSpec(e.noise_scale or 0.0, 1.0 if e.residual_scale is None else e.residual_scale)
             for e in config.experts + (config.shared_experts or [])]  # fmt: skip
    prepared.plan = build_plan(
        arch=arch,
        base_config=base.config,
        headers=[m.tensors for m in [base, *experts, *shared]],
        experts=specs,
        num_routed=len(experts),
        hidden_size=int(base.config["hidden_size"]),
        dtype=prepared.dtype,
        max_shard_bytes=options.out_shard_size,
    )
    return prepared


def _moe_shape(prepared: Prepared) -> MoeShape:
    intermediate = int(prepared.base.config["intermediate_size"])
    shared_size = None
    if prepared.shared:
        shared_size = int(prepared.shared[0].config["intermediate_size"])
    elif prepared.arch.zero_shared_expert:
        shared_size = 1  # the zero-output shared expert
    return MoeShape(len(prepared.experts), prepared.config.experts_per_token, prepared.dtype, intermediate, shared_size)


def _side_files(prepared: Prepared, folder: Path, options: MergeOptions) -> dict:
    base = prepared.base
    shape = _moe_shape(prepared)
    card.write_json(folder / "config.json", prepared.arch.build_config(base.config, shape))
    names = hub.SIDE_FILES if options.copy_tokenizer else ("generation_config.json",)
    for name in names:
        if (base.path / name).is_file():
            shutil.copyfile(base.path / name, folder / name)

    def locate(ref: str) -> str:  # local folders absolute, so that moemerge.yml reruns from any folder
        folder = resolve_path(ref, base_dir=prepared.config_dir)
        return str(folder) if folder is not None else ref

    resolved_cfg = dump_config(prepared.config, locate=locate, dtype=prepared.dtype, seed=prepared.seed,
                               architecture=prepared.arch.name)  # fmt: skip
    origins = [o for m in dict.fromkeys([base, *prepared.experts, *prepared.shared]) for o in m.origins]
    sources = list({(o["model"], o["revision"]): o for o in origins}.values())  # a LoRA's base may be listed too
    resolved = card.resolved_config(resolved_cfg, sources=sources)
    card.write_resolved(folder, resolved)
    return resolved


def _routing_report(prepared: Prepared, folder: Path, options: MergeOptions) -> None:
    """The routing report is a bonus: when it cannot run, the merge still succeeds with a warning."""
    if not any(e.positive_prompts for e in prepared.config.experts):
        log.warning("routing report skipped: the experts have no positive prompts; after the merge, run "
                    "`moemerge route OUT --prompts FILE` with prompt sets of your own")  # fmt: skip
        return
    try:
        routing.report(folder, prompts=None, load=options.load)
    except Exception as exc:  # noqa: BLE001 -- a finished merge must not be lost to its report
        first = (str(exc).splitlines() or [""])[0].replace(str(folder), "OUT")  # not the temporary folder's name
        log.warning("routing report skipped: %s (after the merge, run `moemerge route OUT` to retry)", first)


def _card(prepared: Prepared, folder: Path, resolved: dict, *, name: str, license: str | None) -> None:
    shapes = {t.name: t.shape for t in prepared.plan.tensors}
    total, active = card.parameter_counts(shapes, num_experts=len(prepared.experts),
                                          experts_per_token=prepared.config.experts_per_token)  # fmt: skip
    hub_models = list(dict.fromkeys(hub.split_ref(o["model"])[0] for o in resolved["sources"] if o["revision"]))
    report = folder / routing.REPORT_JSON
    text = card.model_card(
        resolved,
        name=name,
        arch_class=prepared.arch.class_name,
        total=total,
        active=active,
        hub_models=hub_models,
        license=license or card.source_license(prepared.base.path, prepared.base.config),
        notes=prepared.arch.warnings,
        routing=json.loads(report.read_text()) if report.is_file() else None,
    )
    (folder / "README.md").write_text(text, encoding="utf-8")


def merge(config_path: Path, out: Path, options: MergeOptions, *, progress: Progress | None = None) -> Prepared:
    """Run a whole merge; OUT appears only when everything has been written."""
    progress = progress or (lambda stage, done, total: None)
    out = output.followed(out)
    output.recover(out)  # first: a restored OUT is the user's earlier output, which prepare() must protect
    prepared = prepare(config_path, out, options)
    output.check_space(out, prepared.plan.total_size)
    log.info("computing routers (gate_mode %s)", prepared.config.gate_mode)
    routers = _routers(prepared, options, progress)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.temp_folder(out)
    tmp.mkdir()
    try:
        _write(prepared, tmp, routers, progress)
        resolved = _side_files(prepared, tmp, options)
        findings, _, _ = verify.check_structure(tmp)  # what was just written, against its own config.json
        if findings:
            raise problems_error(
                MergeFailedError, [f"the written checkpoint fails verification: {f}" for f in findings]
            )
        training = None
        if prepared.config.router_training is not None:
            training = tuned.tune_merge(tmp, prepared.config.router_training, seed=prepared.seed, load=options.load,
                                         tokenizer_from=prepared.base.path, progress=progress)  # fmt: skip
        if options.routing_report:
            _routing_report(prepared, tmp, options)
        if options.write_card:
            _card(prepared, tmp, resolved, name=out.resolve().name, license=options.license)
            if training is not None:
                record.annotate_card(tmp, training)
        log.info("moving %s into place", out)
        output.publish(tmp, out)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            need = prepared.plan.total_size / 1e9
            raise OutputError(f"{out.parent}: disk full; the merge needs about {need:.2f} GB free there") from None
        if isinstance(exc, OSError) and not isinstance(exc, MoemergeError):
            raise OutputError(f"{out}: cannot write ({exc.strerror or exc})") from None
        raise
    finally:
        for model in [prepared.base, *prepared.experts, *prepared.shared]:
            model.close()
    return prepared


def _routers(prepared: Prepared, options: MergeOptions, progress: Progress) -> dict:
    """Routed-expert routers and, for architectures with a shared-expert gate, that gate (layers, 1, hidden)."""
    config = prepared.config
    layers, hidden = int(prepared.base.config["num_hidden_layers"]), int(prepared.base.config["hidden_size"])

    def context(experts, seed):
        return GateContext(prepared.base, experts, layers, hidden, seed, load=options.load, progress=progress)

    routers = {"routed": compute_routers(config.gate_mode, context(config.experts, prepared.seed))}
    if prepared.shared and prepared.arch.shared_gate:
        shared = config.shared_experts[0]
        mode = config.gate_mode if shared.positive_prompts else "random"
        routers["shared"] = compute_routers(mode, context([shared], prepared.seed + 1))
    return routers


def _write(prepared: Prepared, folder: Path, routers, progress: Progress) -> None:
    plan = prepared.plan
    layouts = [ShardLayout(s.filename, [(t.name, t.dtype, t.shape) for t in s.tensors]) for s in plan.shards]
    sources = [prepared.base, *prepared.experts, *prepared.shared]
    stream = stream_tensors(plan.tensors, sources=sources, routers=routers, seed=prepared.seed)
    total, done = plan.total_size, 0

    def on_tensor(name: str, nbytes: int) -> None:
        nonlocal done
        done += nbytes
        progress("tensors", done, total)

    write_shards(folder, layouts, stream, on_tensor=on_tensor)
