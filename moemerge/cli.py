"""Command line: argument parsing, progress display, and the one exception -> exit-code boundary."""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
import re
import signal
import sys
import traceback
from pathlib import Path
from typing import Annotated

import typer

from moemerge import __version__
from moemerge.commands import mergekit_flags
from moemerge.commands.options import (  # noqa: F401 -- parse_size/parse_max_memory: also imported from here
    AllowCrimesOpt,
    AllowSameOpt,
    Load4Opt,
    Load8Opt,
    MaxMemOpt,
    QuietOpt,
    RemoteOpt,
    ShardSizeOpt,
    VerboseOpt,
    load_options,
    parse_max_memory,
    parse_size,
    plural,
    progress_display,
    setup_logging,
)
from moemerge.errors import ConfigError, MoemergeError
from moemerge.sources import hub_reach

log = logging.getLogger("moemerge")
INTERRUPTS = {signal.SIGINT: "Ctrl-C (SIGINT)", signal.SIGTERM: "SIGTERM"}
_state: dict[str, object] = {"signal": None, "written": None}  # the first interrupt seen; OUT once published


def _version(value: bool) -> None:
    if value:
        print(f"moemerge {__version__}")
        raise typer.Exit()


app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None)


@app.command(
    help="Merge the base and expert models named in CONFIG into one MoE checkpoint written to OUT.",
    epilog="Other commands: `moemerge plan CONFIG` (dry run), `moemerge verify OUT`, `moemerge route OUT` "
    "(routing report), `moemerge eval OUT` (loss and perplexity), `moemerge tune OUT --data FILE` (train the routers), "
    "`moemerge push OUT REPO_ID`, `moemerge ui` (the web page); each takes "
    "--help.\n\n" + mergekit_flags.HELP_NOTE,
)
def merge(
    config: Annotated[Path, typer.Argument(metavar="CONFIG", help="YAML config (mergekit-moe configs work unchanged).")],
    out: Annotated[Path, typer.Argument(metavar="OUT", help="Output folder; must be absent or empty unless --overwrite.")],
    copy_tokenizer: Annotated[bool, typer.Option(help="Copy the base model's tokenizer files to OUT.")] = True,
    out_shard_size: ShardSizeOpt = "5GB",
    device: Annotated[str | None, typer.Option(help="Where the hidden-state pass runs: cpu (default), cuda, cuda:N, or auto (GPUs + CPU + disk).")] = None,
    load_in_4bit: Load4Opt = False,
    load_in_8bit: Load8Opt = False,
    trust_remote_code: RemoteOpt = False,
    max_memory: MaxMemOpt = None,
    push_to_hub: Annotated[str | None, typer.Option(help="After a successful merge, upload OUT to this Hub repo (see `moemerge push`).")] = None,
    private: Annotated[bool, typer.Option("--private/--no-private", help="With --push-to-hub: create the repo as private.")] = False,
    license: Annotated[str | None, typer.Option(help="Hub license id for the model card, e.g. apache-2.0 (default: the base model's, when known).")] = None,
    routing_report: Annotated[bool, typer.Option("--routing-report/--no-routing-report", help="Run `moemerge route` on the result and add it to OUT and the card.")] = False,
    random_seed: Annotated[int | None, typer.Option(help="Seed for random gates and noise (overrides `seed:`).")] = None,
    allow_same_experts: AllowSameOpt = False,
    allow_crimes: AllowCrimesOpt = False,
    lazy_unpickle: Annotated[bool, typer.Option("--lazy-unpickle/--no-lazy-unpickle", help="Accepted for mergekit compatibility; .bin files are always read lazily.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite/--no-overwrite", help="Replace OUT if it exists (swapped in only when the merge is complete).")] = False,
    verbose: VerboseOpt = 0,
    quiet: QuietOpt = False,
    version: Annotated[bool, typer.Option("--version", "-V", is_eager=True, callback=_version, help="Print the version and exit.")] = False,
    cuda: mergekit_flags.CudaOpt = False,
    gpu_rich: mergekit_flags.GpuRichOpt = False,
    num_threads: mergekit_flags.ThreadsOpt = None,
    transformers_cache: mergekit_flags.CacheOpt = None,
    write_model_card: mergekit_flags.CardOpt = True,
    safe_serialization: mergekit_flags.SafeOpt = True,
    clone_tensors: mergekit_flags.CloneOpt = False,
    lora_merge_cache: mergekit_flags.LoraCacheOpt = None,
    lora_merge_dtype: mergekit_flags.LoraDtypeOpt = None,
    low_cpu_memory: mergekit_flags.LowMemOpt = False,
    read_to_gpu: mergekit_flags.ReadGpuOpt = False,
    multi_gpu: mergekit_flags.MultiGpuOpt = False,
    async_write: mergekit_flags.AsyncOpt = False,
    write_threads: mergekit_flags.WriteThreadsOpt = None,
) -> None:  # fmt: skip
    from moemerge.merge.pipeline import MergeOptions
    from moemerge.merge.pipeline import merge as run_merge

    setup_logging(verbose, quiet)
    ignored = {"clone_tensors": clone_tensors, "lora_merge_cache": lora_merge_cache, "low_cpu_memory": low_cpu_memory,
               "lora_merge_dtype": lora_merge_dtype, "read_to_gpu": read_to_gpu, "multi_gpu": multi_gpu,
               "async_write": async_write, "write_threads": write_threads, "lazy_unpickle": lazy_unpickle}  # fmt: skip
    mergekit_flags.apply(num_threads=num_threads, transformers_cache=transformers_cache,
                 safe_serialization=safe_serialization, ignored=ignored)  # fmt: skip
    device = mergekit_flags.device(device, cuda=cuda, gpu_rich=gpu_rich)
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
        write_card=write_model_card,
    )
    if private and not push_to_hub:
        raise ConfigError("--private only applies with --push-to-hub REPO_ID")
    if push_to_hub:
        from moemerge.publish import upload

        upload.check_push(push_to_hub)  # before the merge, not after hours of it
    bar, update = progress_display(quiet)
    if bar is not None:
        bar.start()
    try:
        prepared = run_merge(config, out, options, progress=update)
    finally:
        if bar is not None:
            bar.stop()
    _state["written"] = out
    if not quiet:
        plan = prepared.plan
        print(f"wrote {out} ({prepared.arch.class_name}, {plural(len(prepared.experts), 'expert')}, "
              f"{plural(len(plan.shards), 'shard')}, {plan.total_size / 1e6:.1f} MB)")  # fmt: skip
    if push_to_hub:
        url = upload.push(out, push_to_hub, private=private, revision=None, message=None)
        if not quiet:
            print(f"pushed {out} to {url}")


