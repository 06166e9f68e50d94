"""The subcommands beside the bare merge: `moemerge route`, `plan`, `verify`, `push` (parsing and printing only)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from moemerge.cli import (
    DeviceOpt,
    Load4Opt,
    Load8Opt,
    MaxMemOpt,
    QuietOpt,
    RemoteOpt,
    VerboseOpt,
    load_options,
    setup_logging,
)

route_app = typer.Typer(add_completion=False, rich_markup_mode=None)


@route_app.command(help="Run the merged model in OUT on prompts and report which experts its routers pick.")
def route(
    out: Annotated[Path, typer.Argument(help="A folder written by moemerge.")],
    prompts: Annotated[Path | None, typer.Option(help="Prompt sets: a .txt file (one prompt per line), a YAML mapping name -> prompts, or a merge config. Default: the experts' prompts in OUT/moemerge.yml.")] = None,
    device: DeviceOpt = "cpu",
    load_in_4bit: Load4Opt = False,
    load_in_8bit: Load8Opt = False,
    trust_remote_code: RemoteOpt = False,
    max_memory: MaxMemOpt = None,
    verbose: VerboseOpt = 0,
    quiet: QuietOpt = False,
) -> None:  # fmt: skip
    from moemerge import routing

    setup_logging(verbose, quiet)
    load = load_options(device, load_in_4bit, load_in_8bit, trust_remote_code, max_memory)
    result = routing.report(out, prompts=prompts, load=load)
    if not quiet:
        print(routing.format_table(result))
        print(f"wrote {out / routing.REPORT_JSON} and {out / routing.REPORT_PNG}")


SUBCOMMANDS = {"route": route_app}
