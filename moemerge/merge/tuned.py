"""Trained routers into a checkpoint: `tune` trains a folder's routers (training.run) and writes them with the
record of the run, crash-safely into a finished OUT or in place into a merge's temp folder; `tune_merge` does it for
a config's `router_training:` runs before the merge is moved into place."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from moemerge.forward.loading import LoadOptions
from moemerge.merge import rewrite
from moemerge.training.loop import OnStep, TuneSettings
from moemerge.training.record import EDITED, history, write_record
from moemerge.training.run import section_files, section_settings, train_folder

log = logging.getLogger(__name__)


def tune(out: Path, files: dict[str, Path], settings: TuneSettings, load: LoadOptions, *, in_place: bool = False,
         tokenizer_from: Path | None = None, on_step: OnStep | None = None) -> dict[str, Any] | None:  # fmt: skip
    """Train OUT's routers on `files` (name -> text file) and write them back; returns the record of the run (None
    in the other processes of a data-parallel run: the first one writes).
    `in_place`: OUT is a merge's temp folder that nobody reads yet (no copy, no swap)."""
    trained = train_folder(out, files, settings, load, tokenizer_from=tokenizer_from, on_step=on_step)
    if trained.writer:
        if in_place:
            rewrite.patch(out, trained.routers)
            write_record(out, trained.record)
        else:
            rewrite.replace(
                out, trained.routers, edited=EDITED, edit=lambda folder: write_record(folder, trained.record)
            )
    trained.accelerator.wait_for_everyone()
    return trained.record if trained.writer else None


def tune_merge(folder: Path, sections: list, *, seed: int, load: LoadOptions, tokenizer_from: Path,
               progress: Callable[[str, int, int], None]) -> list[dict[str, Any]]:  # fmt: skip
    """Train the routers of a merge's temp folder (before it is moved into place) as each `router_training:` run
    says, in order; returns the record of every run."""
    for i, section in enumerate(sections, 1):
        settings = section_settings(section, seed)
        of = f" (run {i} of {len(sections)})" if len(sections) > 1 else ""
        log.info("training the routers (%d steps)%s", settings.steps, of)
        tune(folder, section_files(section), settings, load, in_place=True, tokenizer_from=tokenizer_from,
             on_step=lambda step, steps, loss, speed: progress("training", step, steps))  # fmt: skip
    return history(folder)