def _interrupt(signum, frame) -> None:
    """SIGINT and SIGTERM clean up alike (the partial output folder is removed); a second signal during the
    clean-up is ignored so that the clean-up finishes."""
    if _state["signal"] is None:
        _state["signal"] = signum
        raise KeyboardInterrupt


def _interrupted() -> int:
    signum = _state["signal"] or signal.SIGINT
    written = _state["written"]
    if written is not None:
        print(f"error: interrupted by {INTERRUPTS[signum]} after {written} was written; the push did not finish",
              file=sys.stderr)  # fmt: skip
    else:
        print(f"error: interrupted by {INTERRUPTS[signum]}; nothing was written", file=sys.stderr)
    return 128 + int(signum)


def _usage_error(exc: typer.TyperException, prog: str) -> str:
    """click's message, with a did-you-mean only when the option is a near miss (`--bogus` is not `--verbose`)."""
    if getattr(exc, "possibilities", None) and getattr(exc, "option_name", None):  # click's NoSuchOption
        exc.possibilities = difflib.get_close_matches(exc.option_name, exc.possibilities, n=1, cutoff=0.8)
    return f"error: {exc.format_message()} (see `{prog} --help`)"


def _run(command, args: list[str], debug: bool, prog: str = "moemerge", *, own_process: bool = False) -> int:
    """Run one command line. `own_process`: main() was called as the program itself (not from a notebook or a test),
    so nothing of the caller's runs after it."""
    _state.update(signal=None, written=None)
    hub_reach.CACHE.update(dir=None, unreachable=None)  # each run (a notebook makes many) starts afresh
    previous = {}
    with contextlib.suppress(ValueError):  # only the main thread may set handlers (not so in a notebook thread)
        previous = {signum: signal.signal(signum, _interrupt) for signum in INTERRUPTS}
    try:
        code = _invoke(command, args, debug, prog)
    finally:  # a notebook or a test calls main() again: its own Ctrl-C handling comes back
        for signum, handler in previous.items():
            # as a program, a signal after the work is done changes nothing: it must not kill the exit either
            signal.signal(signum, signal.SIG_IGN if own_process else handler)
    if own_process and _state["signal"] is not None:
        # End now: CPython kills itself with SIGINT at exit when the KeyboardInterrupt was raised inside code run
        # by eval/exec (a dataclass being built, say), even though it was handled: the exit code would be lost.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _invoke(command, args: list[str], debug: bool, prog: str) -> int:
    try:
        result = command.main(args=args, prog_name=prog, standalone_mode=False)
        if _state["signal"] is not None:  # typer turns KeyboardInterrupt into a returned 130
            return _interrupted()
        return result if isinstance(result, int) else 0
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        return _interrupted()
    except typer.TyperException as exc:  # click's usage errors, as typer vendors them
        if type(exc).__name__ == "NoArgsIsHelpError":
            print(exc.format_message())
            return 0
        print(_usage_error(exc, prog), file=sys.stderr)
        return 2
    except MoemergeError as exc:
        if debug:
            traceback.print_exc()
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return _interrupted()
    except Exception as exc:  # noqa: BLE001 -- the one place that turns any failure into a line and exit 1
        if debug:
            traceback.print_exc()
        first = str(exc).splitlines()[0] if str(exc) else ""
        hint = "" if debug else " (rerun with -vv for a traceback)"
        print(f"error: {exc.__class__.__name__}: {first}{hint}", file=sys.stderr)
        return 1


