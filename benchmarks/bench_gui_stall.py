"""How long does the window's event loop stall while a 2 GB checkpoint opens and a 100M-element histogram is computed?

    python benchmarks/bench_gui_stall.py [--dir DIR] [--elements 100000000] [--tensors 5] [--keep]

Writes a checkpoint of ``--tensors`` float32 tensors of ``--elements`` elements each (5 x 100M = 2 GB) and a
perturbed copy, opens them in the two panes of a real (offscreen) window, selects the first big tensor (statistics,
overlaid histograms and delta histogram of 2 x 100M elements) and measures, with a 10 ms QTimer on the GUI thread:
the largest gap between ticks (wall), the GUI thread's own CPU time in that gap, and how long each phase took.
The acceptance limit is 100 ms; on a machine whose load average exceeds its core count the wall figure measures the
OS scheduler as much as this program (the load is printed). The fast version runs in tests/qt/test_stall.py.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def write_checkpoints(folder: Path, elements: int, tensors: int) -> tuple[Path, Path]:
    import torch
    a_path, b_path = folder / "big_a.pt", folder / "big_b.pt"
    if a_path.exists() and b_path.exists():
        return a_path, b_path
    g = torch.Generator().manual_seed(0)
    sd = {f"layers.{i}.weight": torch.randn(elements // 1000, 1000, generator=g) for i in range(tensors)}
    sd["layers.0.bias"] = torch.zeros(1000)
    torch.save(sd, a_path)
    for v in sd.values():
        v.add_(0.01)
    torch.save(sd, b_path)
    return a_path, b_path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", help="where to write the checkpoints (default: a temporary folder)")
    p.add_argument("--elements", type=int, default=100_000_000)
    p.add_argument("--tensors", type=int, default=5)
    p.add_argument("--keep", action="store_true", help="keep the checkpoints (reused by the next run)")
    args = p.parse_args(argv)
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    folder = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="bench-gui-stall-"))
    folder.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    a_path, b_path = write_checkpoints(folder, args.elements, args.tensors)
    print(f"checkpoints: {a_path} ({a_path.stat().st_size / 2**30:.2f} GiB) and a perturbed copy, "
          f"written in {time.perf_counter() - t:.1f} s")

    from PySide6.QtCore import QSettings, Qt, QTimer
    from PySide6.QtWidgets import QApplication
    app = QApplication.instance() or QApplication([])
    from explorer.qt.main_window import MainWindow
    w = MainWindow(QSettings(str(folder / "bench.ini"), QSettings.IniFormat))
    w._auto_select = lambda: None
    w.resize(1400, 860)
    w.show()
    gaps: list[tuple[float, float, float]] = []
    state = {"last": None, "cpu": None, "t0": None, "events": []}

    def tick():
        now, cpu = time.perf_counter(), time.thread_time()
        if state["last"] is not None:
            gaps.append((now - state["t0"], (now - state["last"]) * 1000, (cpu - state["cpu"]) * 1000))
        state["last"], state["cpu"] = now, cpu

    def log(what):
        state["events"].append((time.perf_counter() - state["t0"], what))
    timer = QTimer()
    timer.setTimerType(Qt.PreciseTimer)
    timer.setInterval(10)
    timer.timeout.connect(tick)
    key = "layers.0.weight"

    def select_when_ready():
        c = w.comparison
        if c is not None and c.left is not None and c.right is not None:
            log("both panes aligned")
            w.compare.select_path(key)
        else:
            QTimer.singleShot(10, select_when_ready)

    def done(k):
        if k == key:
            log("histograms shown (exact)")
            QTimer.singleShot(300, app.quit)

    def start():
        state["t0"] = state["last"] = time.perf_counter()
        state["cpu"] = time.thread_time()
        timer.start()
        w.open_path(0, str(a_path))
        w.open_path(1, str(b_path))
        select_when_ready()
    w.sig_side_loaded.connect(lambda s: log(f"{'left' if s == 0 else 'right'} opened"))
    w.sig_detail_shown.connect(done)
    w.sig_detail_first_look.connect(lambda k: log("first look shown (histograms, percentiles estimated)"))
    QTimer.singleShot(3000, start)     # let the compute process start first, as it does while the user looks
    QTimer.singleShot(600_000, app.quit)
    app.exec()
    timer.stop()
    w.runner.shutdown()
    for at, what in state["events"]:
        print(f"{at:8.3f} s  {what}")
    worst = max(gaps, key=lambda g: g[1]) if gaps else (0, 0, 0)
    cpu_worst = max((g[2] for g in gaps), default=0)
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    print(f"event-loop ticks: {len(gaps)}; max gap {worst[1]:.1f} ms at {worst[0]:.2f} s "
          f"(GUI-thread CPU in it {worst[2]:.1f} ms); max GUI-thread CPU in any gap {cpu_worst:.1f} ms")
    print(f"gaps over 50 ms: {sum(1 for g in gaps if g[1] > 50)}, over 100 ms: {sum(1 for g in gaps if g[1] > 100)}")
    print(f"machine: {os.cpu_count()} cores, load average {load:.1f}")
    if not args.keep and not args.dir:
        for f in (a_path, b_path):
            f.unlink(missing_ok=True)
    return 0 if worst[1] < 100 else 1


if __name__ == "__main__":
    raise SystemExit(main())
