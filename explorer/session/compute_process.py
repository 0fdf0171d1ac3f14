"""Number crunching in a child process, so the GUI thread never waits for the GIL.

Measured on a shared 2-core machine: with statistics (2 threads) and a diff running in *threads* of the window's
process, the event loop stalled 150-330 ms at a time (the GUI thread drops the GIL in every Qt call and must win it
back from busy workers, which the OS may have descheduled). In a child process the GUI process only copies tensors
into shared memory and waits on a pipe.

One long-lived child (``spawn``: no fork of a process holding Qt and threads), started ahead of need. A job is a
module-level function of a Qt-free module, handed to ``call`` as the function object itself (never a dotted string a
move would silently break; the child imports it by the object's own module and name); progress and cancellation
cross the pipe. Results and
exceptions come back pickled (``explorer.errors`` types keep their class, so expected errors stay expected). A job
asked for ``partial=`` results gets a ``partial(obj)`` callback; each call sends ``obj`` to the parent's callback
(a first look before the final result).
"""
from __future__ import annotations

import importlib
import threading
import time
import traceback
from typing import Any, Callable

from explorer.errors import Cancelled

_CANCEL_POLL_S = 0.02
CANCEL_GRACE_S = 5.0    # a job told to stop that has not stopped after this long is not checking: the child is killed


class CallTimeout(Exception):
    """A job ran past its ``timeout``; the child was killed (it restarts on the next request)."""


class CallAborted(Exception):
    """The caller's ``abort`` said the job's answer is not wanted; the child was killed (it restarts on the next
    request)."""


def _child_main(conn, cancel, nice: int = 10, tensors: bool = True) -> None:  # the child process
    import os
    try:  # number crunching yields the CPU to the window: on 2 cores a busy child otherwise delays the GUI thread
        if nice:
            os.nice(nice)
    except (AttributeError, OSError):
        pass
    if tensors:
        importlib.import_module("torch.multiprocessing")   # tensors arrive through shared memory
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        job, (mod_name, fn_name), args, kwargs, want_partial = msg
        last = [0.0]

        def progress(done, total, _job=job):
            now = time.monotonic()
            if now - last[0] > 0.05 or done >= total:
                last[0] = now
                conn.send(("progress", _job, int(done), int(total)))

        def should_stop(_job=job):
            return cancel.value == _job

        def partial(obj, _job=job):
            conn.send(("partial", _job, obj, None))
        if want_partial:
            kwargs = dict(kwargs, partial=partial)
        try:
            fn = getattr(importlib.import_module(mod_name), fn_name)
            out = fn(*args, progress=progress, should_stop=should_stop, **kwargs)
        except BaseException as e:  # noqa: BLE001 - everything goes back to the parent
            text = traceback.format_exc()
            try:
                conn.send(("error", job, e, text))
            except Exception:  # an exception that cannot be pickled: send its text
                conn.send(("error", job, RuntimeError(f"{type(e).__name__}: {e}"), text))
        else:
            conn.send(("result", job, out, None))


