"""`moemerge tune OUT`: check the inputs, load OUT, train its routers (tune.py), and write them back with the record of
the run (moemerge.yml, tune.json, the card): crash-safely into a finished OUT, or in place into a merge's temp folder."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import yaml

from moemerge import card, rewrite, textdata
from moemerge.archs import ARCHITECTURES
from moemerge.errors import ConfigError, problems_error
from moemerge.files import read_json
from moemerge.loading import LoadOptions, free_memory, load_tokenizer, loaded_model
from moemerge.tune import OnStep, TuneSettings, train

log = logging.getLogger(__name__)
RECORD = "tune.json"
TRAINABLE = ("mixtral", "qwen2_moe", "qwen3_moe")  # transformers' own classes, with router logits and the aux loss


def check_settings(settings: TuneSettings, processes: int = 1, *, files: int = 1,
                   experts: int | None = None) -> list[str]:  # fmt: skip
    """Every problem with a run's settings, before anything is loaded: `files` data files must all be reached by
    the run's windows, `--train-top-k` must not exceed the model's `experts`."""
    problems = []
    if settings.steps < 1:
        problems.append(f"--steps {settings.steps}: train for at least one step")
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


def _arch(out: Path):
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

    from moemerge.tune import router_parameters

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


def tune(out: Path, files: dict[str, Path], settings: TuneSettings, load: LoadOptions, *, in_place: bool = False,
         tokenizer_from: Path | None = None, on_step: OnStep | None = None) -> dict[str, Any] | None:  # fmt: skip
    """Train OUT's routers on `files` (name -> text file) and write them back; returns the record of the run (None
    in the other processes of a data-parallel run: the first one writes).
    `in_place`: OUT is a merge's temp folder that nobody reads yet (no copy, no swap)."""
    arch, config = _arch(out)
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
    with loaded_model(out, load, causal_lm=True) as model:
        if load.device == "auto":
            _resident(model, templates)
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
        "seconds": round(result.seconds, 1),
        "tokens_per_second": round(result.tokens / max(result.seconds, 1e-9), 1),
        "processes": accelerator.num_processes,
        "device": load.device,
    }
    if accelerator.is_main_process:
        _write(out, result.routers, record, in_place=in_place)
    accelerator.wait_for_everyone()
    return record if accelerator.is_main_process else None


def config_experts(config: dict[str, Any], arch) -> int:
    return int(arch.shape_of(config).num_experts)


EDITED = (RECORD, "moemerge.yml", "README.md")


def _write(out: Path, routers: dict[str, Any], record: dict[str, Any], *, in_place: bool) -> None:
    def edit(folder: Path) -> None:
        _replace_file(folder / RECORD, json.dumps(record, indent=2) + "\n")
        if (folder / "moemerge.yml").is_file():
            _replace_file(folder / "moemerge.yml", resolved_text((folder / "moemerge.yml").read_text(), record))
            annotate_card(folder, record)

    if in_place:
        rewrite.patch(out, routers)
        edit(out)
    else:
        rewrite.replace(out, routers, edited=EDITED, edit=edit)


def _replace_file(path: Path, text: str) -> None:
    path.unlink(missing_ok=True)  # never write through a hard link shared with another folder
    path.write_text(text, encoding="utf-8")


UNTRAINED = "It has not been trained after merging; each layer's router was"
TRAINED = "Only its routers were trained after merging (see Router training below); each was first"


def annotate_card(folder: Path, record: dict[str, Any]) -> None:
    """The run in the model card moemerge wrote: a Router training section, and an intro that no longer says the
    model is untrained."""
    if card.update_card(folder, "training", training_section(record)):
        text = (folder / "README.md").read_text(encoding="utf-8")
        _replace_file(folder / "README.md", text.replace(UNTRAINED, TRAINED))


