"""Inf/NaN tests on the exponent bits: of a buffer, and of the byte ranges a merge copies as stored, run on a thread
ahead of the copy through read-only maps of the page cache (resident memory stays flat)."""

from __future__ import annotations

import mmap
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from functools import cache

from moemerge.sources.folder import ByteRange

CHECK_BLOCK = 2**18  # elements per test step: its temporary stays in the CPU cache
AHEAD_BYTES = 256 * 2**20  # how far the tests run ahead of the copy (the pages they read stay cached for it)
# float dtype -> (integer view, mask that drops the sign bit, smallest masked value that is Inf or NaN)
NONFINITE = {
    "float64": ("<u8", 0x7FFF_FFFF_FFFF_FFFF, 0x7FF0_0000_0000_0000),
    "float32": ("<u4", 0x7FFF_FFFF, 0x7F80_0000),
    "float16": ("<u2", 0x7FFF, 0x7C00),
    "bfloat16": ("<u2", 0x7FFF, 0x7F80),
    "float8_e5m2": ("u1", 0x7F, 0x7C),
    "float8_e4m3fn": ("u1", 0x7F, 0x7F),  # no Inf; S.1111.111 is NaN
}


def has_nonfinite(buffer, dtype: str) -> bool:
    """Whether the `dtype` elements in `buffer` include an Inf or NaN: every exponent bit set (and, for e4m3fn, every
    mantissa bit), tested on the integer bits, which costs a fraction of `isfinite()`."""
    if dtype not in NONFINITE:
        return False
    import numpy as np

    code, mask, limit = NONFINITE[dtype]
    values = np.frombuffer(buffer, dtype=code)
    return any((values[i : i + CHECK_BLOCK] & mask).max() >= limit for i in range(0, values.size, CHECK_BLOCK))


def mapped_nonfinite(piece: ByteRange) -> bool:
    """The test on a read-only map of the file's pages (read in at once), unmapped on return: nothing is copied into
    this process and its resident memory does not grow."""
    aligned = piece.offset - piece.offset % mmap.ALLOCATIONGRANULARITY
    flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
    with (
        open(piece.file, "rb", buffering=0) as fh,
        mmap.mmap(fh.fileno(), piece.offset + piece.length - aligned, flags, mmap.PROT_READ, offset=aligned) as mapped,
    ):
        view = memoryview(mapped)[piece.offset - aligned :]
        try:
            return has_nonfinite(view, piece.dtype)
        finally:
            view.release()


class _Worker:
    """One background thread that runs the tests in order. A daemon: an interrupted merge's process ends at once
    whatever the thread is doing (a ThreadPoolExecutor's thread is joined at exit and could hold the process)."""

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._run, name="moemerge-check", daemon=True).start()

    def _run(self) -> None:
        while True:
            job, piece, verdict = self.jobs.get()
            if not verdict.set_running_or_notify_cancel():
                continue
            try:
                verdict.set_result(job(piece))
            except BaseException as exc:  # noqa: BLE001 -- handed to whoever waits for the verdict
                verdict.set_exception(exc)

    def submit(self, job: Callable[[ByteRange], bool], piece: ByteRange) -> Future:
        verdict: Future = Future()
        self.jobs.put((job, piece, verdict))
        return verdict


@cache
def _thread() -> _Worker:
    """One background thread for the tests, for the life of the process."""
    return _Worker()


class Prechecks:
    """The tests of the byte ranges a writer will copy, in its order, started up to AHEAD_BYTES ahead of it: the
    test thread and the copy stay busy together, and the test brings pages in before the copy reads them."""

    def __init__(self, pieces: Iterable[ByteRange]):
        self.waiting = deque(p for p in pieces if p.dtype in NONFINITE)
        self.started: deque[tuple[ByteRange, Future]] = deque()
        self.ahead = 0
        self._top_up()

    def _top_up(self) -> None:
        while self.waiting and self.ahead < AHEAD_BYTES:
            piece = self.waiting.popleft()
            self.started.append((piece, _thread().submit(mapped_nonfinite, piece)))
            self.ahead += piece.length

    def cancel(self) -> None:
        """Drop the tests not yet begun (the merge stopped)."""
        for _, verdict in self.started:
            verdict.cancel()
        self.started.clear()
        self.waiting.clear()

    def nonfinite(self, piece: ByteRange) -> bool:
        """The verdict on `piece`, the next one in order (tested here and now if it was not foreseen)."""
        if piece.dtype not in NONFINITE:
            return False
        while self.started and self.started[0][0] != piece:  # not expected: the order is the writer's
            self.ahead -= self.started.popleft()[0].length
        if not self.started:
            return mapped_nonfinite(piece)
        _, verdict = self.started.popleft()
        self.ahead -= piece.length
        self._top_up()
        return verdict.result()
