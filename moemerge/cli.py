"""Command line: argument parsing, progress display, and the one exception -> exit-code boundary."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from moemerge import __version__
from moemerge.errors import ConfigError, MoemergeError

log = logging.getLogger("moemerge")
SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
UNITS = {
    "": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12,
    "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}  # fmt: skip
MERGEKIT_UNITS = {"b": 10**9}  # mergekit's `5B` = 5e9 bytes; plain `B` after a number is billions there


def parse_size(text: str) -> int:
    """`5GB`, `500MB`, `2GiB`, mergekit's `5B`/`500M`/`1k` (x1e9/x1e6/x1e3), or plain bytes; 0 = one file."""
    match = SIZE.match(str(text))
    unit = match.group(2).lower() if match else None
    if match is None or (unit not in UNITS):
        raise ConfigError(f"--out-shard-size: cannot read {text!r}; use e.g. 5GB, 500MB, 2GiB or a byte count")
    factor = MERGEKIT_UNITS.get(unit, UNITS[unit])
    return int(float(match.group(1)) * factor)


def parse_max_memory(text: str | None) -> dict[str, int] | None:
    """`20GiB` (CPU RAM) or `0=70GiB,cpu=100GiB,disk` style budgets for --device auto."""
    if not text:
        return None
    budget = {}
    for part in text.split(","):
        device, _, size = part.strip().rpartition("=")
        device = device.strip() or "cpu"
        if not re.fullmatch(r"cpu|(cuda:)?\d+", device):
            raise ConfigError(f"--max-memory: unknown device {device!r}; use cpu, 0, 1, ... (e.g. 0=20GiB,cpu=60GiB)")
        try:
            budget[device] = parse_size(size)
        except ConfigError:
            raise ConfigError(f"--max-memory: cannot read size {size!r}; use e.g. 0=20GiB,cpu=60GiB") from None
    return budget


def load_options(device: str, load_in_4bit: bool, load_in_8bit: bool, trust_remote_code: bool, max_memory: str | None):
    from moemerge.loading import LoadOptions

    if load_in_4bit and load_in_8bit:
        raise ConfigError("--load-in-4bit and --load-in-8bit: pick one")
    quantize = "4bit" if load_in_4bit else ("8bit" if load_in_8bit else None)
    return LoadOptions(device, quantize, trust_remote_code, parse_max_memory(max_memory))


DeviceOpt = Annotated[
    str, typer.Option(help="Where forward passes run: cpu, cuda, cuda:N, or auto (GPUs + CPU + disk).")
]
Load4Opt = Annotated[
    bool, typer.Option("--load-in-4bit", help="Load the model in 4-bit (bitsandbytes) for the forward pass.")
]
Load8Opt = Annotated[
    bool, typer.Option("--load-in-8bit", help="Load the model in 8-bit (bitsandbytes) for the forward pass.")
]
RemoteOpt = Annotated[bool, typer.Option("--trust-remote-code", help="Allow models that need their own Python code.")]
ShardSizeOpt = Annotated[str, typer.Option(help="Max bytes per shard: 5GB, 500MB, 2GiB, 5B (=5e9); 0 = one file.")]
AllowSameOpt = Annotated[
    bool,
    typer.Option("--i-understand-this-is-not-useful-without-training", help="Allow every expert to be the same model."),
]
AllowCrimesOpt = Annotated[
    bool, typer.Option("--allow-crimes", help="Allow experts of another model_type if shapes agree.")
]
VerboseOpt = Annotated[int, typer.Option("--verbose", "-v", count=True, help="More output; -vv shows tracebacks.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Only errors.")]
MaxMemOpt = Annotated[
    str | None,
    typer.Option(help="Budget for --device auto: 20GiB (CPU) or 0=20GiB,cpu=60GiB; the rest offloads to disk."),
]


def setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    root = logging.getLogger("moemerge")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def _progress_display(quiet: bool):
    """A rich progress bar on a TTY; nothing in pipes and CI."""
    if quiet or not sys.stderr.isatty():
        return None, None
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn("{task.description:10}"), BarColumn(), TextColumn("{task.fields[amount]}"),
                   TimeRemainingColumn())  # fmt: skip
    tasks: dict[str, int] = {}

    def update(stage: str, done: int, total: int) -> None:
        # "tensors" counts bytes written; other stages ("prompts") count items
        amount = f"{done / 1e6:,.1f}/{total / 1e6:,.1f} MB" if stage == "tensors" else f"{done}/{total}"
        if stage not in tasks:
            tasks[stage] = bar.add_task(stage, total=total, amount=amount)
        bar.update(tasks[stage], completed=done, total=total, amount=amount)

    return bar, update


app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None)


