"""The command line of the window, the lazy torch import, and remap suggestions end to end."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from PySide6.QtGui import QImage

from .conftest import open_both, wait_idle

ROOT = Path(__file__).resolve().parents[2]


def run_main(*args, tmp_path, timeout=120):
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", XDG_CACHE_HOME=str(tmp_path / "cache"),
               XDG_CONFIG_HOME=str(tmp_path / "config"))
    return subprocess.run([sys.executable, "main.py", *args, "--settings", str(tmp_path / "s.ini")], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env=env)


def test_screenshot_of_a_simulated_pair(tmp_path, model_spec, problem_checkpoint):
    out = tmp_path / "shot.png"
    r = run_main("--model", model_spec, str(problem_checkpoint), "--simulate", "--screenshot", str(out),
                 "--size", "1200x760", tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr
    img = QImage(str(out))
    assert img.width() == 1200 and img.height() >= 700
    # the banner is red (the load raises): some pixels of the banner's background colour are present
    reds = sum(1 for x in range(0, img.width(), 7) for y in range(0, 200, 3)
               if img.pixelColor(x, y).name() == "#fdecea")
    assert reds > 50


def test_first_run_opens_the_demo_with_the_simulation_run(tmp_path):
    out = tmp_path / "demo.png"
    r = run_main("--screenshot", str(out), tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr
    assert out.exists() and (tmp_path / "cache").exists()      # the demo checkpoint went to the cache folder
    img = QImage(str(out))
    greens = sum(1 for x in range(0, img.width(), 7) for y in range(0, 200, 3)
                 if img.pixelColor(x, y).name() == "#e8f6ef")   # the "would succeed" banner
    assert greens > 50


def test_bad_arguments_exit_2(tmp_path):
    r = run_main("a.pt", "b.pt", "--model", "demo:MyModel", "--screenshot", str(tmp_path / "x.png"),
                 tmp_path=tmp_path)
    assert r.returncode == 2 and "at most two" in r.stderr


def test_window_shows_before_torch_is_imported():
    """Building and painting the window imports no torch (1+ s); the first background job does."""
    code = ("import os, sys; os.environ['QT_QPA_PLATFORM']='offscreen';"
            "from PySide6.QtWidgets import QApplication; app=QApplication([]);"
            "from PySide6.QtCore import QSettings;"
            "from explorer.qt.main_window import MainWindow;"
            "w=MainWindow(QSettings(os.devnull, QSettings.IniFormat)); w.show(); app.processEvents();"
            "print('torch' in sys.modules); w.runner.shutdown(); app.processEvents()")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


def test_remap_suggestion_applies_and_exports(qtbot, make_window, tmp_path, monkeypatch):
    import torch
    import torch.nn as nn
    (tmp_path / "wrapped.py").write_text("import torch.nn as nn\n\ndef build():\n"
                                         "    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))\n")
    m = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    ck = tmp_path / "ddp.pt"
    torch.save({"module." + k: v for k, v in m.state_dict().items()}, ck)   # saved from DataParallel
    w = make_window()
    open_both(qtbot, w, f"{tmp_path / 'wrapped.py'}:build", ck)
    with qtbot.waitSignal(w.sig_simulation_done, timeout=30000) as blocker:
        w.simulate()
    report = blocker.args[0]
    assert report.raises and report.suggestions
    rows = w.banner.rows
    assert rows and "module." in rows[0].suggestion.title + rows[0].suggestion.remap.describe()
    assert len(w.comparison.rows) == 14          # 7 model keys + 7 unexpected "module." keys, not aligned
    suggestion = rows[0].suggestion
    with qtbot.waitSignal(w.sig_simulation_done, timeout=30000) as blocker:
        rows[0].apply_button.click()
    assert not blocker.args[0].raises
    wait_idle(qtbot, w)
    comp = w.comparison
    assert len(comp.rows) == 7                   # rows re-aligned
    assert comp.rows["0.weight"].renamed_from == "module.0.weight"
    out = tmp_path / "fixed.safetensors"
    with qtbot.waitSignal(w.sig_exported, timeout=30000):
        w.export_fixed(suggestion, str(out))
    from safetensors.torch import load_file
    fixed = load_file(str(out))
    assert set(fixed) == set(m.state_dict())
    # Export fixed… from the banner, twice: the dialog is offered a name not taken each time (an export never
    # replaces a file, so a name it would refuse is never suggested) and asks no "replace?"
    import explorer.qt.dialogs as dialogs
    offered = []

    def pick(parent, suggested):
        offered.append(suggested)
        return str(tmp_path / suggested)

    monkeypatch.setattr(dialogs, "export_path", pick)
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        with qtbot.waitSignal(w.sig_exported, timeout=30000):
            w.export_suggestion(suggestion)
    assert offered == ["ddp_fixed.safetensors", "ddp_fixed-2.safetensors"]
    assert set(load_file(str(tmp_path / offered[1]))) == set(m.state_dict())


def test_demo_menu_opens_the_batchnorm_demo(qtbot, make_window):
    from PySide6.QtWidgets import QApplication
    w = make_window()
    before = set(QApplication.topLevelWidgets())
    w.act_bn_demo.trigger()
    new = [t for t in QApplication.topLevelWidgets() if t not in before and t.isVisible()]
    assert new, "Demo -> BatchNorm opened no window"
    for t in new:
        t.close()
