"""Issue 15 point 3, the window: opening a safetensors file or a torch.save zip lists its tree before torch is imported
(the parse process imports none, and the compute process, which does, starts once the tree is there)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import subprocess
import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[2]

# A window in its own process: every time the tree model is reset, the rows it shows and whether torch is imported
# by then; after the first tree, the event loop runs on until torch is imported (the compute process starting).
WINDOW = """
import json, os, sys, time
os.environ["QT_QPA_PLATFORM"] = "offscreen"
from PySide6.QtWidgets import QApplication
app = QApplication([])
from PySide6.QtCore import QSettings
from explorer.qt.main_window import MainWindow
w = MainWindow(QSettings(os.devnull, QSettings.IniFormat))
w.show()
app.processEvents()
trees = []
model = w.compare.model
model.modelReset.connect(lambda: trees.append((model.rowCount(), "torch" in sys.modules)))
w.open_path(0, sys.argv[1])
deadline = time.monotonic() + 120
while time.monotonic() < deadline and not any(rows for rows, _ in trees):
    app.processEvents()
    time.sleep(0.005)
while time.monotonic() < deadline and "torch" not in sys.modules:
    app.processEvents()
    time.sleep(0.005)
print(json.dumps({"trees": trees, "torch_later": "torch" in sys.modules, "failures": w.load_failures}))
sys.stdout.flush()
w.runner.shutdown(5000)
os._exit(0)
"""


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("window_notorch")
    sd = {"encoder.layer.0.weight": torch.randn(4, 4).to(torch.bfloat16), "encoder.layer.0.bias": torch.zeros(4),
          "head.weight": torch.randn(2, 4, dtype=torch.float16), "head.scale": torch.ones(2).to(torch.float8_e4m3fn)}
    save_file(sd, d / "model.safetensors")
    torch.save({"state_dict": sd, "epoch": 2}, d / "model.pt")
    return {"safetensors": d / "model.safetensors", "torch-zip": d / "model.pt"}


@pytest.mark.parametrize("name", ["safetensors", "torch-zip"])
def test_the_tree_shows_before_torch_is_imported(files, name):
    r = subprocess.run([sys.executable, "-c", WINDOW, str(files[name])], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["failures"] == 0
    shown = [t for t in got["trees"] if t[0] > 0]
    assert shown, got                                   # the tree was listed: encoder and head
    assert shown[0] == [2, False], got                  # ... with no torch in the window's process yet
    assert got["torch_later"]                           # which the compute process imports once the tree is there
