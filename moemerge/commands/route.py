"""`moemerge route OUT`: which experts the routers of a merged model pick for prompt sets (parsing and printing)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from moemerge.commands.options import loads_a_model

app = typer.Typer(add_completion=False, rich_markup_mode=None)


@app.command(help="Run the merged model in OUT on prompts and report which experts its routers pick.")
@loads_a_model()
def route(
    out: Annotated[Path, typer.Argument(help="A folder written by moemerge.")],
    prompts: Annotated[Path | None, typer.Option(help="Prompt sets: a .txt file (one prompt per line), a YAML mapping name -> prompts, or a merge config. Default: the experts' prompts in OUT/moemerge.yml.")] = None,
    *,
    load,
    quiet: bool,
) -> None:  # fmt: skip
    from moemerge.forward import routing

    result = routing.report(out, prompts=prompts, load=load)
    if not quiet:
        print(routing.format_table(result))
        print(f"wrote {out / routing.REPORT_JSON} and {out / routing.REPORT_PNG}")
