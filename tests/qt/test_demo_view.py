"""The BatchNorm demo window: buttons drive the real session, plots and labels show what the session observed."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QImage
from PySide6.QtWidgets import QWidget

from explorer.core.bn_demo import DEFAULT_SEQUENCE, BatchNormDemo, run_default_sequence
from explorer.core.bn_observe import LEFT, RIGHT, DemoAction
from explorer.qt import demo_view
from explorer.qt.demo_view import (SIDE_COLOURS, BatchNormDemoWindow, old_checkpoint_button, open_batchnorm_demo,
                                   save_screenshot)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def make_window(qtbot):
    def make(demo=None):
        w = BatchNormDemoWindow(demo or BatchNormDemo("linear"))
        qtbot.addWidget(w)
        return w
    return make


def click(qtbot, w, key):
    qtbot.mouseClick(w.buttons[key], Qt.MouseButton.LeftButton)


def test_train_forward_button_runs_torch_and_plots_it(qtbot, make_window):
    w = make_window()
    assert w.panels[RIGHT].stack.currentIndex() == 0  # no right instance yet
    assert "running_mean all 0, running_var all 1 and num_batches_tracked 0" in w.sentence.text()
    click(qtbot, w, DemoAction.FORWARD_TRAIN)
    assert len(w.demo.steps) == 1 and w.log.count() == 2 and w.log.currentRow() == 1
    step = w.demo.steps[0]
    assert w.sentence.text() == step.sentence
    mean_b, mean_a, var_b, var_a = w.panels[LEFT].bar_heights()
    assert mean_b == [0.0] * 5 and var_b == [1.0] * 5
    assert mean_a == pytest.approx(list(w.demo.left.bn.running_mean.tolist()))
    assert var_a == pytest.approx(list(w.demo.left.bn.running_var.tolist()))
    assert "num_batches_tracked 0 → <b>1</b>" in w.panels[LEFT].info.text()
    train = w.panels[LEFT].out_train.getData()[1]
    assert len(train) == 8 * 5 and list(train) == pytest.approx([v for r in step.after[LEFT].output_train for v in r])


def test_eval_forward_button_changes_no_statistics(qtbot, make_window):
    w = make_window()
    click(qtbot, w, DemoAction.FORWARD_EVAL)
    mean_b, mean_a, var_b, var_a = w.panels[LEFT].bar_heights()
    assert mean_a == mean_b == [0.0] * 5 and var_a == var_b == [1.0] * 5
    assert "num_batches_tracked <b>0</b>" in w.panels[LEFT].info.text()
    assert int(w.demo.left.bn.num_batches_tracked) == 0


def test_save_load_fills_right_and_side_buttons_follow(qtbot, make_window):
    w = make_window()
    w.side.setCurrentText(RIGHT)
    assert not w.buttons[DemoAction.FORWARD_TRAIN].isEnabled()  # nothing on the right yet
    w.side.setCurrentText(LEFT)
    click(qtbot, w, DemoAction.FORWARD_TRAIN)
    click(qtbot, w, DemoAction.SAVE_AND_LOAD)
    assert w.panels[RIGHT].stack.currentIndex() == 1
    assert w.panels[RIGHT].bar_heights()[1] == pytest.approx(w.demo.left.bn.running_mean.tolist())
    w.side.setCurrentText(RIGHT)
    assert w.buttons[DemoAction.FORWARD_TRAIN].isEnabled()
    w.batch.setValue(2)
    click(qtbot, w, DemoAction.FORWARD_TRAIN)
    assert w.demo.steps[-1].params == {"side": RIGHT, "batch": 2}
    assert not torch.equal(w.demo.left.bn.running_mean, w.demo.right.bn.running_mean)


def test_freeze_then_parent_train_trap(qtbot, make_window):
    w = make_window()
    for key in (DemoAction.FORWARD_TRAIN, DemoAction.FREEZE_BN, DemoAction.FORWARD):
        click(qtbot, w, key)
    assert int(w.demo.left.bn.num_batches_tracked) == 1
    click(qtbot, w, DemoAction.MODEL_TRAIN)
    assert "train mode" in w.panels[LEFT].info.text()
    click(qtbot, w, DemoAction.FORWARD)
    assert int(w.demo.left.bn.num_batches_tracked) == 2
    assert "num_batches_tracked 1 → <b>2</b>" in w.panels[LEFT].info.text()


def test_momentum_and_old_checkpoint_buttons(qtbot, make_window):
    w = make_window()
    w.momentum.setCurrentText("None (cumulative average)")
    click(qtbot, w, DemoAction.SET_MOMENTUM)
    assert w.demo.left.bn.momentum is None
    w.momentum.setCurrentText("fast")
    click(qtbot, w, DemoAction.SET_MOMENTUM)
    assert not w.status.isHidden() and "not a number" in w.status.text() and len(w.demo.steps) == 1
    w.momentum.setCurrentText("1.5")
    click(qtbot, w, DemoAction.SET_MOMENTUM)
    assert "momentum must be" in w.status.text() and len(w.demo.steps) == 1
    click(qtbot, w, DemoAction.FORWARD_TRAIN)
    assert w.status.isHidden()  # an action that works clears the message
    click(qtbot, w, old_checkpoint_button("current"))
    assert w.demo.steps[-1].load.error and "raised RuntimeError" in w.sentence.text()
    w.strict.setChecked(False)
    click(qtbot, w, old_checkpoint_button("none"))
    assert w.demo.steps[-1].params["metadata"] == "none" and w.demo.steps[-1].params["strict"] is False
    click(qtbot, w, DemoAction.TOGGLE_TRACK_RUNNING_STATS)
    assert w.demo.left.bn.track_running_stats is False


def test_step_log_click_goes_back_and_forth(qtbot, make_window):
    w = make_window(run_default_sequence("linear"))
    n = len(w.demo.steps)
    assert w.log.count() == n + 1 and w.log.currentRow() == n
    w.log.setCurrentRow(2)  # after step 2 (forward in train mode)
    assert w.demo.position == 1 and w.demo.right is None
    assert int(w.demo.left.bn.num_batches_tracked) == 1
    assert w.sentence.text() == w.demo.steps[1].sentence
    assert w.panels[RIGHT].stack.currentIndex() == 0
    qtbot.mouseClick(w.forward_button, Qt.MouseButton.LeftButton)
    assert w.demo.position == 2 and w.log.currentRow() == 3
    qtbot.mouseClick(w.back_button, Qt.MouseButton.LeftButton)
    qtbot.mouseClick(w.back_button, Qt.MouseButton.LeftButton)
    qtbot.mouseClick(w.back_button, Qt.MouseButton.LeftButton)
    assert w.demo.position == -1 and not w.back_button.isEnabled()
    click(qtbot, w, DemoAction.FORWARD_EVAL)  # a new action drops the steps ahead
    assert len(w.demo.steps) == 1 and w.log.count() == 2


def test_variant_switch_and_scripted_sequence(qtbot, make_window):
    w = make_window()
    w.variant.setCurrentIndex(w.variant.findData("conv"))
    assert w.demo.variant.name == "conv" and w.demo.steps == []
    qtbot.mouseClick(w.scripted_button, Qt.MouseButton.LeftButton)
    assert w.demo.variant.name == "conv" and len(w.demo.steps) > 10
    assert len(w.panels[LEFT].bar_heights()[1]) == 4


def test_export_script_writes_the_file(qtbot, make_window, tmp_path, monkeypatch):
    w = make_window()
    assert not w.export_button.isEnabled()
    click(qtbot, w, DemoAction.FORWARD_TRAIN)
    target = tmp_path / "replay.py"
    monkeypatch.setattr(demo_view.QFileDialog, "getSaveFileName", lambda *a, **k: (str(target), "Python (*.py)"))
    qtbot.mouseClick(w.export_button, Qt.MouseButton.LeftButton)
    assert target.read_text() == w.demo.export_script()
    assert "saved replay.py" in w.step_title.text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["replay.py"]


def test_open_batchnorm_demo_is_a_top_level_window(qtbot):
    parent = QWidget()
    qtbot.addWidget(parent)
    w = open_batchnorm_demo(parent)
    assert w.isWindow() and w.isVisible() and not w.isModal()
    assert w.parent() is parent
    w.close()


def test_screenshot_has_plots_and_restores_position(qtapp, tmp_path):
    demo = run_default_sequence("linear")
    last = demo.position
    out = save_screenshot(tmp_path / "demo.png", demo=demo)
    assert demo.position == last
    img = QImage(out)
    assert img.width() == 1440 and img.height() == 900
    counts = {side: 0 for side in SIDE_COLOURS}
    wanted = {QColor(c).rgb(): side for side, c in SIDE_COLOURS.items()}
    for x in range(0, img.width(), 3):
        for y in range(0, img.height(), 3):
            side = wanted.get(img.pixel(x, y))
            if side:
                counts[side] += 1
    assert counts[LEFT] > 200 and counts[RIGHT] > 200, counts  # both sides' "after" bars were drawn


def test_cli_screenshot(tmp_path):
    out = tmp_path / "shot.png"
    r = subprocess.run([sys.executable, "main.py", "demo", "batchnorm", "--json", "--variant", "conv",
                        "--screenshot", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert QImage(str(out)).width() == 1440
    assert len(json.loads(r.stdout)["steps"]) == len(DEFAULT_SEQUENCE)  # the screenshot did not cut the history


@pytest.fixture
def qtapp(qapp):
    return qapp


def test_screenshot_entry_point_rejects_a_step_out_of_range(tmp_path):
    bad = subprocess.run([sys.executable, "-m", "explorer.qt.demo_view", str(tmp_path / "x.png"), "--step", "99"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--step must be between 1 and" in bad.stderr
    assert not (tmp_path / "x.png").exists()
