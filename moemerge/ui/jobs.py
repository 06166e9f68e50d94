"""One long job at a time (merge or tune) in a background thread: its progress per stage, log, result, and a Cancel
that stops it like Ctrl-C does (at the next progress step; nothing half written, the CLI's messages)."""

from __future__ import annotations

import html
import logging
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


def error_lines(exc: BaseException) -> list[str]:
    """The CLI's one-line errors: each problem of a moemerge error, else the exception's class and first line."""
    from moemerge.errors import MoemergeError

    if isinstance(exc, MoemergeError):
        return [f"error: {problem}" for problem in exc.problems]
    first = (str(exc).splitlines() or [""])[0]
    return [f"error: {exc.__class__.__name__}: {first}"]


class Cancelled(KeyboardInterrupt):
    """Raised inside the job's progress callback: the library cleans up exactly as for Ctrl-C."""


@dataclass
class Job:
    kind: str  # "merge" | "tune"
    target: str  # what it works on, for the messages
    stages: dict[str, tuple[float, float, str]] = field(default_factory=dict)  # stage -> (done, total, text)
    lines: list[str] = field(default_factory=list)
    state: str = "running"  # running | done | failed | cancelled
    result: Any = None
    written: str | None = None  # set once the output exists: a later cancel cannot undo it
    started: float = field(default_factory=time.time)
    cancel_requested: bool = False
    updates: int = 0

    def progress(self, stage: str, done: float, total: float, text: str | None = None) -> None:
        if self.cancel_requested:
            raise Cancelled
        if text is None:
            text = f"{done / 1e6:,.1f}/{total / 1e6:,.1f} MB" if stage == "tensors" else f"{done:g}/{total:g}"
        self.stages[stage] = (done, total, text)
        self.updates += 1

    def check(self) -> None:
        """Between steps: stop here when Cancel was pressed."""
        if self.cancel_requested:
            raise Cancelled


class _JobLog(logging.Handler):
    """The library's warnings during a job, into its messages (the CLI prints them on stderr)."""

    def __init__(self, job: Job, thread: int) -> None:
        super().__init__(logging.WARNING)
        self.job, self.thread = job, thread

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.job.lines.append(f"{record.levelname.lower()}: {record.getMessage()}")


class Runner:
    """The page's single job slot; shared by every browser tab, so that a reload finds the running job again."""

    def __init__(self) -> None:
        self.job: Job | None = None
        self._lock = threading.Lock()

    def running(self) -> bool:
        return self.job is not None and self.job.state == "running"

    def start(
        self, kind: str, target: str, work: Callable[[Job], Any], done: Callable[[Job], None] | None = None
    ) -> str:
        """Start `work(job)` unless a job runs; returns the line to show."""
        with self._lock:
            if self.running():
                return f"error: a {self.job.kind} of {self.job.target} is running; wait for it or cancel it first"
            job = self.job = Job(kind, target)
        threading.Thread(target=self._run, args=(job, work, done), daemon=True, name=f"moemerge-{kind}").start()
        return f"{kind} of {target} started"

    def _run(self, job: Job, work, done) -> None:
        handler = _JobLog(job, threading.get_ident())
        logging.getLogger("moemerge").addHandler(handler)
        try:
            job.result = work(job)
            if done is not None:
                done(job)
            job.state = "done"
        except Cancelled:
            job.state = "cancelled"
            where = f"after {job.written} was written" if job.written else "nothing was written"
            job.lines.append(f"error: cancelled (as Ctrl-C); {where}")
        except BaseException as exc:  # noqa: BLE001 -- the page's one boundary, like the CLI's
            job.state = "failed"
            job.lines += error_lines(exc)
            log.debug("job failed: %s", "".join(traceback.format_exception(exc)))
        finally:
            logging.getLogger("moemerge").removeHandler(handler)

    def cancel(self) -> str:
        job = self.job
        if job is None or job.state != "running":
            return "nothing is running"
        job.cancel_requested = True
        return f"cancelling the {job.kind} of {job.target} (at its next step)"


def progress_html(job: Job | None) -> str:
    """One bar per stage (an HTML <progress>, so that the page and the browser test read the same numbers)."""
    if job is None:
        return "<div class='mm-progress'>no job has run yet</div>"
    rows = [f"<div class='mm-progress' data-state='{job.state}' data-kind='{job.kind}'>"
            f"<b>{html.escape(job.kind)} of {html.escape(job.target)}: {job.state}</b>"]  # fmt: skip
    for stage, (done, total, text) in job.stages.items():
        rows.append(f"<div class='mm-stage' data-stage='{html.escape(stage)}'><span>{html.escape(stage)}</span> "
                    f"<progress value='{done}' max='{max(total, 1)}'></progress> {html.escape(text)}</div>")  # fmt: skip
    rows.append("</div>")
    return "".join(rows)