@app.command(
    help="Merge the base and expert models named in CONFIG into one MoE checkpoint written to OUT.",
    epilog="Other commands: `moemerge plan CONFIG` (dry run), `moemerge verify OUT`, `moemerge route OUT` "
    "(routing report), `moemerge push OUT REPO_ID`; each takes --help.",
)
def merge(
    config: Annotated[Path, typer.Argument(help="YAML config (mergekit-moe configs work unchanged).")],
    out: Annotated[Path, typer.Argument(help="Output folder; must be absent or empty unless --overwrite.")],
    copy_tokenizer: Annotated[bool, typer.Option(help="Copy the base model's tokenizer files to OUT.")] = True,
    out_shard_size: ShardSizeOpt = "5GB",
    device: DeviceOpt = "cpu",
    load_in_4bit: Load4Opt = False,
    load_in_8bit: Load8Opt = False,
    trust_remote_code: RemoteOpt = False,
    max_memory: MaxMemOpt = None,
    push_to_hub: Annotated[str | None, typer.Option(help="After a successful merge, upload OUT to this Hub repo (see `moemerge push`).")] = None,
    private: Annotated[bool, typer.Option("--private", help="With --push-to-hub: create the repo as private.")] = False,
    license: Annotated[str | None, typer.Option(help="Hub license id for the model card, e.g. apache-2.0 (default: the base model's, when known).")] = None,
    routing_report: Annotated[bool, typer.Option("--routing-report", help="Run `moemerge route` on the result and add it to OUT and the card.")] = False,
    random_seed: Annotated[int | None, typer.Option(help="Seed for random gates and noise (overrides `seed:`).")] = None,
    allow_same_experts: AllowSameOpt = False,
    allow_crimes: AllowCrimesOpt = False,
    lazy_unpickle: Annotated[bool, typer.Option("--lazy-unpickle", help="Accepted for mergekit compatibility; .bin files are always read lazily.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace OUT if it exists (swapped in only when the merge is complete).")] = False,
    verbose: VerboseOpt = 0,
    quiet: QuietOpt = False,
) -> None:  # fmt: skip
    from moemerge.pipeline import MergeOptions
    from moemerge.pipeline import merge as run_merge

    setup_logging(verbose, quiet)
    options = MergeOptions(
        out_shard_size=parse_size(out_shard_size),
        copy_tokenizer=copy_tokenizer,
        seed=random_seed,
        overwrite=overwrite,
        allow_crimes=allow_crimes,
        allow_same_experts=allow_same_experts,
        load=load_options(device, load_in_4bit, load_in_8bit, trust_remote_code, max_memory),
        routing_report=routing_report,
        license=license,
    )
    if private and not push_to_hub:
        raise ConfigError("--private only applies with --push-to-hub REPO_ID")
    if push_to_hub:
        from moemerge import hub

        hub.check_push(push_to_hub)  # before the merge, not after hours of it
    bar, update = _progress_display(quiet)
    if bar is not None:
        bar.start()
    try:
        prepared = run_merge(config, out, options, progress=update)
    finally:
        if bar is not None:
            bar.stop()
    if not quiet:
        plan = prepared.plan
        print(f"wrote {out} ({prepared.arch.class_name}, {len(prepared.experts)} experts, "
              f"{len(plan.shards)} shard(s), {plan.total_size / 1e6:.1f} MB)")  # fmt: skip
    if push_to_hub:
        url = hub.push(out, push_to_hub, private=private, revision=None, message=None)
        if not quiet:
            print(f"pushed {out} to {url}")


def _terminate(signum, frame) -> None:
    raise KeyboardInterrupt  # SIGTERM cleans up like Ctrl-C: the partial output folder is removed


def _run(command, args: list[str], debug: bool, prog: str = "moemerge") -> int:
    with contextlib.suppress(ValueError):  # only the main thread may set handlers (not so in a notebook thread)
        signal.signal(signal.SIGTERM, _terminate)
    try:
        command.main(args=args, prog_name=prog, standalone_mode=False)
        return 0
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        print("error: aborted", file=sys.stderr)
        return 130
    except typer.TyperException as exc:  # click's usage errors, as typer vendors them
        if type(exc).__name__ == "NoArgsIsHelpError":
            print(exc.format_message())
            return 0
        print(f"error: {exc.format_message()} (see `{prog} --help`)", file=sys.stderr)
        return 2
    except MoemergeError as exc:
        if debug:
            raise
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug:
            raise
        first = str(exc).splitlines()[0] if str(exc) else ""
        print(f"error: {exc.__class__.__name__}: {first} (rerun with -vv for a traceback)", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> None:
    """`moemerge CONFIG OUT [options]`, or `moemerge VERB ...` for the subcommands."""
    args = list(sys.argv[1:] if argv is None else argv) or ["--help"]
    if args in (["--version"], ["-V"]):
        print(f"moemerge {__version__}")
        raise SystemExit(0)
    debug = (
        os.environ.get("MOEMERGE_DEBUG") == "1"
        or any(re.fullmatch(r"-v{2,}", a) for a in args)
        or (args.count("-v") + args.count("--verbose") >= 2)
    )
    from moemerge.commands import SUBCOMMANDS

    target = SUBCOMMANDS.get(args[0]) if args else None
    command = typer.main.get_command(target or app)
    if target is None:
        raise SystemExit(_run(command, args, debug))
    raise SystemExit(_run(command, args[1:], debug, prog=f"moemerge {args[0]}"))
