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
    text: Annotated[str | None, typer.Option(help="Instead of the report: print this text's tokens coloured by their top-1 expert, with a legend.")] = None,
    layer: Annotated[int | None, typer.Option(min=0, help="With --text: the top-1 expert in this layer (default: the majority over layers).")] = None,
    *,
    load,
    quiet: bool,
) -> None:  # fmt: skip
    from moemerge.forward import routing

    if text is not None:
        _print_tokens(out, text, layer, load)
        return
    result = routing.report(out, prompts=prompts, load=load)
    if not quiet:
        print(routing.format_table(result))
        print(f"wrote {out / routing.REPORT_JSON} and {out / routing.REPORT_PNG}")


STYLES = ["white on blue", "black on yellow", "white on red", "black on cyan", "black on green", "white on magenta",
          "white on bright_black", "black on white"]  # fmt: skip


def _print_tokens(out: Path, text: str, layer: int | None, load) -> None:
    """The text with each token's background the colour of its top-1 expert; a legend line first."""
    from rich.console import Console
    from rich.text import Text

    from moemerge.errors import ConfigError
    from moemerge.forward.tokens import route_text

    result = route_text(out, text, load)
    if layer is not None and layer >= result["layers"]:
        raise ConfigError(f"--layer {layer}: the model has {result['layers']} layers (0 to {result['layers'] - 1})")
    picks = result["majority"] if layer is None else result["top1"][layer]
    colour = [STYLES[i % len(STYLES)] for i in range(len(result["experts"]))]
    console = Console(highlight=False)
    legend = Text("experts: ")
    for i, name in enumerate(result["experts"]):
        legend.append(f" {name} ", style=colour[i]).append(" ")
    where = "the majority over layers" if layer is None else f"layer {layer}"
    console.print(legend.append(f"(top-1 expert, {where} of {result['layers']})"), soft_wrap=True)
    tokens = Text()
    for piece, expert in zip(result["tokens"], picks):  # without colours (a pipe): each token's expert in brackets
        tokens.append(piece if console.is_terminal else f"{piece}[{expert}]", style=colour[expert])
    console.print(tokens, soft_wrap=True)
