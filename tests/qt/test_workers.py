"""The runner's bookkeeping: a channel whose outcome was handed over is no longer busy."""
from __future__ import annotations

import threading

import pytest

pytest.importorskip("PySide6")

from explorer.qt.workers import Runner  # noqa: E402


def test_a_channel_is_not_busy_once_its_outcome_is_handled(qtbot):
    """The worker thread's ``finished`` can reach the GUI thread after another task's outcome (threads race); a
    handler asking "is a side still loading?" must not count a task whose result it already handled. It did: a
    --screenshot with a side that failed waited for a simulation forever under load."""
    runner = Runner()
    seen = {}
    release = threading.Event()

    def slow(*, progress=None, should_stop=None):
        release.wait(10)
        return "b"

    def on_a(value):
        seen["a_busy_in_own_handler"] = runner.is_busy("a")
        seen["b_busy"] = runner.is_busy("b")
        release.set()

    def on_b(value):
        seen["a_busy_later"] = runner.is_busy("a")
        seen["b_busy_in_own_handler"] = runner.is_busy("b")

    runner.start("b", "b", slow, on_result=on_b)
    runner.start("a", "a", lambda **_: "a", on_result=on_a)
    qtbot.waitUntil(lambda: len(seen) == 4 and not runner.is_busy(), timeout=10000)
    assert seen == {"a_busy_in_own_handler": False, "b_busy": True, "a_busy_later": False,
                    "b_busy_in_own_handler": False}


def test_an_error_leaves_the_channel_free(qtbot):
    runner = Runner()
    errors = []

    def boom(**_):
        raise ValueError("x")

    runner.start("c", "c", boom, on_error=errors.append)
    qtbot.waitUntil(lambda: bool(errors) and not runner.is_busy(), timeout=10000)
    assert isinstance(errors[0], ValueError) and not runner.is_busy("c")


def test_a_finished_task_lets_go_of_its_arguments_and_slots(qtbot):
    """A task's slots are lambdas holding the task, connected to the task's own signals: a cycle through Qt that
    Python's collector cannot see. It kept every finished task's arguments -- a replaced side, ~100 MB for a
    50,000-tensor file -- alive for the window's life (issue 15: 338 MB -> 834 MB over five re-opens)."""
    import gc
    import weakref

    class Big:
        pass

    runner = Runner()
    arg, results = Big(), []
    gone = weakref.ref(arg)
    runner.start("load", "Opening…", lambda a, *, progress=None, should_stop=None: a, arg,
                 on_result=lambda value: results.append(type(value).__name__))
    del arg
    qtbot.waitUntil(lambda: bool(results) and not runner.is_busy(), timeout=5000)
    qtbot.wait(50)              # the signals object's deleteLater
    gc.collect()
    assert results == ["Big"] and gone() is None
