"""The record training runs leave in their folder: tune.json, the `router_training:` section(s) and run comments in
moemerge.yml that rerun them in order, the model card's Router training section, and reports marked stale."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import yaml

from moemerge.publish import card

RECORD = "tune.json"
EARLIER = "earlier_runs"  # in tune.json: the records of the runs before this one, in order
STALE = {"routing.json": ("routing", "moemerge route OUT"), "eval.json": ("eval", "moemerge eval OUT --data ...")}
EDITED = (RECORD, "moemerge.yml", "README.md", *STALE)
log = logging.getLogger(__name__)


def history(folder: Path) -> list[dict[str, Any]]:
    """The records of every training run the folder's routers have had, in order (from tune.json)."""
    try:
        last = json.loads((folder / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    if not isinstance(last, dict):
        return []
    earlier = last.pop(EARLIER, [])
    return [*(earlier if isinstance(earlier, list) else []), last]


def write_record(folder: Path, record: dict[str, Any]) -> list[dict[str, Any]]:
    """tune.json (this run, the earlier ones under `earlier_runs`), and every run in order in moemerge.yml and the
    card when the folder has them; reports made from the old routers are marked stale. Returns every run."""
    runs = [*history(folder), record]
    text = json.dumps({**record, **({EARLIER: runs[:-1]} if runs[:-1] else {})}, indent=2)
    _replace_file(folder / RECORD, text + "\n")
    if (folder / "moemerge.yml").is_file():
        _replace_file(folder / "moemerge.yml", resolved_text((folder / "moemerge.yml").read_text(), runs))
        annotate_card(folder, runs)
    _mark_stale(folder)
    return runs


def _mark_stale(folder: Path) -> None:
    """routing.json and eval.json (and their card sections) describe the routers before this training: say so in
    them, and on the terminal, until `moemerge route` / `moemerge eval` rewrites them."""
    for name, (section, command) in STALE.items():
        try:
            report = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(report, dict):
            continue
        report["stale"] = True
        report["stale_reason"] = (f"these figures predate the router training (moemerge tune); rerun `{command}` to "
                                  "refresh them")  # fmt: skip
        _replace_file(folder / name, json.dumps(report, indent=2) + "\n")
        render = card.routing_section if section == "routing" else card.eval_section
        card.update_card(folder, section, render(report))
        what = f"{name}, {name.replace('.json', '.png')} and the card's {section} section"
        log.warning("%s describe the routers before this training (marked stale); rerun `%s` to refresh them",
                    what, command)  # fmt: skip


def _replace_file(path: Path, text: str) -> None:
    path.unlink(missing_ok=True)  # never write through a hard link shared with another folder
    path.write_text(text, encoding="utf-8")


UNTRAINED = "It has not been trained after merging; each layer's router was"
TRAINED = "Only its routers were trained after merging (see Router training below); each was first"


def annotate_card(folder: Path, runs: list[dict[str, Any]]) -> None:
    """The runs in the model card moemerge wrote: a Router training section, and an intro that no longer says the
    model is untrained."""
    if card.update_card(folder, "training", training_section(runs)):
        text = (folder / "README.md").read_text(encoding="utf-8")
        _replace_file(folder / "README.md", text.replace(UNTRAINED, TRAINED))


def training_section(runs: list[dict[str, Any]]) -> str:
    if len(runs) == 1:
        intro = "Only the routers were trained after merging, with `moemerge tune`: "
        body = intro + _run_text(runs[0])
    else:
        body = (f"Only the routers were trained after merging, with `moemerge tune`, in {len(runs)} runs one after the "
                "other (each starting from the routers the one before left; `moemerge.yml` lists them all, in order, "
                "and a rerun replays them all).\n\n")  # fmt: skip
        body += "\n".join(f"### Run {i} of {len(runs)}\n\n" + _run_text(r) for i, r in enumerate(runs, 1))
    return card.SECTION.format(name="training", body="\n## Router training\n\n" + body)


def _run_text(record: dict[str, Any]) -> str:
    before, after = record["held_out_loss_before"], record["held_out_loss_after"]
    rows = [f"| {d['name']} | {d['tokens']:,} | `{d['sha256'][:16]}...` | {before[d['name']]:.4f} | "
            f"{after[d['name']]:.4f} |" for d in record["data"]]  # fmt: skip
    where = f"{record['processes']} process(es) on {record['device']}"
    fitted = record.get("fitted")
    fit = ""
    if fitted:
        pairs = ", ".join(f"{name} -> expert {e}" for name, e in fitted["mapping"].items())
        fit = (f"A closed-form fit first (ridge regression of each layer's MLP input on which file each token came "
               f"from, {fitted['tokens']:,} tokens; {pairs}). ")  # fmt: skip
    steps = "no gradient steps after it" if not record["steps"] else (
        f"{record['steps']} steps of {record['batch_tokens']} tokens (windows of {record['seq_len']}), AdamW "
        f"lr {record['lr']}, load-balancing loss coefficient {record['aux_loss_coef']}, top-{record['train_top_k']} "
        "routing while training")  # fmt: skip
    return (f"{fit}{steps[0].upper()}{steps[1:]}, seed {record['seed']}; {where}, {record['seconds']} s. Held-out loss is the "
            "mean next-token loss on the last windows of each file (not trained on); `tune.json` has the figures "
            "and full sha256 of each file.\n\n| data | tokens | sha256 | held-out loss before | after |\n"
            "|---|---|---|---|---|\n" + "\n".join(rows) + "\n")  # fmt: skip


RUN_HEADER = "# Router training run"
CHAIN = ("# The routers come from {n} training runs, one after the other: `router_training:` lists them in order, "
         "and a rerun replays them all.")  # fmt: skip


def resolved_text(text: str, runs: list[dict[str, Any]]) -> str:
    """moemerge.yml with `router_training:` set to what reruns these runs (one mapping, or a list of them in order),
    and each run's record (data sha256, losses, time) as comments after the provenance."""
    text = text.split(f"\n{RUN_HEADER}", 1)[0]
    text = text.split(f"\n{CHAIN.split('{', 1)[0]}", 1)[0]
    config, _, provenance = text.partition("\n# Provenance\n")
    body = yaml.safe_load(config) or {}
    sections = [training_config(record) for record in runs]
    body["router_training"] = sections[0] if len(sections) == 1 else sections
    head = config.split("\n", 1)[0] + "\n" if config.startswith("#") else ""
    blocks = ""
    for i, record in enumerate(runs, 1):
        title = RUN_HEADER + ("" if len(runs) == 1 else f" {i} of {len(runs)}") + " (moemerge tune)"
        run = yaml.safe_dump(record, sort_keys=False, allow_unicode=True)
        blocks += f"\n{title}\n" + "".join(f"# {line}\n" for line in run.splitlines())
    chain = CHAIN.format(n=len(runs)) + "\n" if len(runs) > 1 else ""
    return (head + yaml.safe_dump(body, sort_keys=False, allow_unicode=True) + chain + "\n# Provenance\n"
            + provenance.rstrip("\n") + "\n" + blocks)  # fmt: skip


def training_config(record: dict[str, Any]) -> dict[str, Any]:
    """The `router_training:` section that reruns this training (data by absolute path)."""
    keys = ("steps", "lr", "batch_tokens", "seq_len", "aux_loss_coef", "seed", "train_top_k", "fit")
    return {"data": {d["name"]: d["path"] for d in record["data"]}, **{k: record[k] for k in keys if k in record}}
