"""A training run over a checkpoint folder: check its inputs (every problem before anything is loaded), load it, train
its routers (loop.py) and return them with the record of the run; a config's `router_training:` section read as a
run. Writes nothing: merge.tuned puts the routers and the record into the folder."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from moemerge.archs import ARCHITECTURES
from moemerge.errors import ConfigError, problems_error
from moemerge.forward.fit import activation_bytes
from moemerge.forward.loading import LoadOptions, free_memory, load_tokenizer, loaded_model
from moemerge.sources.headers import read_json
from moemerge.training import data as textdata
from moemerge.training.loop import OnStep, TuneSettings, router_parameters, train

log = logging.getLogger(__name__)
TRAINABLE = ("mixtral", "qwen2_moe", "qwen3_moe")  # transformers' own classes, with router logits and the aux loss


@dataclass
class Trained:
    routers: dict[str, Any]  # checkpoint tensor name -> new value
    record: dict[str, Any]
    accelerator: Any  # its first process writes; the others wait for it

    @property
    def writer(self) -> bool:
        return self.accelerator.is_main_process


def check_settings(settings: TuneSettings, processes: int = 1, *, files: int = 1,
                   experts: int | None = None) -> list[str]:  # fmt: skip
    """Every problem with a run's settings, before anything is loaded: `files` data files must all be reached by
    the run's windows, `--train-top-k` must not exceed the model's `experts`."""
    problems = []
    if settings.steps < 0:
        problems.append(f"--steps {settings.steps}: give 0 (the fit alone) or more")
    elif settings.steps == 0 and (settings.fit == "none" or files < 2):
        why = "--fit none" if settings.fit == "none" else "one data file (the fit needs a file per domain)"
        problems.append(f"--steps 0 with {why}: nothing would be trained; give --steps N, or two or more data files "
                        "(one per expert's domain) for the fit")  # fmt: skip
    if settings.fit not in ("ridge", "none"):
        problems.append(f"--fit {settings.fit!r}: use ridge or none")
    if not settings.lr > 0:
        problems.append(f"--lr {settings.lr}: the learning rate must be positive")
    if settings.seq_len < 2:
        problems.append(f"--seq-len {settings.seq_len}: windows need at least 2 tokens")
    elif settings.batch_tokens < settings.seq_len:
        problems.append(f"--batch-tokens {settings.batch_tokens}: at least one window of --seq-len "
                        f"{settings.seq_len} per step")  # fmt: skip
    elif settings.rows % processes:
        problems.append(f"--batch-tokens {settings.batch_tokens}: {settings.rows} windows per step cannot be split "
                        f"evenly over {processes} processes")  # fmt: skip
    if not settings.aux_loss_coef >= 0:
        problems.append(f"--aux-loss-coef {settings.aux_loss_coef}: must be 0 or more")
    if settings.train_top_k is not None and settings.train_top_k < 1:
        problems.append(f"--train-top-k {settings.train_top_k}: must be 1 or more")
    elif settings.train_top_k is not None and experts is not None and settings.train_top_k > experts:
        problems.append(f"--train-top-k {settings.train_top_k}: the model has only {experts} experts; give at most "
                        f"{experts}")  # fmt: skip
    if settings.seq_len >= 2 and settings.rows >= 1 and settings.steps >= 1 and settings.steps * settings.rows < files:
        problems.append(f"--steps {settings.steps} x {settings.rows} windows per step reach only "
                        f"{settings.steps * settings.rows} of the {files} data files; raise --steps or --batch-tokens "
                        "so that every file is trained on")  # fmt: skip
    return problems


def trainable(out: Path):
    """OUT's output architecture and config.json, when tune can train it."""
    try:
        config = read_json(out / "config.json")
    except Exception:  # noqa: BLE001 -- any unreadable config.json gets the same line
        raise ConfigError(f"{out}: not a merged model (no readable config.json)") from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type not in TRAINABLE:
        raise ConfigError(f"{out}: model_type {model_type!r}; tune trains {', '.join(TRAINABLE)} checkpoints")
    return next(a for a in ARCHITECTURES.values() if a.model_type == model_type), config


def _accelerator():
    """One process, or one of the processes `accelerate launch` started (CPU processes talk through gloo)."""
    import torch
    from accelerate import Accelerator

    return Accelerator(device_placement=False, cpu=not torch.cuda.is_available())


