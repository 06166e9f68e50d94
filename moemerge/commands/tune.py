"""`moemerge tune OUT`: train only the routers of a merged model on text files (parsing, progress and printing)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from moemerge.commands.options import loads_a_model
from moemerge.training.loop import TuneSettings as TuneDefaults

app = typer.Typer(add_completion=False, rich_markup_mode=None)


@app.command(help="Train only the routers of the merged model in OUT on text files (next-token loss plus the "
                  "load-balancing loss) and write them back crash-safely; every other byte stays the same. Runs "
                  "data-parallel under `accelerate launch moemerge tune ...`.")  # fmt: skip
@loads_a_model(quantize=False)
def tune(
    out: Annotated[Path, typer.Argument(help="A folder written by moemerge (Mixtral, Qwen2-MoE or Qwen3-MoE).")],
    data: Annotated[list[str], typer.Option("--data", metavar="[NAME=]FILE", help="UTF-8 text to train on; repeat for several (e.g. one per expert). The last windows of each file are held out.")],
    fit: Annotated[str, typer.Option(help="ridge: fit the routers in closed form first (ridge regression of each layer's MLP input on which file each token came from; needs a file per domain); none: gradient steps only.")] = TuneDefaults.fit,
    steps: Annotated[int, typer.Option(help="Gradient steps after the fit (0: the fit alone, the measured best for top-1 models).")] = TuneDefaults.steps,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = TuneDefaults.lr,
    batch_tokens: Annotated[int, typer.Option(help="Tokens per step, over all processes.")] = TuneDefaults.batch_tokens,
    seq_len: Annotated[int, typer.Option(help="Tokens per training window.")] = TuneDefaults.seq_len,
    aux_loss_coef: Annotated[float, typer.Option(help="Weight of the load-balancing loss (transformers' router_aux_loss_coef).")] = TuneDefaults.aux_loss_coef,
    train_top_k: Annotated[int | None, typer.Option(help="Experts per token while training (default: the model's, at least 2: a top-1 router gets no gradient from the next-token loss).")] = None,
    seed: Annotated[int, typer.Option(help="Seed for the batches.")] = TuneDefaults.seed,
    *,
    load,
    quiet: bool,
) -> None:  # fmt: skip
    from moemerge.errors import ConfigError
    from moemerge.merge import tuned
    from moemerge.training import data as textdata
    from moemerge.training.loop import TuneSettings
    from moemerge.training.record import RECORD

    if not out.is_dir():
        raise ConfigError(f"{out}: no such folder")
    settings = TuneSettings(steps, lr, batch_tokens, seq_len, aux_loss_coef, seed, train_top_k, fit)
    bar, on_step = _tune_progress(quiet)
    try:  # Ctrl-C: cli.py says "nothing was written"; OUT keeps its old routers
        record = tuned.tune(out, textdata.parse_specs(data), settings, load, on_step=on_step)
    finally:
        if bar is not None:
            bar.stop()
    if record is not None and not quiet:
        for name, before in record["held_out_loss_before"].items():
            print(f"{name}: held-out loss {before:.4f} -> {record['held_out_loss_after'][name]:.4f}")
        speed = f" ({record['tokens_per_second']:.0f} tokens/s)" if record["steps"] else ""
        what = "fitted" if record.get("fitted") and not record["steps"] else "trained"
        print(f"{what} the routers of {out} in {record['seconds']} s{speed}; wrote {out / RECORD}")


def _tune_progress(quiet: bool):
    """A progress bar with the training loss and tokens/s on a TTY; a log line every tenth step otherwise (-v)."""
    import logging
    import sys

    def fitting(steps: int) -> None:
        if not quiet:
            print("tune: fitting the routers in closed form (a few forward passes over the data)"
                  + (f", then {steps} gradient steps" if steps else ""), file=sys.stderr, flush=True)  # fmt: skip

    if quiet or not sys.stderr.isatty():
        log = logging.getLogger("moemerge.training.loop")

        def logged(step: int, steps: int, loss: float, speed: float) -> None:
            if step == 0:
                fitting(steps)
            elif step % 10 == 0 or step == steps:
                log.info("step %d/%d: loss %.4f, %.0f tokens/s", step, steps, loss, speed)

        return None, logged
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn("training"), BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
                   TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[speed]} tokens/s"),
                   TimeRemainingColumn())  # fmt: skip
    task = None

    def on_step(step: int, steps: int, loss: float, speed: float) -> None:
        nonlocal task
        if step == 0:
            fitting(steps)
            return
        if task is None:
            bar.start()
            task = bar.add_task("training", total=steps, loss="-", speed="-")
        bar.update(task, completed=step, loss=f"{loss:.4f}", speed=f"{speed:,.0f}")

    return bar, on_step
