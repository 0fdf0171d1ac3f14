"""The BatchNorm demo window: buttons that run real torch, plots of the running statistics before and after, the
outputs in train and eval mode, the generated sentence, and a step log to go back and forth.

All torch work is a few tiny forwards, so it runs on the GUI thread. The session and every observation live in
:mod:`explorer.core.bn_demo`; this module only shows them.
"""
from __future__ import annotations

import os

import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QApplication, QCheckBox, QComboBox, QFileDialog, QFrame, QGridLayout, QGroupBox,
                               QHBoxLayout, QLabel, QListWidget, QMessageBox, QPushButton, QSizePolicy, QSpinBox,
                               QSplitter, QStackedWidget, QVBoxLayout, QWidget)

from ..core.bn_demo import BatchNormDemo, run_default_sequence
from ..core.bn_observe import LEFT, RIGHT, SIDES, VARIANTS, DemoAction, SideObservation
from ..errors import ExplorerError

BEFORE_BRUSH = pg.mkBrush("#b0b0b0")
SIDE_COLOURS = {LEFT: "#1f6fb4", RIGHT: "#c2410c"}
TRAIN_PEN = pg.mkPen("#e08a00", width=2)
EVAL_PEN = pg.mkPen("#2e8b57", width=2)
EVAL_BEFORE_PEN = pg.mkPen("#2e8b57", width=1, style=Qt.PenStyle.DashLine)

MOMENTUM_CHOICES = ["0.1", "0.01", "0.3", "0.5", "1.0", "0", "None (cumulative average)"]


def old_checkpoint_button(metadata: str) -> str:
    """Object name of the button that loads an old-version checkpoint with ``metadata`` ("old", "none", "current");
    the other action buttons are named by their :class:`DemoAction` (tests and the main window find them by these)."""
    return f"{DemoAction.LOAD_OLD_CHECKPOINT.value}_{metadata}"


def _bars(plot: pg.PlotItem, colour: str) -> tuple[pg.BarGraphItem, pg.BarGraphItem]:
    plot.addItem(pg.InfiniteLine(pos=0, angle=0, pen=pg.mkPen("#555", width=1)))  # zero-height bars stay visible
    before = pg.BarGraphItem(x=[], height=[], width=0.38, brush=BEFORE_BRUSH, pen=pg.mkPen(None))
    after = pg.BarGraphItem(x=[], height=[], width=0.38, brush=pg.mkBrush(colour), pen=pg.mkPen(None))
    plot.addItem(before)
    plot.addItem(after)
    return before, after


def _plot(title: str) -> pg.PlotWidget:
    w = pg.PlotWidget(background="w")
    w.setTitle(title, color="#222", size="9pt")
    w.showGrid(x=False, y=True, alpha=0.25)
    w.setMenuEnabled(False)
    w.setMouseEnabled(x=False, y=False)
    w.hideButtons()
    for axis in ("left", "bottom"):
        w.getAxis(axis).setTextPen("#333")
        w.getAxis(axis).setPen("#888")
    w.setMinimumSize(200, 150)
    return w