GLOBAL_FLAGS = re.compile(r"-v+|--verbose|-q|--quiet")


def _command(typer_app: typer.Typer):
    """The click command, with `CONFIG OUT` on its usage line and in its errors (typer writes `{config}`)."""
    command = typer.main.get_command(typer_app)
    for param in command.params:  # `Missing argument 'OUT'`, as the usage line writes it
        if param.param_type_name == "argument" and param.metavar is None:
            param.metavar = param.name.upper()
    pieces = command.collect_usage_pieces
    command.collect_usage_pieces = lambda ctx: [
        re.sub(r"\{(\w+)\}", lambda m: m[1].upper(), piece) for piece in pieces(ctx)
    ]
    return command


def _split_verb(args: list[str]) -> tuple[str | None, list[str]]:
    """`moemerge [-v|-q ...] VERB ARGS` -> (VERB, ARGS + the flags); (None, args) for the bare merge."""
    from moemerge.commands import SUBCOMMANDS

    lead = 0
    while lead < len(args) and GLOBAL_FLAGS.fullmatch(args[lead]):
        lead += 1
    if lead < len(args) and args[lead] in SUBCOMMANDS:
        return args[lead], args[lead + 1 :] + args[:lead]
    return None, args


def main(argv: list[str] | None = None) -> None:
    """`moemerge CONFIG OUT [options]`, or `moemerge VERB ...` for the subcommands."""
    args = list(sys.argv[1:] if argv is None else argv) or ["--help"]
    debug = (
        os.environ.get("MOEMERGE_DEBUG") == "1"
        or any(re.fullmatch(r"-v{2,}", a) for a in args)
        or (args.count("-v") + args.count("--verbose") >= 2)
    )
    verb, rest = _split_verb(args)
    own = argv is None
    if verb is None:
        raise SystemExit(_run(_command(app), args, debug, own_process=own))
    from moemerge.commands import SUBCOMMANDS

    raise SystemExit(_run(_command(SUBCOMMANDS[verb]), rest, debug, prog=f"moemerge {verb}", own_process=own))
