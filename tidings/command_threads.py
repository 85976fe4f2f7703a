"""The threads commands run on, so that a dispatch's caller can stop waiting at its deadline.

An aggregate's ``execute`` is the application's code, and may be slow; Python cannot interrupt it. So the
caller hands the command to one of these threads and waits for it no longer than the dispatch's timeout.
At the deadline the caller abandons the command unless its append has started: an abandoned command
finishes deciding in the background and then appends nothing; an append already under way is waited for
(the store cancels it at the same deadline if it is still waiting), so the caller always learns whether
the events were committed.

Threads are started as callers need them, up to ``most``, and are daemons: a command stuck for good in an
aggregate's code keeps its thread, but never keeps the process from exiting.

Handing a command over costs two thread wake-ups per dispatch: about 20 microseconds on an idle
machine, but 100-250 on a loaded 2-core VM, where it took dispatch from 0.76-0.84 of the bare append's
throughput to 0.51-0.69 (bench/bench_dispatch.py). So it is the application's choice
(``Application(command_threads=N)``), not the default; see docs/decisions/0017-write-side-truth.md.
"""

from __future__ import annotations

import contextvars
import queue
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["CommandThreads", "Job", "on_command_thread"]

_local = threading.local()


def on_command_thread() -> bool:
    """Whether the caller is a command thread (a command dispatched from inside another's execute)."""
    return getattr(_local, "command_thread", False)


class Job:
    """One command handed to a thread: its outcome, and whether it may still append."""

    __slots__ = (
        "_abandoned",
        "_appending",
        "_args",
        "_context",
        "_done",
        "_error",
        "_fn",
        "_lock",
        "_result",
    )

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        self._fn, self._args = fn, args
        # The caller's context variables (its trace span above all) go with the command.
        self._context = contextvars.copy_context()
        self._lock = threading.Lock()
        self._done = threading.Lock()
        self._done.acquire()
        self._abandoned = self._appending = False
        self._result: Any = None
        self._error: BaseException | None = None

    def run(self) -> None:
        """Run the command; its caller learns the outcome from ``finish``."""
        try:
            self._result = self._context.run(self._fn, *self._args, self)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller as it is
            self._error = exc

    def finish(self) -> None:
        self._done.release()

    def wait(self, timeout: float | None) -> bool:
        """Whether the job finished within ``timeout`` seconds (None: however long it takes)."""
        if timeout is None:
            self._done.acquire()
        elif not self._done.acquire(timeout=max(0.0, timeout)):
            return False
        self._done.release()
        return True

    def outcome(self) -> Any:
        if self._error is not None:
            raise self._error
        return self._result

    def abandon(self) -> bool:
        """The caller gives up: True when the job will append nothing, False when an append is under way."""
        with self._lock:
            if self._appending:
                return False
            self._abandoned = True
            return True

    def appending(self) -> bool:
        """Called before each append: False when the caller has gone (then nothing may be appended)."""
        with self._lock:
            if self._abandoned:
                return False
            self._appending = True
            return True

    def deciding(self) -> None:
        """The append was refused and the command decides again: the caller may abandon it meanwhile."""
        with self._lock:
            self._appending = False


class CommandThreads:
    """Up to ``most`` daemon threads running ``Job``s in the order they come."""

    def __init__(self, most: int, name: str = "tidings-command") -> None:
        if most < 1:
            raise ValueError(f"command threads must be at least 1, got {most}")
        self.most = most
        self._name = name
        self._jobs: queue.SimpleQueue[Job] = queue.SimpleQueue()
        self._idle = 0  # threads waiting for a job
        self._lock = threading.Lock()
        self._started = 0

    def run(self, job: Job) -> None:
        with self._lock:
            if self._idle:
                self._idle -= 1
            elif self._started < self.most:
                self._started += 1
                name = f"{self._name}-{self._started}"
                threading.Thread(target=self._serve, name=name, daemon=True).start()
        self._jobs.put(job)

    def _serve(self) -> None:
        _local.command_thread = True
        while True:
            job = self._jobs.get()
            job.run()
            job.finish()
            with self._lock:
                self._idle += 1
