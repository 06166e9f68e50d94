"""`moemerge verify OUT`: a merged folder's integrity, census, config and a test load (parsing and printing)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from moemerge.commands.options import loads_a_model

app = typer.Typer(add_completion=False, rich_markup_mode=None)


@app.command(help="Check a merged folder: shards and index, tensor census against config.json, routers, a load "
             "with every key accounted for, and a short generation. Exit 1 with the findings if anything is wrong.")  # fmt: skip
@loads_a_model(device="auto", quantize=False)
def verify(
    out: Annotated[Path, typer.Argument(help="A folder written by moemerge (or any Mixtral/Qwen-MoE/DeepSeek-MoE checkpoint).")],
    quick: Annotated[bool, typer.Option("--quick", help="Only the checks that read no tensor data (files, index, census, config).")] = False,
    *,
    load,
    quiet: bool,
) -> None:  # fmt: skip
    from moemerge.errors import ConfigError, MergeFailedError, problems_error
    from moemerge.merge import verify as checks

    if not out.is_dir():
        raise ConfigError(f"{out}: no such folder")
    findings, notes = checks.verify(out, full=not quick, load=load)
    if findings:
        raise problems_error(MergeFailedError, [f"{out}: {finding}" for finding in findings])
    if not quiet:
        for note in notes:
            print(f"ok: {note}")
        print(f"{out}: verified")
