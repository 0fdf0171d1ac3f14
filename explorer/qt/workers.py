"""Background work: a ``QRunnable`` with a separate signals ``QObject``, and a runner where the newest request on a
channel wins (the previous one is asked to stop and its results are dropped, so tensor A's histogram never lands on
tensor B).

The work itself is a plain function taking ``progress(done, total)`` and ``should_stop()`` keyword arguments, like
every long core function; it raises ``explorer.errors.Cancelled`` when told to stop.
"""
from __future__ import annotations

import sys
import threading
import time
import traceback
from typing import Any, Callable

from PySide6.QtCore import QObject, QRunnable, QThreadPool, QTimer, Signal

from explorer.errors import Cancelled


class _Heartbeat:
    """When the GUI thread last ran Python. Workers check it whenever the core asks ``should_stop()`` (once per
    chunk) and step aside for a moment when the GUI thread looks starved: with several Python threads taking the GIL
    in turn, a GUI thread that drops the GIL in every Qt call can otherwise wait 5 ms per call to get it back."""

    last = time.monotonic()
    STARVED_S = 0.025      # the heartbeat ticks every 10 ms; later than this, the GUI thread is waiting
    YIELD_S = 0.004

    @classmethod
    def beat(cls) -> None:
        cls.last = time.monotonic()

    @classmethod
    def yield_if_starved(cls) -> None:
        if time.monotonic() - cls.last > cls.STARVED_S:
            time.sleep(cls.YIELD_S)     # releases the GIL long enough for the GUI thread to take it


SWITCH_INTERVAL_S = 0.001


def share_the_lock_often() -> None:
    """Let a thread waiting for the interpreter lock have it after 1 ms, not Python's 5. A worker running bytecode
    keeps the lock until a waiting thread has waited the switch interval, and the GUI thread waits anew each time it
    comes back from Qt into Python (every slot, every ``data()`` of a repaint, every tick): a dozen 5 ms waits per
    turn of the event loop made 100-200 ms stalls while a worker parsed a 10**6-tensor header. Process-wide; only
    ever lowered."""
    if sys.getswitchinterval() > SWITCH_INTERVAL_S:
        sys.setswitchinterval(SWITCH_INTERVAL_S)


class WorkerSignals(QObject):
    """Signals of one task (QRunnable is not a QObject). Emitted from the worker thread, delivered queued."""

    progress = Signal(int, int)
    partial = Signal(object)       # a first look, before ``result`` (tasks started with ``on_partial``)
    result = Signal(object)
    error = Signal(object)         # the exception, with ``__traceback_text__`` attached
    cancelled = Signal()
    finished = Signal()            # always, after result / error / cancelled


class Task(QRunnable):
    def __init__(self, channel: str, label: str, fn: Callable, args: tuple, kwargs: dict, partial: bool = False):
        super().__init__()
        self.setAutoDelete(False)      # Python owns it (the runner's set) until ``finished``
        self.channel = channel
        self.label = label
        self.fn = fn
        self.args = args
        self.kwargs = dict(kwargs, partial=self._partial) if partial else kwargs
        self.signals = WorkerSignals()
        self._stop = threading.Event()
        self._last_progress = 0.0
        self.done = threading.Event()

    def cancel(self) -> None:
        self._stop.set()

    def release(self) -> None:
        """Let go of the work's inputs and of the slots (GUI thread, after ``finished``). The slots are lambdas holding
        the task, connected to the task's own signals object: a cycle through Qt's connection list that Python's
        collector cannot see, which kept every finished task's arguments (a replaced side: ~100 MB for a
        50,000-tensor file) alive for the window's life."""
        self.fn, self.args, self.kwargs = None, (), {}
        self.signals.deleteLater()

    @property
    def cancelled(self) -> bool:
        return self._stop.is_set()

    def _should_stop(self) -> bool:
        _Heartbeat.yield_if_starved()
        return self._stop.is_set()

    def _progress(self, done, total) -> None:
        if self._stop.is_set():
            raise Cancelled(f"{self.label}: cancelled")
        _Heartbeat.yield_if_starved()
        now = time.monotonic()
        if now - self._last_progress >= 0.05 or done >= total:   # throttle: at most 20 updates a second
            self._last_progress = now
            total = max(int(total), 1)       # byte counts pass 2**31: send per-mille, Qt's int is 32 bits
            try:
                self.signals.progress.emit(min(1000, int(1000 * int(done) / total)), 1000)
            except RuntimeError:       # the window went away
                pass

    def _partial(self, value) -> None:
        if not self._stop.is_set():
            self._emit(self.signals.partial, value)

    def run(self) -> None:  # worker thread
        try:
            if self._stop.is_set():
                raise Cancelled(f"{self.label}: cancelled")
            out = self.fn(*self.args, progress=self._progress, should_stop=self._should_stop, **self.kwargs)
        except Cancelled:
            self._emit(self.signals.cancelled)
        except BaseException as e:  # noqa: BLE001 - every failure is reported, none kills the thread
            e.__traceback_text__ = traceback.format_exc()  # type: ignore[attr-defined]
            self._emit(self.signals.error, e)
        else:
            if self._stop.is_set():
                self._emit(self.signals.cancelled)
            else:
                self._emit(self.signals.result, out)
        finally:
            self.done.set()
            self._emit(self.signals.finished)

    @staticmethod
    def _emit(signal, *args) -> None:
        try:
            signal.emit(*args)
        except RuntimeError:   # signals object deleted at shutdown
            pass


