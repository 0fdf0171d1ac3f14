"""Fixtures for the window tests: real files in tmp_path, a window with its own settings file, helpers to wait."""
from __future__ import annotations

import textwrap

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")

from PySide6.QtCore import QSettings  # noqa: E402


MODEL_SOURCE = textwrap.dedent("""
    import torch.nn as nn

    def build():
        return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
""")


@pytest.fixture
def model_spec(tmp_path):
    """``file.py:build``: Linear(4,3) -> BatchNorm1d(3) -> Linear(3,2)."""
    path = tmp_path / "netdef.py"
    path.write_text(MODEL_SOURCE)
    return f"{path}:build"


@pytest.fixture
def problem_checkpoint(tmp_path):
    """A checkpoint for ``model_spec`` with a missing key (2.bias), an unexpected one (extra.weight), a shape mismatch
    (2.weight) and running statistics that moved (train-mode forward)."""
    import torch.nn as nn
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    m.train()
    m(torch.randn(8, 4) * 3 + 1)
    sd = m.state_dict()
    del sd["2.bias"]
    sd["extra.weight"] = torch.zeros(2)
    sd["2.weight"] = torch.zeros(2, 5)
    path = tmp_path / "problem.pt"
    torch.save(sd, path)
    return path


@pytest.fixture
def two_checkpoints(tmp_path):
    """Two plain checkpoints: a.pt (fc1, fc2, bn) and b.pt (fc1 changed, fc2 missing, head added)."""
    torch.manual_seed(1)
    a = {"fc1.weight": torch.randn(16, 8), "fc1.bias": torch.randn(16), "fc2.weight": torch.randn(4, 16),
         "bn.running_mean": torch.zeros(16), "bn.running_var": torch.ones(16)}
    b = {"fc1.weight": a["fc1.weight"] + 0.5, "fc1.bias": a["fc1.bias"].clone(),
         "bn.running_mean": torch.randn(16), "bn.running_var": torch.ones(16) * 2, "head.weight": torch.randn(2, 4)}
    pa, pb = tmp_path / "a.pt", tmp_path / "b.pt"
    torch.save(a, pa)
    torch.save(b, pb)
    return pa, pb


@pytest.fixture
def make_window(qtbot, tmp_path):
    """Factory: a MainWindow with its own settings file; background work is drained at teardown."""
    from explorer.qt.main_window import MainWindow
    made = []

    def factory(settings_name="settings.ini"):
        w = MainWindow(QSettings(str(tmp_path / settings_name), QSettings.IniFormat))
        qtbot.addWidget(w)
        w.resize(1300, 800)
        w.show()
        made.append(w)
        return w

    yield factory
    for w in made:
        w.runner.shutdown(5000)


def wait_idle(qtbot, window, timeout=20000):
    qtbot.waitUntil(window.is_idle, timeout=timeout)


def open_both(qtbot, window, left, right, timeout=30000):
    """Open two things and wait until the comparison holds both."""
    window.open_path(0, str(left))
    window.open_path(1, str(right))

    def ready():
        c = window.comparison
        return c is not None and c.left is not None and c.right is not None and window.is_idle()
    qtbot.waitUntil(ready, timeout=timeout)


@pytest.fixture(autouse=True)
def _app(qapp):
    """Every Qt test has a QApplication (pixmaps and icons need one)."""
    return qapp
