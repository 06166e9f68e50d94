"""The record a training run leaves in its folder: tune.json, the `router_training:` section and run comments in
moemerge.yml that rerun it, and the model card's Router training section."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from moemerge.publish import card

RECORD = "tune.json"
EDITED = (RECORD, "moemerge.yml", "README.md")


def write_record(folder: Path, record: dict[str, Any]) -> None:
    """tune.json, and the run in moemerge.yml and the card when the folder has them (the files in EDITED)."""
    _replace_file(folder / RECORD, json.dumps(record, indent=2) + "\n")
    if (folder / "moemerge.yml").is_file():
        _replace_file(folder / "moemerge.yml", resolved_text((folder / "moemerge.yml").read_text(), record))
        annotate_card(folder, record)


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
