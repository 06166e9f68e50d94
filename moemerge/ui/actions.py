"""What the page's buttons do, without Gradio: each calls the library function its CLI verb calls (plan, merge,
verify, route, eval, tune, push) and returns plain data for the page to show."""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from moemerge.ui import form
from moemerge.ui.jobs import Job, error_lines
from moemerge.ui.lib import lib
from moemerge.ui.paths import Workspace


@dataclass(frozen=True)
class Settings:
    """How the page was started: its work folder, where models run, and the merge's safety switches."""

    workspace: Workspace
    device: str = "cpu"
    options: dict[str, Any] = field(default_factory=dict)  # MergeOptions fields set from the command line

    def load(self):
        return lib("loading").LoadOptions(self.device)


@contextlib.contextmanager
def config_file(text: str, settings: Settings):
    """The YAML written to a temporary file with its local paths made absolute inside the work folder; yields
    (path, data, problems): problems found before any check runs (bad YAML, paths outside the work folder)."""
    values, problem = form.yaml_to_form(text)
    if problem:
        yield None, None, [problem]
        return
    data, problems = settings.workspace.config_data(yaml.safe_load(text) or {})
    with tempfile.TemporaryDirectory(prefix="moemerge-ui-") as folder:
        path = Path(folder) / "config.yml"
        path.write_text(form.dump(data), encoding="utf-8")
        yield path, data, problems


def _clean(problem: str, path: Path | None) -> str:
    """Without the temporary file's name: `experts[1].positive_prompts: ...`, `config: unknown key ...`."""
    return problem.replace(f"{path}: ", "").replace(str(path), "the config") if path else problem


def check(text: str, settings: Settings, *, full: bool = False) -> tuple[dict[str, list[str]], str]:
    """`moemerge plan` on the YAML: every problem placed at its field, and the plan's summary when there is none
    (`full`: with the disk probe and time estimate, as the Check button does; else a one-line summary)."""
    from moemerge.errors import MoemergeError

    dryrun, pipeline = lib("costs"), lib("pipeline")

    with config_file(text, settings) as (path, data, problems):
        summary = ""
        if path is not None and not problems:
            try:
                prepared = pipeline.prepare(path, None, pipeline.MergeOptions(load=settings.load(), **settings.options))
                if full:
                    summary = dryrun.format_summary(dryrun.summarize(prepared, settings.load(),
                                                                     probe_dir=settings.workspace.root))  # fmt: skip
                else:
                    plan = prepared.plan
                    summary = (f"ok: {prepared.arch.class_name}, {len(prepared.experts)} experts, top-"
                               f"{prepared.config.experts_per_token}, {plan.total_size / 1e6:,.1f} MB in "
                               f"{len(plan.shards)} shard(s); press Check for memory and time")  # fmt: skip
            except MoemergeError as exc:
                problems = list(exc.problems)
        problems = [_clean(p, path) for p in problems]
        return form.placed(problems, data), summary


def merge_work(text: str, out_text: str, settings: Settings, *, overwrite: bool, routing_report: bool):
    """The merge as a job: `moemerge CONFIG OUT`, then `moemerge verify OUT`. Checked paths come first, so that a bad
    one is said at once and no job starts."""
    out = settings.workspace.path(out_text, what="output folder")

    def work(job: Job) -> dict[str, Any]:
        from moemerge.errors import ConfigError, problems_error
        from moemerge.ui import inference

        pipeline = lib("pipeline")

        with config_file(text, settings) as (path, _, problems):
            if problems:
                raise problems_error(ConfigError, [_clean(p, path) for p in problems])
            inference.release()  # a model kept for the chat may be the folder about to be replaced
            options = pipeline.MergeOptions(load=settings.load(), overwrite=overwrite, routing_report=routing_report,
                                   **settings.options)  # fmt: skip
            prepared = pipeline.merge(path, out, options, progress=job.progress)
        job.written = str(out)
        plan = prepared.plan
        job.lines.append(f"wrote {out} ({prepared.arch.class_name}, {len(prepared.experts)} experts, "
                         f"{len(plan.shards)} shard(s), {plan.total_size / 1e6:.1f} MB)")  # fmt: skip
        job.check()
        job.progress("verify", 0, 1, "checking")
        findings, notes = lib("verify").verify(out, full=True, load=settings.load())
        job.progress("verify", 1, 1, "done")
        job.lines += [f"error: {out}: {f}" for f in findings] or [f"ok: {n}" for n in notes] + [f"{out}: verified"]
        return {"out": str(out), "verified": not findings}

    return out, work


