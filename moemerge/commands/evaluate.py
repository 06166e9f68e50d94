"""`moemerge eval OUT`: held-out loss and perplexity per dataset, with --compare also of the base and each expert
(parsing and printing)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from moemerge.commands.options import loads_a_model, progress_display

app = typer.Typer(add_completion=False, rich_markup_mode=None)


@app.command(name="eval", help="Mean next-token loss and perplexity of the merged model in OUT per dataset; "
             "--compare also scores its base and experts on the same tokens.")  # fmt: skip
@loads_a_model()
def evaluate(
    out: Annotated[Path, typer.Argument(help="A folder written by moemerge.")],
    data: Annotated[list[str] | None, typer.Option("--data", metavar="NAME=FILE", help="A text file to score, named; repeat for several. Default: each expert's positive prompts from OUT/moemerge.yml.")] = None,
    compare: Annotated[bool, typer.Option("--compare", help="Also score the base and every expert in OUT/moemerge.yml (one model loaded at a time).")] = False,
    max_tokens: Annotated[int | None, typer.Option(min=2, help="Score at most this many tokens per dataset.")] = None,
    *,
    load,
    quiet: bool,
) -> None:  # fmt: skip
    import sys

    from moemerge.forward import evaluate as scoring

    datasets = scoring.parse_data(data) if data else scoring.prompt_datasets(out)
    if not data and not quiet:
        print(f"no --data given: scoring each expert's positive prompts from {out / 'moemerge.yml'} "
              "(one dataset per expert; pass --data NAME=FILE for held-out text)", file=sys.stderr)  # fmt: skip
    bar, update = progress_display(quiet)
    if bar is not None:
        bar.start()
    try:
        result = scoring.evaluate(out, datasets=datasets, compare=compare, max_tokens=max_tokens, load=load,
                                  progress=update)  # fmt: skip
    finally:
        if bar is not None:
            bar.stop()
    paths = scoring.write_results(result, out)
    if not quiet:
        print(scoring.format_table(result))
        print(f"wrote {paths[0]} and {paths[1]}")
