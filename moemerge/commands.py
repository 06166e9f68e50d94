"""The subcommands beside the bare merge: `moemerge route`, `eval`, `tune`, `plan`, `verify`, `push` (parsing and
printing only)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from moemerge.options import (
    AllowCrimesOpt,
    AllowSameOpt,
    DeviceOpt,
    Load4Opt,
    Load8Opt,
    MaxMemOpt,
    QuietOpt,
    RemoteOpt,
    ShardSizeOpt,
    VerboseOpt,
    load_options,
    parse_size,
    setup_logging,
)
from moemerge.tune import TuneSettings as TuneDefaults

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


eval_app = typer.Typer(add_completion=False, rich_markup_mode=None)


@eval_app.command(name="eval", help="Mean next-token loss and perplexity of the merged model in OUT per dataset; "
                  "--compare also scores its base and experts on the same tokens.")  # fmt: skip
def evaluate(
    out: Annotated[Path, typer.Argument(help="A folder written by moemerge.")],
    data: Annotated[list[str] | None, typer.Option("--data", metavar="NAME=FILE", help="A text file to score, named; repeat for several. Default: each expert's positive prompts from OUT/moemerge.yml.")] = None,
    compare: Annotated[bool, typer.Option("--compare", help="Also score the base and every expert in OUT/moemerge.yml (one model loaded at a time).")] = False,
    max_tokens: Annotated[int | None, typer.Option(min=2, help="Score at most this many tokens per dataset.")] = None,
    device: DeviceOpt = "cpu",
    load_in_4bit: Load4Opt = False,
    load_in_8bit: Load8Opt = False,
    trust_remote_code: RemoteOpt = False,
    max_memory: MaxMemOpt = None,
    verbose: VerboseOpt = 0,
    quiet: QuietOpt = False,
) -> None:  # fmt: skip
    import sys

    from moemerge import evaluate as scoring
    from moemerge.options import progress_display

    setup_logging(verbose, quiet)
    load = load_options(device, load_in_4bit, load_in_8bit, trust_remote_code, max_memory)
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


verify_app = typer.Typer(add_completion=False, rich_markup_mode=None)


@verify_app.command(help="Check a merged folder: shards and index, tensor census against config.json, routers, a load "
                    "with every key accounted for, and a short generation. Exit 1 with the findings if anything is wrong.")  # fmt: skip
def verify(
    out: Annotated[Path, typer.Argument(help="A folder written by moemerge (or any Mixtral/Qwen-MoE/DeepSeek-MoE checkpoint).")],
    quick: Annotated[bool, typer.Option("--quick", help="Only the checks that read no tensor data (files, index, census, config).")] = False,
    device: Annotated[str, typer.Option(help="Where the test load runs: auto (default: GPUs, CPU, then disk), cpu, cuda, cuda:N.")] = "auto",
    max_memory: MaxMemOpt = None,
    trust_remote_code: RemoteOpt = False,
    verbose: VerboseOpt = 0,
    quiet: QuietOpt = False,
) -> None:  # fmt: skip
    from moemerge import verify as checks
    from moemerge.errors import ConfigError, MergeFailedError, problems_error

    setup_logging(verbose, quiet)
    if not out.is_dir():
        raise ConfigError(f"{out}: no such folder")
    load = load_options(device, False, False, trust_remote_code, max_memory)
    findings, notes = checks.verify(out, full=not quick, load=load)
    if findings:
        raise problems_error(MergeFailedError, [f"{out}: {finding}" for finding in findings])
    if not quiet:
        for note in notes:
            print(f"ok: {note}")
        print(f"{out}: verified")


plan_app = typer.Typer(add_completion=False, rich_markup_mode=None)


@plan_app.command(help="Dry run: check CONFIG and show what the merge would write and cost, reading only config.json "
                  "files and safetensors headers (remote headers for Hub models; no weights downloaded).")  # fmt: skip
def plan(
    config: Annotated[Path, typer.Argument(help="YAML config, as for a merge.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
    out_shard_size: ShardSizeOpt = "5GB",
    device: DeviceOpt = "cpu",
    load_in_4bit: Load4Opt = False,
    load_in_8bit: Load8Opt = False,
    allow_same_experts: AllowSameOpt = False,
    allow_crimes: AllowCrimesOpt = False,
    trust_remote_code: RemoteOpt = False,
    verbose: VerboseOpt = 0,
    quiet: QuietOpt = False,
) -> None:  # fmt: skip
    import json

    from moemerge import dryrun
    from moemerge.pipeline import MergeOptions, prepare

    setup_logging(verbose, quiet)
    load = load_options(device, load_in_4bit, load_in_8bit, trust_remote_code, None)
    options = MergeOptions(out_shard_size=parse_size(out_shard_size), allow_crimes=allow_crimes,
                           allow_same_experts=allow_same_experts, load=load)  # fmt: skip
    prepared = prepare(config, None, options)
    summary = dryrun.summarize(prepared, load, probe_dir=Path.cwd())
    if as_json:  # asked for explicitly, so printed even with --quiet
        print(json.dumps(summary, indent=2))
    elif not quiet:
        print(dryrun.format_summary(summary))


push_app = typer.Typer(add_completion=False, rich_markup_mode=None)


@push_app.command(help="Upload a merged folder to the Hugging Face Hub (creates the repo if needed). The token comes "
                  "from HF_TOKEN or `hf auth login` and is never printed or written.")  # fmt: skip
def push(
    out: Annotated[Path, typer.Argument(help="A folder written by moemerge.")],
    repo_id: Annotated[str, typer.Argument(help="Target repo, e.g. your-name/My-MoE-4x7B.")],
    private: Annotated[bool, typer.Option("--private", help="Create the repo as private.")] = False,
    revision: Annotated[str | None, typer.Option(help="Branch to push to (created if missing); default main.")] = None,
    commit_message: Annotated[str | None, typer.Option(help="Commit message.")] = None,
    verbose: VerboseOpt = 0,
    quiet: QuietOpt = False,
) -> None:  # fmt: skip
    from moemerge import hub
    from moemerge.errors import ConfigError

    setup_logging(verbose, quiet)
    if not (out / "config.json").is_file():
        raise ConfigError(f"{out}: not a merged model (no config.json); merge first, then push")
    url = hub.push(out, repo_id, private=private, revision=revision, message=commit_message)
    if not quiet:
        print(f"pushed {out} to {url}")


tune_app = typer.Typer(add_completion=False, rich_markup_mode=None)


@tune_app.command(help="Train only the routers of the merged model in OUT on text files (next-token loss plus the "
                  "load-balancing loss) and write them back crash-safely; every other byte stays the same. Runs "
                  "data-parallel under `accelerate launch moemerge tune ...`.")  # fmt: skip
def tune(
    out: Annotated[Path, typer.Argument(help="A folder written by moemerge (Mixtral, Qwen2-MoE or Qwen3-MoE).")],
    data: Annotated[list[str], typer.Option("--data", metavar="[NAME=]FILE", help="UTF-8 text to train on; repeat for several (e.g. one per expert). The last windows of each file are held out.")],
    steps: Annotated[int, typer.Option(help="Optimiser steps.")] = TuneDefaults.steps,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = TuneDefaults.lr,
    batch_tokens: Annotated[int, typer.Option(help="Tokens per step, over all processes.")] = TuneDefaults.batch_tokens,
    seq_len: Annotated[int, typer.Option(help="Tokens per training window.")] = TuneDefaults.seq_len,
    aux_loss_coef: Annotated[float, typer.Option(help="Weight of the load-balancing loss (transformers' router_aux_loss_coef).")] = TuneDefaults.aux_loss_coef,
    train_top_k: Annotated[int | None, typer.Option(help="Experts per token while training (default: the model's, at least 2: a top-1 router gets no gradient from the next-token loss).")] = None,
    seed: Annotated[int, typer.Option(help="Seed for the batches.")] = TuneDefaults.seed,
    device: DeviceOpt = "cpu",
    max_memory: MaxMemOpt = None,
    verbose: VerboseOpt = 0,
    quiet: QuietOpt = False,
) -> None:  # fmt: skip
    from moemerge import textdata, tuning
    from moemerge.errors import ConfigError
    from moemerge.tune import TuneSettings

    setup_logging(verbose, quiet)
    if not out.is_dir():
        raise ConfigError(f"{out}: no such folder")
    load = load_options(device, False, False, False, max_memory)
    settings = TuneSettings(steps, lr, batch_tokens, seq_len, aux_loss_coef, seed, train_top_k)
    bar, on_step = _tune_progress(quiet)
    try:  # Ctrl-C: cli.py says "nothing was written"; OUT keeps its old routers
        record = tuning.tune(out, textdata.parse_specs(data), settings, load, on_step=on_step)
    finally:
        if bar is not None:
            bar.stop()
    if record is not None and not quiet:
        for name, before in record["held_out_loss_before"].items():
            print(f"{name}: held-out loss {before:.4f} -> {record['held_out_loss_after'][name]:.4f}")
        print(f"trained the routers of {out} in {record['seconds']} s ({record['tokens_per_second']:.0f} tokens/s); "
              f"wrote {out / tuning.RECORD}")  # fmt: skip


def _tune_progress(quiet: bool):
    """A progress bar with the training loss and tokens/s on a TTY; a log line every tenth step otherwise (-v)."""
    import logging
    import sys

    if quiet or not sys.stderr.isatty():
        log = logging.getLogger("moemerge.tune")
        return None, lambda step, steps, loss, speed: (step % 10 == 0 or step == steps) and log.info(
            "step %d/%d: loss %.4f, %.0f tokens/s", step, steps, loss, speed)  # fmt: skip
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn("training"), BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
                   TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[speed]} tokens/s"),
                   TimeRemainingColumn())  # fmt: skip
    task = None

    def on_step(step: int, steps: int, loss: float, speed: float) -> None:
        nonlocal task
        if task is None:
            bar.start()
            task = bar.add_task("training", total=steps, loss="-", speed="-")
        bar.update(task, completed=step, loss=f"{loss:.4f}", speed=f"{speed:,.0f}")

    return bar, on_step


SUBCOMMANDS = {
    "route": route_app,
    "eval": eval_app,
    "tune": tune_app,
    "verify": verify_app,
    "plan": plan_app,
    "push": push_app,
}