def _resident(model, names: list[str]) -> None:
    """With --device auto, offloaded modules get their weights from the offload store at every forward, which would
    undo each step: give the routers (tiny) a real weight on their execution device instead."""
    from accelerate.hooks import remove_hook_from_module

    params = router_parameters(model, names)
    owners = {id(p): m for m in model.modules() for p in m.parameters(recurse=False)}
    for param in params.values():
        module = owners.get(id(param))
        hook = getattr(module, "_hf_hook", None)
        if hook is None or not getattr(hook, "offload", False):
            continue
        import torch

        value = hook.weights_map["weight"].to(hook.execution_device)
        remove_hook_from_module(module)
        module.weight = torch.nn.Parameter(value, requires_grad=False)


def train_folder(out: Path, files: dict[str, Path], settings: TuneSettings, load: LoadOptions, *,
                 tokenizer_from: Path | None = None, on_step: OnStep | None = None) -> Trained:  # fmt: skip
    """Load OUT, train its routers on `files` (name -> text file) and return them with the record of the run; OUT is
    not written here (merge.tuned writes it, in the first process of a data-parallel run only)."""
    arch, config = trainable(out)
    accelerator = _accelerator()
    experts = config_experts(config, arch)
    problems = check_settings(settings, accelerator.num_processes, files=len(files), experts=experts)
    problems += textdata.check(files)
    if accelerator.num_processes > 1 and load.device != "cpu":
        problems.append("--device: under accelerate launch each process uses its own device; leave --device out")
    if problems:
        raise problems_error(ConfigError, problems)
    tokenizer = load_tokenizer(Path(tokenizer_from or out), load)
    train_windows, held_out, info = textdata.windows(files, tokenizer, settings.seq_len)
    if accelerator.num_processes > 1:
        device = accelerator.device
        load = replace(load, device="cpu" if device.type == "cpu" else f"cuda:{device.index or 0}")
    templates = [arch.router] + ([arch.shared_gate] if arch.shared_gate else [])
    with loaded_model(
        out,
        load,
        causal_lm=True,
        what="router training",
        activations=activation_bytes(out, settings.batch_tokens, logits=True, training=True),
    ) as model:
        _resident(model, templates)  # a no-op unless the fit offloaded some weights (or --device auto did)
        result = train(model, train_windows, held_out, settings, templates=templates, accelerator=accelerator,
                       on_step=on_step if accelerator.is_main_process else None)  # fmt: skip
        del model
    free_memory()
    record = {
        "data": [{"name": d.name, "path": str(d.path), "sha256": d.sha256, "tokens": d.tokens} for d in info],
        **{k: v for k, v in asdict(settings).items() if v is not None},
        "train_top_k": settings.train_top_k or min(config_experts(config, arch), max(2, config["num_experts_per_tok"])),
        "held_out_loss_before": result.loss_before,
        "held_out_loss_after": result.loss_after,
        **({"fitted": result.fit} if result.fit else {}),
        "seconds": round(result.seconds, 1),
        "tokens_per_second": round(result.tokens / max(result.seconds, 1e-9), 1),
        "processes": accelerator.num_processes,
        "device": load.device,
    }
    return Trained(result.routers, record, accelerator)


def config_experts(config: dict[str, Any], arch) -> int:
    return int(arch.shape_of(config).num_experts)


def section_files(section, where: str = "router_training") -> dict[str, Path]:
    """A config's `router_training.data` (one file, a list, or name -> file) as name -> path."""
    data = section.data
    if isinstance(data, dict):
        return {name: Path(file) for name, file in data.items()}
    return textdata.parse_specs([data] if isinstance(data, str) else list(data), where=f"{where}.data")


def section_settings(section, seed: int) -> TuneSettings:
    given = {k: v for k, v in section.model_dump(exclude={"data"}).items() if v is not None}
    return TuneSettings(**{"seed": seed, **given})


def check_section(section, model_type: str | None, experts: int | None = None, *,
                  where: str = "router_training") -> list[str]:  # fmt: skip
    """A config's `router_training:` run's problems (`where` names it), found before any weight is read."""
    try:
        files = section_files(section, where)
    except ConfigError as exc:
        return exc.problems
    settings = section_settings(section, 0)
    problems = check_settings(settings, files=len(files), experts=experts) + textdata.check(files)
    if model_type is not None and model_type not in TRAINABLE:
        problems.append(f"the output is {model_type}; tune trains {', '.join(TRAINABLE)} models")
    return [p if p.startswith(where) else f"{where}: {p}" for p in problems]
