"""Foundation checks: the core stays Qt-free, the PySide6 guard holds, basic readers agree with torch."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[2]


def run(*args, cwd=ROOT):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_core_imports_without_qt():
    code = ("import sys, explorer.core, explorer.cli, explorer.errors;"
            "import explorer.core.loaders as L; L._ensure_builtin();"
            "bad=[m for m in sys.modules if m.split('.')[0] in ('PySide6','pyqtgraph','shiboken6')];"
            "print(bad); sys.exit(1 if bad else 0)")
    r = run("-c", code)
    assert r.returncode == 0, r.stdout + r.stderr


def test_pyside6_void_calls_do_not_kill_interpreter():
    """PySide6 6.12.0 on CPython < 3.12 leaked a None reference per void call and died; this must never install."""
    code = ("import os, sys; os.environ.setdefault('QT_QPA_PLATFORM','offscreen');"
            "from PySide6.QtWidgets import QApplication, QWidget; app=QApplication([]); w=QWidget();"
            "before=sys.getrefcount(None)\n"
            "for i in range(100000): w.update()\n"
            "after=sys.getrefcount(None); print(before, after); sys.exit(0 if after >= before - 10 else 3)")
    r = run("-c", code)
    assert r.returncode == 0, r.stdout + r.stderr


def test_dependency_pin_excludes_broken_pyside():
    text = (ROOT / "pyproject.toml").read_text()
    assert "PySide6-Essentials>=6.6,<6.12; python_version < '3.12'" in text
    import PySide6
    if sys.version_info < (3, 12):
        assert tuple(int(x) for x in PySide6.__version__.split(".")[:2]) < (6, 12)


@pytest.fixture
def bn_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))


def test_inspect_json_matches_torch(tmp_path, bn_model):
    path = tmp_path / "m.pt"
    torch.save({"state_dict": bn_model.state_dict(), "epoch": 7}, path)
    r = run("main.py", "inspect", str(path), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    ref = torch.load(path, weights_only=True)["state_dict"]
    assert [e["path"] for e in out["entries"]] == [["state_dict", k] for k in ref]
    assert [e["shape"] for e in out["entries"]] == [list(v.shape) for v in ref.values()]
    assert [e["dtype"] for e in out["entries"]] == [str(v.dtype).replace("torch.", "") for v in ref.values()]
    assert out["default_state_dict"] == ["state_dict"]
    assert out["format"] == "torch-zip"


def test_inspect_bad_file_one_line_exit_2(tmp_path):
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"PK\x03\x04 this is not really a zip")
    r = run("main.py", "inspect", str(bad))
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and str(bad) in r.stderr and "Traceback" not in r.stderr


def test_inspect_missing_file(tmp_path):
    r = run("main.py", "inspect", str(tmp_path / "nope.pt"))
    assert r.returncode == 2 and "no such file" in r.stderr


def test_model_side_kinds():
    from explorer.core import ModelSide

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm1d(2)
            self.register_buffer("scratch", torch.zeros(3), persistent=False)
            self.tied_a = nn.Linear(2, 2)
            self.tied_b = nn.Linear(2, 2)
            self.tied_b.weight = self.tied_a.weight

    side = ModelSide(M())
    infos = side.all_infos()
    assert infos["bn.weight"].kind == "parameter"
    assert infos["bn.running_mean"].kind == "buffer"
    assert infos["scratch"].kind == "non_persistent"
    assert "scratch" not in side.state_dict_infos()
    assert side.module_classes()["bn"].class_name == "BatchNorm1d"
    assert ["tied_a.weight", "tied_b.weight"] in side.tied_groups()


def test_import_contract_keeps_qt_out_of_the_core():
    """import-linter's contracts (pyproject.toml): core, errors, cli, commands and session never import Qt; the layers
    (window, session, commands, core, errors; inside the core series > simulate > remap > load > side > model source |
    readers > checkpoint > safe_pickle > records) only point down. Each is named, so a withdrawn contract fails too."""
    lint = Path(sys.executable).with_name("lint-imports")
    r = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "3 kept, 0 broken" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
    assert "never import Qt KEPT" in r.stdout and "window, session, commands, core, errors KEPT" in r.stdout
    assert "Inside the core, the layers only point down" in r.stdout


def test_core_package_import_is_lazy():
    r = run("-c", "import sys, explorer.core, explorer.core.tree; sys.exit('torch' in sys.modules)")
    assert r.returncode == 0, r.stderr


def test_every_name_the_core_package_exports_resolves():
    """``from explorer.core import NAME`` works for every name of ``__all__`` (``health_scan`` pointed at the module
    that does not define it)."""
    import explorer.core as core
    for name in core.__all__:
        assert getattr(core, name) is not None, name
