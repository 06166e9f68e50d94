"""Command-line options shared by the merge and the subcommands: their types, parsers, logging set-up, and
mergekit-moe's options that moemerge accepts so that old command lines keep working."""

from __future__ import annotations

import logging
import re
import sys
from typing import Annotated

import typer

from moemerge.errors import ConfigError

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
    from moemerge.forward.loading import LoadOptions

    if load_in_4bit and load_in_8bit:
        raise ConfigError("--load-in-4bit and --load-in-8bit: pick one")
    quantize = "4bit" if load_in_4bit else ("8bit" if load_in_8bit else None)
    return LoadOptions(device, quantize, trust_remote_code, parse_max_memory(max_memory))


def setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    root = logging.getLogger("moemerge")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def progress_display(quiet: bool):
    """A rich progress bar on a TTY, and its update(stage, done, total); (None, None) in pipes and CI."""
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


def plural(count: int, noun: str) -> str:
    """`1 expert`, `2 experts`."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


DeviceOpt = Annotated[
    str, typer.Option(help="Where forward passes run: cpu, cuda, cuda:N, or auto (GPUs + CPU + disk).")
]
Load4Opt = Annotated[
    bool, typer.Option("--load-in-4bit/--no-load-in-4bit", help="Load the model in 4-bit (bitsandbytes) for the forward pass.")
]  # fmt: skip
Load8Opt = Annotated[
    bool, typer.Option("--load-in-8bit/--no-load-in-8bit", help="Load the model in 8-bit (bitsandbytes) for the forward pass.")
]  # fmt: skip
RemoteOpt = Annotated[
    bool,
    typer.Option("--trust-remote-code/--no-trust-remote-code", help="Allow models that need their own Python code."),
]
ShardSizeOpt = Annotated[str, typer.Option(help="Max bytes per shard: 5GB, 500MB, 2GiB, 5B (=5e9); 0 = one file.")]
AllowSameOpt = Annotated[
    bool,
    typer.Option(
        "--i-understand-this-is-not-useful-without-training/--no-i-understand-this-is-not-useful-without-training",
        help="Allow every expert to be the same model.",
    ),
]
AllowCrimesOpt = Annotated[
    bool, typer.Option("--allow-crimes/--no-allow-crimes", help="Allow experts of another model_type if shapes agree.")
]
VerboseOpt = Annotated[int, typer.Option("--verbose", "-v", count=True, help="More output; -vv shows tracebacks.")]
QuietOpt = Annotated[bool, typer.Option("--quiet/--no-quiet", "-q", help="Only errors.")]
MaxMemOpt = Annotated[
    str | None,
    typer.Option(help="Budget for --device auto: 20GiB (CPU) or 0=20GiB,cpu=60GiB; the rest offloads to disk."),
]


def loads_a_model(*, device: str = "cpu", quantize: bool = True, remote: bool = True):
    """The options of every verb that loads a model, defined once: the decorated command gets `--device`,
    `--max-memory`, `-v`, `-q` (with `quantize`, `--load-in-4bit/8bit`; with `remote`, `--trust-remote-code`) and
    is called with `load=` (a checked LoadOptions) and `quiet=`, logging already set up. An option added here reaches
    route, eval, tune, verify and plan in one edit."""
    import functools
    import inspect
    import typing

    added = {"device": (DeviceOpt, device), "max_memory": (MaxMemOpt, None)}
    if quantize:
        added |= {"load_in_4bit": (Load4Opt, False), "load_in_8bit": (Load8Opt, False)}
    if remote:
        added["trust_remote_code"] = (RemoteOpt, False)
    added |= {"verbose": (VerboseOpt, 0), "quiet": (QuietOpt, False)}

    def decorate(command):
        hints = typing.get_type_hints(command, include_extras=True)
        own = [p.replace(annotation=hints[p.name]) for p in inspect.signature(command).parameters.values()
               if p.name not in ("load", "quiet")]  # fmt: skip
        extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=kind, default=default)
                 for name, (kind, default) in added.items()]  # fmt: skip

        @functools.wraps(command)
        def run(**kwargs):
            given = {name: kwargs.pop(name) for name in added}
            setup_logging(given["verbose"], given["quiet"])
            load = load_options(given["device"], given.get("load_in_4bit", False), given.get("load_in_8bit", False),
                                given.get("trust_remote_code", False), given["max_memory"])  # fmt: skip
            return command(**kwargs, load=load, quiet=given["quiet"])

        run.__signature__ = inspect.Signature(own + extra)
        run.__annotations__ = {p.name: p.annotation for p in own + extra}
        del run.__wrapped__  # typer must read the signature above, not the command's own
        return run

    return decorate