class SidePanel(QGroupBox):
    """One side: running_mean and running_var per channel (grey before, coloured after), the outputs of the fixed
    input in train and eval mode, and num_batches_tracked and the module settings as text."""

    def __init__(self, side: str, parent=None):
        super().__init__(f"{side} instance", parent)
        self.side = side
        colour = SIDE_COLOURS[side]
        self.stack = QStackedWidget()
        self.placeholder = QLabel(f"No {side} instance yet: “Save left → load into right” creates it.")
        self.placeholder.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.placeholder.setStyleSheet("color: #666;")
        content = QWidget()
        grid = QGridLayout(content)
        grid.setContentsMargins(0, 0, 0, 0)
        self.mean_plot = _plot("running_mean")
        self.var_plot = _plot("running_var")
        self.out_plot = _plot("output of the fixed input")
        self.mean_bars = _bars(self.mean_plot.getPlotItem(), colour)
        self.var_bars = _bars(self.var_plot.getPlotItem(), colour)
        self.out_train = self.out_plot.plot([], [], pen=TRAIN_PEN, symbol="o", symbolSize=4, symbolBrush="#e08a00",
                                            symbolPen=None)
        self.out_eval_before = self.out_plot.plot([], [], pen=EVAL_BEFORE_PEN)
        self.out_eval = self.out_plot.plot([], [], pen=EVAL_PEN, symbol="s", symbolSize=4, symbolBrush="#2e8b57",
                                           symbolPen=None)
        self.out_plot.getAxis("bottom").setLabel("element (sample × unit)", color="#333")
        for p in (self.mean_plot, self.var_plot):
            p.getAxis("bottom").setLabel("channel", color="#333")
        self.info = QLabel()
        self.info.setTextFormat(Qt.TextFormat.RichText)
        self.info.setWordWrap(True)
        self.info.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        grid.addWidget(self.mean_plot, 0, 0)
        grid.addWidget(self.var_plot, 0, 1)
        grid.addWidget(self.out_plot, 0, 2)
        legend = QLabel(f"bars per channel: <span style='color:#888'>■</span> before the step, "
                        f"<span style='color:{colour}'>■</span> after &nbsp;·&nbsp; output: "
                        "<span style='color:#e08a00'>━</span> train mode, "
                        "<span style='color:#2e8b57'>━</span> eval "
                        "mode (dashed: eval before the step)")
        legend.setTextFormat(Qt.TextFormat.RichText)
        legend.setWordWrap(True)
        grid.addWidget(legend, 1, 0, 1, 3)
        grid.addWidget(self.info, 2, 0, 1, 3)
        for c in range(3):
            grid.setColumnStretch(c, 1)
        self.stack.addWidget(self.placeholder)
        self.stack.addWidget(content)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(6, 6, 6, 6)
        lay.addWidget(self.stack)

    def show_observation(self, before: SideObservation | None, after: SideObservation | None) -> None:
        if after is None:
            self.stack.setCurrentIndex(0)
            return
        self.stack.setCurrentIndex(1)
        before = before or after
        name, state = next(iter(after.modules.items()))
        prev = before.modules.get(name, state)
        for bars, plot, key in ((self.mean_bars, self.mean_plot, "running_mean"),
                                (self.var_bars, self.var_plot, "running_var")):
            b, a = getattr(prev, key), getattr(state, key)
            n = len(a or ())
            bars[0].setOpts(x=[i - 0.2 for i in range(n)], height=list(b or [0.0] * n), width=0.38)
            bars[1].setOpts(x=[i + 0.2 for i in range(n)], height=list(a or ()), width=0.38)
            values = list(b or ()) + list(a or ()) + [0.0]
            lo, hi = min(values), max(values)
            if hi == lo:  # all zero (a fresh running_mean): a symmetric range so the zero line sits in the middle
                lo, hi = lo - 1.0, hi + 1.0
            pad = 0.08 * (hi - lo)
            plot.setXRange(-0.7, n - 0.3, padding=0)
            plot.setYRange(lo - (pad if lo < 0 else 0), hi + pad, padding=0)
            plot.getAxis("bottom").setTicks([[(i, str(i)) for i in range(n)]])
        flat = lambda rows: [v for r in rows for v in r]  # noqa: E731
        tr, ev, evb = flat(after.output_train), flat(after.output_eval), flat(before.output_eval)
        xs = list(range(len(tr)))
        self.out_train.setData(xs, tr)
        self.out_eval.setData(xs, ev)
        self.out_eval_before.setData(xs, evb)
        self.out_plot.enableAutoRange()
        lines = []
        for n_, s in after.modules.items():
            p = before.modules.get(n_, s)
            nbt = (f"<b>{s.num_batches_tracked}</b>" if p.num_batches_tracked == s.num_batches_tracked
                   else f"{p.num_batches_tracked} → <b>{s.num_batches_tracked}</b>")
            lines.append(f"<b>{n_}</b>: num_batches_tracked {nbt} &nbsp;·&nbsp; "
                         f"{'train' if s.training else 'eval'} mode &nbsp;·&nbsp; momentum {s.momentum} "
                         f"&nbsp;·&nbsp; track_running_stats {s.track_running_stats}")
        lines.append(f"model.training {after.training} &nbsp;·&nbsp; plotted: {name}")
        self.info.setText("<br>".join(lines))

    def bar_heights(self) -> tuple[list[float], list[float], list[float], list[float]]:
        """(mean before, mean after, var before, var after) as plotted (for tests)."""
        h = lambda item: [float(v) for v in item.opts["height"]]  # noqa: E731
        return h(self.mean_bars[0]), h(self.mean_bars[1]), h(self.var_bars[0]), h(self.var_bars[1])


