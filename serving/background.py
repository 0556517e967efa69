"""A child process for the server's background reads (the Feast online store, the MLflow alias).

The bulk Feast read is ~0.25 s of Python and the registry poll some milliseconds more; run in a thread of
the serving process they hold the GIL while requests wait, which was the whole p99 tail of `/v1/forecast`
at 200 req/s. In a child process they cost the server only the unpickling of the result.

The child is spawned (not forked: the server has threads and an event loop), imports Feast and MLflow
once, and runs one call at a time; a call that raises comes back as :class:`BackgroundError` carrying the
original type name and message. A child that dies or hangs past ``timeout`` is killed and a new one is
spawned on the next call, so a wedged store client can never wedge the server. There is one child per
purpose (features, registry, the forecast table's model) for every app in the process (tests start many
apps): calls are functions of their arguments (the table's child keeps the last model it was sent).
"""

from __future__ import annotations

import atexit
import multiprocessing as mp
import os
import threading
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any


class BackgroundError(RuntimeError):
    """A call that raised in the child; ``kind`` is the original exception's type name."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _serve(conn: Connection, niceness: int) -> None:
    if niceness:
        os.nice(niceness)
    while True:
        try:
            fn, args = conn.recv()
        except EOFError:  # the server went away
            return
        try:
            conn.send(("ok", fn(*args)))
        except Exception as err:  # the parent decides what a failure means
            conn.send(("error", type(err).__name__, str(err) or traceback.format_exc(limit=1)))


class Worker:
    def __init__(self, niceness: int = 0) -> None:
        self.niceness = niceness
        self._lock = threading.Lock()
        self._proc: mp.process.BaseProcess | None = None
        self._conn: Connection | None = None

    def _ensure(self) -> Connection:
        if self._proc is None or not self._proc.is_alive():
            ctx = mp.get_context("spawn")
            parent, child = ctx.Pipe()
            self._proc = ctx.Process(target=_serve, args=(child, self.niceness), name="pulse-background", daemon=True)
            self._proc.start()
            child.close()
            self._conn = parent
        assert self._conn is not None
        return self._conn

    def call(self, fn: Callable[..., Any], *args: Any, timeout: float = 60.0) -> Any:
        """``fn(*args)`` in the child (``fn`` importable by name, arguments picklable)."""
        with self._lock:
            conn = self._ensure()
            try:
                conn.send((fn, args))
                if not conn.poll(timeout):
                    raise TimeoutError(f"{fn.__name__} gave no answer in {timeout:g} s")
                reply = conn.recv()
            except (OSError, EOFError, TimeoutError) as err:
                self.close()  # dead or wedged: the next call starts a fresh child
                raise BackgroundError(type(err).__name__, f"background process failed: {err}") from err
        if reply[0] == "error":
            raise BackgroundError(reply[1], reply[2])
        return reply[1]

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        if self._proc is not None and self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5)
        self._proc, self._conn = None, None


# Batch work below the requests' priority: the forecast table's explanations take seconds of a core.
NICENESS = {"table": 10, "decisions": 10}
_workers: dict[str, Worker] = {}
_workers_lock = threading.Lock()


def call(purpose: str, fn: Callable[..., Any], *args: Any, timeout: float = 60.0) -> Any:
    """``fn(*args)`` in the child process of ``purpose`` ("features", "registry", "table", "decisions"): one child per
    purpose, so a slow registry (MLflow's first import, a hanging server) never delays the online store read."""
    with _workers_lock:
        worker = _workers.get(purpose)
        if worker is None:
            worker = _workers[purpose] = Worker(NICENESS.get(purpose, 0))
            atexit.register(worker.close)
    return worker.call(fn, *args, timeout=timeout)


def describe(err: Exception) -> str:
    """``Type: message`` of a failure, with the child's original type for a :class:`BackgroundError`."""
    return f"{err.kind if isinstance(err, BackgroundError) else type(err).__name__}: {err}"
