"""`moemerge plan CONFIG`: a dry run, what a merge would write and cost (parsing and printing)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from moemerge.commands.options import AllowCrimesOpt, AllowSameOpt, ShardSizeOpt, loads_a_model, parse_size

app = typer.Typer(add_completion=False, rich_markup_mode=None)


@app.command(help="Dry run: check CONFIG and show what the merge would write and cost, reading only config.json "
             "files and safetensors headers (remote headers for Hub models; no weights downloaded).")  # fmt: skip
@loads_a_model()
def plan(
    config: Annotated[Path, typer.Argument(help="YAML config, as for a merge.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
    out_shard_size: ShardSizeOpt = "5GB",
    allow_same_experts: AllowSameOpt = False,
    allow_crimes: AllowCrimesOpt = False,
    *,
    load,
    quiet: bool,
) -> None:  # fmt: skip
    import json

    from moemerge.merge import costs
    from moemerge.merge.pipeline import MergeOptions, prepare

    options = MergeOptions(out_shard_size=parse_size(out_shard_size), allow_crimes=allow_crimes,
                           allow_same_experts=allow_same_experts, load=load)  # fmt: skip
    prepared = prepare(config, None, options)
    summary = costs.summarize(prepared, load, probe_dir=Path.cwd())
    if as_json:  # asked for explicitly, so printed even with --quiet
        print(json.dumps(summary, indent=2))
    elif not quiet:
        print(costs.format_summary(summary))