def tune_work(out_text: str, specs: list[str], settings: Settings, *, steps: int, lr: float, batch_tokens: int,
              seq_len: int):  # fmt: skip
    """`moemerge tune OUT --data ...` as a job; the progress shows loss and tokens/s."""
    out = settings.workspace.path(out_text, what="model folder")
    files = lib("data").parse_specs(specs)
    tune = lib("loop").TuneSettings(
        steps=int(steps), lr=float(lr), batch_tokens=int(batch_tokens), seq_len=int(seq_len)
    )

    def work(job: Job) -> dict[str, Any]:
        from moemerge.ui import inference

        tuning = lib("tuned")

        inference.release()

        def on_step(step: int, total: int, loss: float, speed: float) -> None:
            if step == 0:  # the closed-form fit begins (a few forward passes)
                job.progress("training", 0, max(total, 1), "fitting the routers in closed form")
                return
            job.progress("training", step, total, f"{step}/{total} steps, loss {loss:.4f}, {speed:,.0f} tokens/s")

        record = tuning.tune(out, files, tune, settings.load(), on_step=on_step)
        job.written = str(out)
        for name, before in record["held_out_loss_before"].items():
            job.lines.append(f"{name}: held-out loss {before:.4f} -> {record['held_out_loss_after'][name]:.4f}")
        job.lines.append(f"trained the routers of {out} in {record['seconds']} s "
                         f"({record['tokens_per_second']:.0f} tokens/s); wrote {out / lib('record').RECORD}")  # fmt: skip
        return record

    return out, work


def data_specs(lines: str, uploads: list[str] | None, settings: Settings) -> list[str]:
    """`NAME=FILE` lines typed (paths inside the work folder) plus uploaded files (named after the file)."""
    specs = []
    for line in form._lines(lines):
        name, sep, file = line.rpartition("=")
        path = settings.workspace.path(file, what=f"data {name or file}")
        specs.append(f"{name}={path}" if sep else str(path))
    specs += [f"{Path(f).stem}={f}" for f in uploads or []]
    return specs


def output_files(out: Path) -> list[list[Any]]:
    if not out.is_dir():
        return []
    return [[p.name, f"{p.stat().st_size / 1e6:,.3f} MB"] for p in sorted(out.iterdir()) if p.is_file()]


def route_report(out_text: str, settings: Settings) -> tuple[str, str]:
    """`moemerge route OUT`: the table and the heatmap (OUT/routing.png)."""
    routing = lib("routing")
    out = settings.workspace.path(out_text, what="model folder")
    report = routing.report(out, prompts=None, load=settings.load())
    return routing.format_table(report), str(out / routing.REPORT_PNG)


def evaluate(out_text: str, specs: list[str], settings: Settings, *, compare: bool, max_tokens: int | None):
    """`moemerge eval OUT --data ... [--compare]`: the table and the chart (OUT/eval.png)."""
    scoring = lib("evaluate")
    out = settings.workspace.path(out_text, what="model folder")
    datasets = scoring.parse_data(specs) if specs else scoring.prompt_datasets(out)
    result = scoring.evaluate(out, datasets=datasets, compare=compare, max_tokens=max_tokens, load=settings.load())
    paths = scoring.write_results(result, out)
    return scoring.format_table(result), str(paths[1])


def card(out_text: str, settings: Settings) -> str:
    """OUT/README.md as it will appear on the Hub."""
    out = settings.workspace.path(out_text, what="model folder")
    readme = out / "README.md"
    if not readme.is_file():
        return f"error: {out}: no model card (README.md); merge first"
    return readme.read_text(encoding="utf-8")


def push(out_text: str, repo_id: str, private: bool, token: str, settings: Settings) -> str:
    """`moemerge push OUT REPO_ID`, with the token typed into the page used for this push only (never stored,
    logged or shown: any message that would quote it has it masked)."""
    from moemerge.errors import ConfigError

    token = (token or "").strip() or None
    try:
        out = settings.workspace.path(out_text, what="model folder")
        if not (out / "config.json").is_file():
            raise ConfigError(f"{out}: not a merged model (no config.json); merge first, then push")
        url = lib("upload").push(out, repo_id.strip(), private=private, revision=None, message=None, token=token)
        return f"pushed {out} to {url}"
    except Exception as exc:  # noqa: BLE001 -- one line, as the CLI prints it
        lines = "\n".join(error_lines(exc))
        return lines.replace(token, "***") if token else lines
