"""Start the window: ``python main.py [LEFT [RIGHT]] [--model SPEC] [--simulate] [--screenshot OUT.png]``.

The window shows first; torch is imported by the first background job that needs it. With no arguments the demo
pair opens (the article's BatchNorm model and a checkpoint of it after a few train-mode steps, simulation run).
"""
from __future__ import annotations

import os
import sys
import time

from PySide6.QtCore import QBuffer, QByteArray, QIODevice, QSettings, QTimer
from PySide6.QtWidgets import QApplication

from ..window_args import build_parser  # Qt-free: python main.py --help shows these options too
from .settings import APP, ORG


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    targets = ([args.model] if args.model else []) + [t for t in (args.left, args.right) if t]
    if args.series and targets:
        print("error: --series shows one run; open checkpoints or a model without it", file=sys.stderr)
        return 2
    if len(targets) > 2:
        print("error: at most two things to open (LEFT RIGHT, or --model SPEC RIGHT)", file=sys.stderr)
        return 2
    if args.screenshot and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")   # a screenshot needs no screen
    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setOrganizationName(ORG)
    app.setApplicationName(APP)
    from . import resources
    resources.apply_style(app)
    from .errors_ui import install_excepthook
    from .main_window import MainWindow
    settings = QSettings(args.settings, QSettings.IniFormat) if args.settings else QSettings(ORG, APP)
    window = MainWindow(settings)
    install_excepthook(lambda: window)
    if args.screenshot:
        try:
            w, h = (int(v) for v in args.size.lower().split("x"))
        except ValueError:
            print(f"error: --size {args.size!r}: expected WIDTHxHEIGHT", file=sys.stderr)
            return 2
        window.resize(w, h)
    window.show()
    if args.filter:
        window.filter_edit.setText(args.filter)
    if args.select and not args.series:
        window.select_when_ready = args.select
    state = {"rc": 0}

    def start():
        if args.series:
            window.open_series(args.series)
            if args.select:
                window.series_view.sig_ready.connect(lambda: _select_in_series(window, args.select))
            return
        if not targets:
            window.open_demo()
            return
        if args.simulate:
            window.simulate_wanted = True
        for side, text in enumerate(targets):
            window.open_path(side, text)
    QTimer.singleShot(0, start)       # the window paints first, then work starts (torch is imported in a worker)
    if args.screenshot:
        window.interactive = False    # nobody is there to answer a question
        _schedule_screenshot(app, window, args.screenshot, state)
    app.exec()
    from ..session.compute_process import shutdown
    shutdown()
    return state["rc"]


def _select_in_series(window, key: str) -> None:
    view = window.series_view
    if key in view.data.keys:
        view.select_key(key)
    else:
        window.unmet["select"] = f"--select {key!r} matched no key of the run"


# The last resort of a screenshot run: a separate process (it needs nothing of this one, not even its interpreter
# lock, which C code stuck in a hostile input can hold forever) that ends this process when it is still there long
# after its own timer should have fired. It learns that this process ended from its stdin (the pipe closes).
_WATCHDOG = r"""
import os, select, signal, sys
pid, limit, out = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
ready, _, _ = select.select([sys.stdin], [], [], limit)
if not ready:
    sys.stderr.write("error: the window stopped responding; %s was not written (stopped after %g s)\n" % (out, limit))
    sys.stderr.flush()
    os.kill(pid, signal.SIGKILL)
"""


def _start_watchdog(out: str, after_s: float):
    import subprocess
    if os.name != "posix":      # select() on a pipe is POSIX
        return None
    try:
        return subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(os.getpid()), f"{after_s:g}", out],
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    except OSError:
        return None


def _schedule_screenshot(app, window, out: str, state: dict, timeout_s: float = 120.0) -> None:
    t0 = time.monotonic()
    state["watchdog"] = _start_watchdog(out, timeout_s + 60)     # its stdin closes when this process ends
    calm = {"n": 0}
    timer = QTimer(window)

    def tick():
        series = window.series_view is not None and window.series_view.settled
        idle = window.is_idle() and (window.comparison is not None or window.load_failures > 0 or series)
        calm["n"] = calm["n"] + 1 if idle else 0
        late = time.monotonic() - t0 > timeout_s
        if calm["n"] < 4 and not late:
            return
        timer.stop()
        unmet = window.unmet_requests()
        if late:
            unmet.append("still busy after %.0f s (%s)" % (timeout_s, window.activity.label.text() or "working"))
        try:
            save_screenshot(window, out)
            print(f"wrote {out}")
        except OSError as e:
            print(f"error: cannot write {out}: {e}", file=sys.stderr)
            state["rc"] = 2
        if unmet:   # the picture is written, but it does not show what was asked for: say what, and exit 2
            print(f"error: {out} shows the window, but " + "; ".join(unmet), file=sys.stderr)
            state["rc"] = 2
        window.close()
        app.quit()
    timer.timeout.connect(tick)
    timer.start(100)


def save_screenshot(window, out: str) -> None:
    """Render the window to a PNG (atomically)."""
    from ..core.atomic import atomic_write_bytes
    pm = window.grab()
    ba = QByteArray()
    buf = QBuffer(ba)
    buf.open(QIODevice.WriteOnly)
    pm.save(buf, "PNG", 6)
    buf.close()
    atomic_write_bytes(os.fspath(out), bytes(ba.data()))


if __name__ == "__main__":
    raise SystemExit(main())