class Runner(QObject):
    """Starts tasks on a thread pool; one current task per channel; reports activity for the status bar."""

    sig_activity = Signal()                  # tasks started/finished: re-read ``active()``
    sig_progress = Signal(str, int, int)     # label, done, total of the newest active task

    # Number crunching (statistics, diff, simulation) runs one job at a time: each already keeps the cores busy,
    # and several Python threads competing for the GIL starve the GUI thread (measured: 150-300 ms event-loop stalls
    # with diff + statistics together, < 100 ms one at a time). Higher priority starts first among queued jobs.
    HEAVY = {"detail": 3, "simulate": 2, "diff": 1, "export": 0}

    def __init__(self, parent=None, max_threads: int = 3):
        super().__init__(parent)
        share_the_lock_often()
        self.pool = QThreadPool(self)
        self.pool.setMaxThreadCount(max_threads)
        self.heavy_pool = QThreadPool(self)
        self.heavy_pool.setMaxThreadCount(1)
        self._heartbeat = QTimer(self)
        self._heartbeat.setInterval(10)
        self._heartbeat.timeout.connect(_Heartbeat.beat)
        self._current: dict[str, Task] = {}
        self._running: set[Task] = set()

    def start(self, channel: str, label: str, fn: Callable, *args,
              on_result: Callable[[Any], None] | None = None,
              on_error: Callable[[BaseException], None] | None = None,
              on_cancelled: Callable[[], None] | None = None,
              on_partial: Callable[[Any], None] | None = None, **kwargs) -> Task:
        old = self._current.get(channel)
        if old is not None:
            old.cancel()
        task = Task(channel, label, fn, args, kwargs, partial=on_partial is not None)
        self._current[channel] = task
        self._running.add(task)
        s = task.signals
        # the newest request wins: a slot checks that its task is still the channel's current one
        s.result.connect(lambda value, t=task: self._deliver(t, on_result, value))
        if on_partial is not None:
            s.partial.connect(lambda value, t=task: self._is_current(t) and on_partial(value))
        s.error.connect(lambda exc, t=task: self._deliver(t, on_error, exc))
        s.cancelled.connect(lambda t=task: self._deliver(t, on_cancelled))
        s.progress.connect(lambda d, n, t=task: self._on_progress(t, d, n))
        s.finished.connect(lambda t=task: self._on_finished(t))
        _Heartbeat.beat()
        self._heartbeat.start()
        if channel in self.HEAVY:
            self.heavy_pool.start(task, self.HEAVY[channel])
        else:
            self.pool.start(task)
        self.sig_activity.emit()
        return task

    def _is_current(self, task: Task) -> bool:
        return self._current.get(task.channel) is task and not task.cancelled

    def _deliver(self, task: Task, handler: Callable | None, *args) -> None:
        """Hand a task's outcome to its handler if the task is still its channel's current one. The channel is no
        longer busy from this moment: the worker thread's ``finished`` can arrive after other tasks' outcomes (the
        threads race), and a handler asking "is anything still loading?" must not count a task already answered."""
        if not self._is_current(task):
            return
        del self._current[task.channel]
        if handler is not None:
            handler(*args)

    def _on_progress(self, task: Task, done: int, total: int) -> None:
        if self._is_current(task):
            self.sig_progress.emit(task.label, done, total)

    def _on_finished(self, task: Task) -> None:
        self._running.discard(task)
        if self._current.get(task.channel) is task:
            del self._current[task.channel]
        task.release()
        if not self._running:
            self._heartbeat.stop()
        self.sig_activity.emit()

    def cancel(self, channel: str | None = None) -> None:
        """Cancel one channel's task, or every task."""
        for ch, task in list(self._current.items()):
            if channel is None or ch == channel:
                task.cancel()
                del self._current[ch]
        self.sig_activity.emit()

    def active(self) -> list[Task]:
        """Tasks whose results are still wanted, oldest first."""
        return [t for t in self._current.values() if not t.cancelled]

    def is_busy(self, channel: str | None = None) -> bool:
        if channel is None:
            return bool(self._running)
        return channel in self._current

    def shutdown(self, timeout_ms: int = 3000) -> bool:
        """Ask everything to stop and wait for the threads (closeEvent)."""
        for task in list(self._running):
            task.cancel()
        self._current.clear()
        return self.pool.waitForDone(timeout_ms) and self.heavy_pool.waitForDone(timeout_ms)