def training_section(record: dict[str, Any]) -> str:
    before, after = record["held_out_loss_before"], record["held_out_loss_after"]
    rows = [f"| {d['name']} | {d['tokens']:,} | `{d['sha256'][:16]}...` | {before[d['name']]:.4f} | "
            f"{after[d['name']]:.4f} |" for d in record["data"]]  # fmt: skip
    where = f"{record['processes']} process(es) on {record['device']}"
    body = (f"\n## Router training\n\nOnly the routers were trained after merging, with `moemerge tune`: "
            f"{record['steps']} steps of {record['batch_tokens']} tokens (windows of {record['seq_len']}), AdamW "
            f"lr {record['lr']}, load-balancing loss coefficient {record['aux_loss_coef']}, top-{record['train_top_k']} "
            f"routing while training, seed {record['seed']}; {where}, {record['seconds']} s. Held-out loss is the "
            "mean next-token loss on the last windows of each file (not trained on); `tune.json` has the figures "
            "and full sha256 of each file.\n\n| data | tokens | sha256 | held-out loss before | after |\n"
            "|---|---|---|---|---|\n" + "\n".join(rows) + "\n")  # fmt: skip
    return card.SECTION.format(name="training", body=body)


RUN_HEADER = "# Router training run (moemerge tune)"


def resolved_text(text: str, record: dict[str, Any]) -> str:
    """moemerge.yml with `router_training:` set to what reruns this training, and the run's record (data sha256,
    losses, time) as comments after the provenance, replacing an earlier run's."""
    text = text.split(f"\n{RUN_HEADER}\n", 1)[0]
    config, _, provenance = text.partition("\n# Provenance\n")
    body = yaml.safe_load(config) or {}
    body["router_training"] = training_config(record)
    head = config.split("\n", 1)[0] + "\n" if config.startswith("#") else ""
    run = yaml.safe_dump(record, sort_keys=False, allow_unicode=True)
    return (head + yaml.safe_dump(body, sort_keys=False, allow_unicode=True) + "\n# Provenance\n"
            + provenance.rstrip("\n") + f"\n\n{RUN_HEADER}\n" + "".join(f"# {line}\n" for line in run.splitlines()))  # fmt: skip


def training_config(record: dict[str, Any]) -> dict[str, Any]:
    """The `router_training:` section that reruns this training (data by absolute path)."""
    keys = ("steps", "lr", "batch_tokens", "seq_len", "aux_loss_coef", "seed", "train_top_k")
    return {"data": {d["name"]: d["path"] for d in record["data"]}, **{k: record[k] for k in keys if k in record}}


def section_files(section) -> dict[str, Path]:
    """A config's `router_training.data` (one file, a list, or name -> file) as name -> path."""
    data = section.data
    if isinstance(data, dict):
        return {name: Path(file) for name, file in data.items()}
    return textdata.parse_specs([data] if isinstance(data, str) else list(data), where="router_training.data")


def section_settings(section, seed: int) -> TuneSettings:
    given = {k: v for k, v in section.model_dump(exclude={"data"}).items() if v is not None}
    return TuneSettings(**{"seed": seed, **given})


def check_section(section, model_type: str | None, experts: int | None = None) -> list[str]:
    """A config's `router_training:` problems, found before any weight is read."""
    try:
        files = section_files(section)
    except ConfigError as exc:
        return exc.problems
    settings = section_settings(section, 0)
    problems = check_settings(settings, files=len(files), experts=experts) + textdata.check(files)
    if model_type is not None and model_type not in TRAINABLE:
        problems.append(f"router_training: the output is {model_type}; tune trains {', '.join(TRAINABLE)} models")
    return [p if p.startswith("router_training") else f"router_training: {p}" for p in problems]


def tune_merge(folder: Path, section, *, seed: int, load: LoadOptions, tokenizer_from: Path,
               progress: Callable[[str, int, int], None]) -> dict[str, Any]:  # fmt: skip
    """Train the routers of a merge's temp folder (before it is moved into place), as `router_training:` says."""
    settings = section_settings(section, seed)
    log.info("training the routers (%d steps)", settings.steps)
    return tune(folder, section_files(section), settings, load, in_place=True, tokenizer_from=tokenizer_from,
                on_step=lambda step, steps, loss, speed: progress("training", step, steps))  # fmt: skip