class BatchNormDemoWindow(QWidget):
    """The demo. ``sig_step_changed(position)`` fires whenever the shown step changes (-1: the start)."""

    sig_step_changed = Signal(int)

    def __init__(self, demo: BatchNormDemo | None = None, parent=None):
        super().__init__(parent)
        self.setWindowTitle("BatchNorm demo — what train/eval and loading do to running statistics")
        self.demo = demo or BatchNormDemo("linear")
        self.buttons: dict[str, QPushButton] = {}
        self._build()
        self._fill_log()
        self.refresh()

    # -- layout ----------------------------------------------------------------------------------------------------
    def _build(self) -> None:
        top = self._build_top()
        actions = self._build_actions()
        centre = self._build_centre()
        log_box = self._build_log()
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(actions)
        split.addWidget(centre)
        split.addWidget(log_box)
        for i in range(3):
            split.setCollapsible(i, False)
        split.setStretchFactor(1, 1)
        split.setSizes([260, 900, 260])
        root = QVBoxLayout(self)
        root.addLayout(top)
        root.addWidget(split, 1)
        self.resize(1440, 900)

    def _build_top(self) -> QHBoxLayout:
        top = QHBoxLayout()
        self.variant = QComboBox()
        for name, v in VARIANTS.items():
            self.variant.addItem(f"{v.model_class.__name__} ({name})", name)
        self.variant.setCurrentIndex(list(VARIANTS).index(self.demo.variant.name))
        self.variant.currentIndexChanged.connect(self._on_variant)
        self.back_button = QPushButton("◀ Back")
        self.forward_button = QPushButton("Forward ▶")
        self.back_button.clicked.connect(lambda: self._go(self.demo.position - 1))
        self.forward_button.clicked.connect(lambda: self._go(self.demo.position + 1))
        self.scripted_button = QPushButton("Run scripted sequence")
        self.scripted_button.clicked.connect(self._on_scripted)
        self.reset_button = QPushButton("Reset")
        self.reset_button.clicked.connect(self._on_reset)
        self.export_button = QPushButton("Export script…")
        self.export_button.clicked.connect(self._on_export)
        top.addWidget(QLabel("Model:"))
        top.addWidget(self.variant)
        top.addSpacing(12)
        for b in (self.scripted_button, self.reset_button, self.back_button, self.forward_button):
            top.addWidget(b)
        top.addStretch(1)
        top.addWidget(self.export_button)
        return top

    def _build_actions(self) -> QGroupBox:
        actions = QGroupBox("Actions (real torch)")
        al = QVBoxLayout(actions)
        form = QGridLayout()
        self.side = QComboBox()
        self.side.addItems(list(SIDES))
        self.side.currentIndexChanged.connect(self._update_enabled)
        self.batch = QSpinBox()
        self.batch.setRange(0, 9)
        self.batch.setToolTip("0 is the fixed input every observation uses; 1..9 come from shifted, wider data")
        self.momentum = QComboBox()
        self.momentum.setEditable(True)
        self.momentum.addItems(MOMENTUM_CHOICES)
        self.strict = QCheckBox("strict=True")
        self.strict.setChecked(True)
        form.addWidget(QLabel("Side:"), 0, 0)
        form.addWidget(self.side, 0, 1)
        form.addWidget(QLabel("Batch:"), 1, 0)
        form.addWidget(self.batch, 1, 1)
        form.addWidget(QLabel("Momentum:"), 2, 0)
        form.addWidget(self.momentum, 2, 1)
        form.addWidget(self.strict, 3, 0, 1, 2)
        al.addLayout(form)
        self._add_action_buttons(al)
        return actions

    def _add_action_buttons(self, al: QVBoxLayout) -> None:
        def button(key, text, slot, tip=""):
            b = QPushButton(text)
            b.setObjectName(str(key))
            b.setToolTip(tip)
            b.clicked.connect(slot)
            self.buttons[key] = b
            al.addWidget(b)

        A = DemoAction
        button(A.FORWARD_TRAIN, "Forward, train mode",
               lambda: self._act(A.FORWARD_TRAIN, side=self._side(), batch=self.batch.value()),
               "model.train(); model(batch)")
        button(A.FORWARD_EVAL, "Forward, eval mode",
               lambda: self._act(A.FORWARD_EVAL, side=self._side(), batch=self.batch.value()),
               "model.eval(); model(batch)")
        button(A.FORWARD, "Forward as modules are set",
               lambda: self._act(A.FORWARD, side=self._side(), batch=self.batch.value()),
               "model(batch) without changing any module's mode")
        al.addWidget(_rule())
        button(A.FREEZE_BN, "Freeze BatchNorm (bn.eval() only)", lambda: self._act(A.FREEZE_BN, side=self._side()))
        button(A.MODEL_TRAIN, "model.train() on the parent", lambda: self._act(A.MODEL_TRAIN, side=self._side()),
               "the trap: this puts a frozen BatchNorm back in train mode")
        button(A.MODEL_EVAL, "model.eval() on the parent", lambda: self._act(A.MODEL_EVAL, side=self._side()))
        button(A.SET_MOMENTUM, "Set momentum", self._on_momentum)
        button(A.TOGGLE_TRACK_RUNNING_STATS, "Toggle track_running_stats",
               lambda: self._act(A.TOGGLE_TRACK_RUNNING_STATS, side=self._side()))
        al.addWidget(_rule())
        button(A.SAVE_AND_LOAD, "Save left → load into right",
               lambda: self._act(A.SAVE_AND_LOAD, source=LEFT, target=RIGHT, strict=self.strict.isChecked()),
               "torch.save(left.state_dict()), torch.load, right.load_state_dict")
        button(A.LOAD_DEFAULT, "Load never-trained checkpoint",
               lambda: self._act(A.LOAD_DEFAULT, target=self._side(), strict=self.strict.isChecked()),
               "the state dict of a fresh instance (running_mean 0, running_var 1, num_batches_tracked 0)")
        button(old_checkpoint_button("old"), "Old checkpoint → right (_metadata v1)",
               lambda: self._old("old"), "left's state dict without num_batches_tracked, BatchNorm version 1")
        button(old_checkpoint_button("none"), "Old checkpoint → right (no _metadata)",
               lambda: self._old("none"), "left's state dict without num_batches_tracked and without _metadata")
        button(old_checkpoint_button("current"), "Key missing → right (_metadata v2)",
               lambda: self._old("current"), "num_batches_tracked missing although _metadata says version 2")
        al.addStretch(1)

    def _build_centre(self) -> QWidget:
        self.sentence = QLabel()
        self.sentence.setWordWrap(True)
        self.sentence.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.sentence.setStyleSheet("font-size: 11pt; padding: 6px; background: #f4f6fa; border: 1px solid #d0d7e2;")
        self.sentence.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Minimum)
        self.step_title = QLabel()
        self.step_title.setStyleSheet("font-weight: bold;")
        self.step_title.setWordWrap(True)
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.status.setStyleSheet("color: #b00020;")
        self.status.hide()
        self.panels = {s: SidePanel(s) for s in SIDES}
        centre = QWidget()
        cl = QVBoxLayout(centre)
        cl.setContentsMargins(0, 0, 0, 0)
        cl.addWidget(self.step_title)
        cl.addWidget(self.sentence)
        cl.addWidget(self.status)
        for s in SIDES:
            cl.addWidget(self.panels[s], 1)
        return centre

    def _build_log(self) -> QGroupBox:
        self.log = QListWidget()
        self.log.setWordWrap(True)
        self.log.currentRowChanged.connect(self._on_log_row)
        log_box = QGroupBox("Step log (click to go back)")
        ll = QVBoxLayout(log_box)
        ll.addWidget(self.log)
        log_box.setMinimumWidth(240)
        return log_box

    # -- helpers ---------------------------------------------------------------------------------------------------
    def _side(self) -> str:
        return self.side.currentText()

    def _old(self, metadata: str) -> None:
        self._act(DemoAction.LOAD_OLD_CHECKPOINT, source=LEFT, target=RIGHT, metadata=metadata,
                  strict=self.strict.isChecked())

    def _momentum_value(self):
        text = self.momentum.currentText().strip()
        if text.lower().startswith("none"):
            return None
        try:
            return float(text)
        except ValueError:
            raise ExplorerError(f"momentum {text!r} is not a number; enter a value in [0, 1] or None") from None

    def _on_momentum(self) -> None:
        try:
            value = self._momentum_value()
        except ExplorerError as e:
            self._show_error(e)
            return
        self._act(DemoAction.SET_MOMENTUM, momentum=value, side=self._side())

    def _act(self, action: str, **params) -> None:
        self.status.hide()
        try:
            self.demo.apply(action, **params)
        except ExplorerError as e:  # expected: shown inline, cleared by the next action
            self._show_error(e)
            return
        self._fill_log()
        self.refresh()

    def _show_error(self, e: Exception) -> None:
        self.status.setText(str(e))
        self.status.show()

    def _go(self, index: int) -> None:
        if -1 <= index < len(self.demo.steps):
            self.demo.go_to(index)
            self._sync_log_row()
            self.refresh()

    def _on_log_row(self, row: int) -> None:
        if row >= 0 and row - 1 != self.demo.position:
            self._go(row - 1)

    def _on_variant(self) -> None:
        name = self.variant.currentData()
        if name != self.demo.variant.name:
            self.set_demo(BatchNormDemo(name, self.demo.seed))

    def _on_scripted(self) -> None:
        self.set_demo(run_default_sequence(self.demo.variant.name, self.demo.seed))

    def _on_reset(self) -> None:
        self.set_demo(BatchNormDemo(self.demo.variant.name, self.demo.seed))

    def _on_export(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export the steps as a Python script", "batchnorm_demo.py",
                                              "Python (*.py)")
        if not path:
            return
        try:
            self.demo.save_script(path)
        except OSError as e:
            QMessageBox.critical(self, "Export script", f"Writing {path} failed.\n\nThe problem is: {e}")
            return
        self.status.hide()
        title = self.step_title.text().split("  —  saved")[0]
        self.step_title.setText(f"{title}  —  saved {os.path.basename(path)}")

    # -- showing -----------------------------------------------------------------------------------------------
    def set_demo(self, demo: BatchNormDemo) -> None:
        self.demo = demo
        self.variant.blockSignals(True)
        self.variant.setCurrentIndex(list(VARIANTS).index(demo.variant.name))
        self.variant.blockSignals(False)
        self.status.hide()
        self._fill_log()
        self.refresh()

    def _fill_log(self) -> None:
        self.log.blockSignals(True)
        self.log.clear()
        self.log.addItem("0. start: fresh model(s), nothing run")
        for i, step in enumerate(self.demo.steps, 1):
            self.log.addItem(f"{i}. {step.label}")
        self.log.blockSignals(False)
        self._sync_log_row()

    def _sync_log_row(self) -> None:
        self.log.blockSignals(True)
        self.log.setCurrentRow(self.demo.position + 1)
        for i in range(self.log.count()):
            item = self.log.item(i)
            item.setForeground(Qt.GlobalColor.gray if i - 1 > self.demo.position else Qt.GlobalColor.black)
        self.log.blockSignals(False)

    def refresh(self) -> None:
        demo = self.demo
        if demo.position >= 0:
            step = demo.steps[demo.position]
            before, after = step.before, step.after
            self.step_title.setText(f"Step {demo.position + 1} of {len(demo.steps)}: {step.label}")
            self.sentence.setText(step.sentence)
        else:
            before = after = demo.current()
            self.step_title.setText(f"Start ({len(demo.steps)} step(s) in the log)")
            self.sentence.setText(describe_start(after))
        for s in SIDES:
            self.panels[s].show_observation(before.get(s), after.get(s))
        self._update_enabled()
        self.sig_step_changed.emit(demo.position)

    def _update_enabled(self) -> None:
        has_right = self.demo.right is not None
        side_ok = self._side() == LEFT or has_right
        A = DemoAction
        for key in (A.FORWARD_TRAIN, A.FORWARD_EVAL, A.FORWARD, A.FREEZE_BN, A.MODEL_TRAIN, A.MODEL_EVAL,
                    A.SET_MOMENTUM, A.TOGGLE_TRACK_RUNNING_STATS, A.LOAD_DEFAULT):
            self.buttons[key].setEnabled(side_ok)
        self.back_button.setEnabled(self.demo.can_undo())
        self.forward_button.setEnabled(self.demo.can_redo())
        self.export_button.setEnabled(bool(self.demo.history))