class ComputeProcess:
    """The parent's handle: ``call(function, *args, progress=..., should_stop=...)`` from a worker
    thread (one call at a time; a lock queues the rest)."""

    def __init__(self, nice: int = 10, name: str = "state-dict-explorer-compute", tensors: bool = True):
        self.nice = nice      # number crunching yields the CPU to the window; a parse the user waits for does not
        self.name = name
        # tensors cross the pipe (torch's shared-memory pickling, which imports torch in both processes); a process
        # that only opens files (the parse engine) imports no torch: the listing never waits for it
        self.tensors = tensors
        self._lock = threading.RLock()   # held by a call (or a caller's sequence of them: ``held``)
        self._proc = None
        self._conn = None
        self._cancel = None
        self._job = 0
        self._start_lock = threading.Lock()
        self.ever_started = False     # a child was started once (it may have been stopped since)

    def start(self) -> None:
        with self._start_lock:
            self.ever_started = True
            if self._proc is not None and self._proc.is_alive():
                return
            import multiprocessing as mp

            if self.tensors:
                importlib.import_module("torch.multiprocessing")   # registers shared-memory pickling of tensors
            ctx = mp.get_context("spawn")
            parent, child = ctx.Pipe()
            self._cancel = ctx.Value("q", -1, lock=False)
            self._proc = ctx.Process(target=_child_main, args=(child, self._cancel, self.nice, self.tensors),
                                     daemon=True, name=self.name)
            # The child needs only this package. Hide the main module while the spawn data is prepared, so the
            # child never re-runs whatever script started the window (an unguarded one would open a second
            # window in the child and never answer).
            import sys
            import types
            real_main = sys.modules["__main__"]
            sys.modules["__main__"] = types.ModuleType("__main__")
            try:
                self._proc.start()
            finally:
                sys.modules["__main__"] = real_main
            child.close()
            self._conn = parent

    def call(self, fn: Callable[..., Any], *args, progress=None, should_stop=None, partial=None, timeout: float | None = None,
             abort=None, **kwargs) -> Any:
        """Run ``fn(*args, **kwargs)`` in the child (``fn``: a module-level function). ``timeout``: seconds from the moment the job is sent;
        past it -- or ``CANCEL_GRACE_S`` after a cancel the job does not heed (a parse stuck in C code never
        checks) -- the child is killed, so a runaway job never holds the caller, the lock or the next job.
        ``abort``: a callable; once it returns true the child is killed at once (``CallAborted``): what it was doing,
        and everything it holds, is not to be used."""
        with self._lock:
            return self._call(fn, args, kwargs, progress, should_stop, partial, timeout, abort)

    def call_if_idle(self, fn: Callable[..., Any], *args, timeout: float | None = None, **kwargs) -> Any:
        """``call`` when the child runs and no other call is in flight; else None at once (never waits for a busy
        child, never starts one): for questions not worth waiting for, such as the bytes it fetched."""
        if not self._lock.acquire(blocking=False):
            return None
        try:
            if self._proc is None or not self._proc.is_alive():
                return None
            return self._call(fn, args, kwargs, None, None, None, timeout, None)
        finally:
            self._lock.release()

    def _call(self, fn, args, kwargs, progress, should_stop, partial, timeout, abort) -> Any:
        """One job's whole conversation with the child (send, poll, progress, cancel, timeout, answer)."""
        name = f"{fn.__module__}.{fn.__qualname__}"
        self.start()
        self._job += 1
        job = self._job
        self._cancel.value = -1
        self._conn.send((job, (fn.__module__, fn.__qualname__), args, kwargs, partial is not None))
        sent = time.monotonic()
        cancelled = False
        cancelled_at = 0.0
        while True:
            if not cancelled and should_stop is not None and should_stop():
                self._cancel.value = job   # the child raises Cancelled at its next check
                cancelled = True
                cancelled_at = time.monotonic()
            if abort is not None and abort():
                self._kill()
                raise CallAborted(f"{name}: its answer is not wanted; the child was stopped")
            now = time.monotonic()
            if cancelled and now - cancelled_at > CANCEL_GRACE_S:
                self._kill()
                raise Cancelled(f"{name}: cancelled (the compute process did not stop; restarted)")
            if timeout is not None and now - sent > timeout:
                self._kill()
                raise CallTimeout(f"{name} did not finish within {timeout:g} s")
            if not self._conn.poll(_CANCEL_POLL_S):
                if not self._proc.is_alive():
                    code = self._proc.exitcode
                    self._proc = None
                    raise RuntimeError(f"the compute process died (exit code {code}); it restarts on the "
                                       "next request")
                continue
            kind, got, payload, text = self._read()
            if got != job:
                continue
            if kind == "progress":
                if progress is not None and not cancelled:
                    try:
                        progress(payload, text)
                    except Cancelled:
                        self._cancel.value = job
                        cancelled = True
                continue
            if kind == "partial":
                if not cancelled:
                    try:
                        partial(payload)
                    except BaseException:   # the job's answer cannot be taken: it must not run on into the next
                        self._kill()
                        raise
                continue
            if kind == "error":
                if isinstance(payload, BaseException):
                    payload.__traceback_text__ = text  # type: ignore[attr-defined]
                    raise payload
                raise RuntimeError(str(payload))
            if cancelled:
                raise Cancelled(f"{name}: cancelled")
            return payload

    def held(self):
        """``with eng.held():`` -- no other thread's call runs in between this thread's calls in the block."""
        return self._lock

    def stop_now(self) -> None:
        """Kill the child at once, with everything it holds (it restarts on the next request). Waits for a call in
        flight to end first."""
        with self._lock:
            self._kill()

    def _kill(self) -> None:
        """Stop the child at once (it restarts on the next request)."""
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        try:
            if proc is not None:
                proc.kill()
                proc.join(2.0)
        except (AssertionError, OSError, ValueError):
            pass
        try:
            if conn is not None:
                conn.close()
        except OSError:
            pass

    def _read(self):
        msg = self._conn.recv()
        if msg[0] == "progress":
            _, job, done, total = msg
            return "progress", job, done, total
        return msg

    def shutdown(self, timeout: float = 2.0) -> None:
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        if proc is None:
            return
        try:
            if self._cancel is not None:
                self._cancel.value = self._job
            conn.send(None)
        except Exception:  # noqa: BLE001
            pass
        try:
            proc.join(timeout)
            if proc.is_alive():
                proc.terminate()
                proc.join(1.0)
        except (AssertionError, OSError, ValueError):   # never started, or already gone
            pass


_ENGINE: ComputeProcess | None = None


def engine() -> ComputeProcess:
    global _ENGINE
    if _ENGINE is None:
        import atexit
        _ENGINE = ComputeProcess()
        atexit.register(shutdown)
    return _ENGINE


_PARSE_ENGINE: ComputeProcess | None = None


def parse_engine() -> ComputeProcess:
    """The process that parses a file before the window does (``parse_guard``): not niced -- the user waits for it,
    and on a busy machine a niced process gets a few percent of a core (importing torch alone took over a minute)."""
    global _PARSE_ENGINE
    if _PARSE_ENGINE is None:
        import atexit
        _PARSE_ENGINE = ComputeProcess(nice=0, name="state-dict-explorer-parse", tensors=False)
        atexit.register(shutdown)
    return _PARSE_ENGINE


def shutdown() -> None:
    for eng in (_ENGINE, _PARSE_ENGINE):
        if eng is not None:
            eng.shutdown()