def describe_start(obs: dict[str, SideObservation | None]) -> str:
    """What the fresh models hold, read from the observation (not assumed)."""
    parts = []
    for side, o in obs.items():
        if o is None:
            continue
        for name, s in o.modules.items():
            parts.append(f"{side} {name} holds running_mean {_values(s.running_mean)}, running_var "
                         f"{_values(s.running_var)} and num_batches_tracked {s.num_batches_tracked}")
    return "Nothing has run yet: " + "; ".join(parts) + ". Pick an action on the left."


def _values(v) -> str:
    if v is None:
        return "None"
    return f"all {v[0]:g}" if len(set(v)) == 1 else "[" + ", ".join(f"{x:.4g}" for x in v) + "]"


def _rule() -> QFrame:
    f = QFrame()
    f.setFrameShape(QFrame.Shape.HLine)
    f.setFrameShadow(QFrame.Shadow.Sunken)
    return f


def open_batchnorm_demo(parent=None) -> QWidget:
    """Open the demo as its own top-level window (non-modal) and return it; the caller keeps a reference."""
    w = BatchNormDemoWindow(parent=parent)
    w.setWindowFlag(Qt.WindowType.Window, True)
    w.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose, True)
    w.show()
    return w


def trap_step_index(demo: BatchNormDemo) -> int:
    """The step that shows the frozen-then-``.train()`` trap (a forward right after ``model_train``), else the last."""
    steps = demo.steps
    for i in range(1, len(steps)):
        if steps[i].action == DemoAction.FORWARD and steps[i - 1].action == DemoAction.MODEL_TRAIN:
            return i
    return len(steps) - 1


def save_screenshot(path: str | os.PathLike, demo: BatchNormDemo | None = None, step: int | None = None,
                    size: tuple[int, int] = (1440, 900)) -> str:
    """Render the demo offscreen after ``demo``'s steps (default: the scripted sequence), showing ``step``
    (0-based; default: the trap step), save it as a PNG and return the path. The demo's position is restored."""
    if QApplication.instance() is None:
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    app = QApplication.instance() or QApplication([])
    demo = demo or run_default_sequence()
    old = demo.position
    try:
        demo.go_to(trap_step_index(demo) if step is None else step)
        w = BatchNormDemoWindow(demo)
        w.resize(*size)
        w.setAttribute(Qt.WidgetAttribute.WA_DontShowOnScreen, True)
        w.show()
        for _ in range(3):  # let the layouts settle (pyqtgraph resizes its views on the next events)
            app.processEvents()
        path = os.fspath(path)
        if not w.grab().save(path, "PNG"):
            raise OSError(f"could not write the screenshot {path!r}")
        w.close()
        w.deleteLater()
        return path
    finally:
        demo.go_to(old)


def main(argv: list[str] | None = None) -> int:
    """``python -m explorer.qt.demo_view OUT.png [--variant linear|conv] [--seed N] [--step N]``: the screenshot."""
    import argparse
    p = argparse.ArgumentParser(prog="python -m explorer.qt.demo_view", description=main.__doc__)
    p.add_argument("out", metavar="OUT.png")
    p.add_argument("--variant", choices=list(VARIANTS), default="linear")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--step", type=int, default=None, help="1-based step to show (default: the trap step)")
    args = p.parse_args(argv)
    demo = run_default_sequence(args.variant, args.seed)
    if args.step is not None and not 1 <= args.step <= len(demo.steps):
        p.error(f"--step must be between 1 and {len(demo.steps)}")
    print(save_screenshot(args.out, demo=demo, step=None if args.step is None else args.step - 1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
