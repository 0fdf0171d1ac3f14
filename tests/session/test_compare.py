"""The comparison the window shows (Qt-free): rows, statuses, the two panes, a simulation painted on the rows."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
import torch.nn as nn

from explorer.core.model_source import ModelSide
from explorer.core.simulate.run import simulate_load
from explorer.session import compare as C

ROOT = Path(__file__).resolve().parents[2]


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.register_buffer("scratch", torch.zeros(2), persistent=False)


def _save(tmp_path, name, sd):
    path = tmp_path / name
    torch.save(sd, path)
    return str(path)


def test_the_panes_are_one_enum():
    assert C.LEFT == 0 and C.RIGHT == 1 and C.Pane(1) is C.RIGHT
    assert [p.word for p in C.Pane] == ["left", "right"]
    row = C.Row("k", None, None)
    row.left, row.right = "a", "b"
    assert row.info(C.LEFT) == "a" and row.info(C.RIGHT) == "b"


def test_a_model_side_shows_its_non_persistent_buffers_and_a_checkpoint_its_default_entry(tmp_path):
    model = C.side_data(ModelSide(Net(), "Net"), "Net")
    assert model.is_model and model.entry == () and model.label == "Net"
    assert list(model.infos) == ["fc.weight", "fc.bias", "scratch"]
    assert model.classes["fc"].class_name == "Linear"
    path = _save(tmp_path, "ck.pt", {"model": {"fc.weight": torch.ones(2, 3)}, "epoch": 3})
    ck = C.load_side_data(path)
    assert not ck.is_model and ck.entry == ("model",) and list(ck.infos) == ["fc.weight"] and ck.label == path


def test_rows_statuses_and_filters(tmp_path):
    a = C.load_side_data(_save(tmp_path, "a.pt", {"x.w": torch.ones(2), "x.b": torch.ones(2), "only_a": torch.ones(1)}))
    b = C.load_side_data(_save(tmp_path, "b.pt", {"x.w": torch.ones(3), "x.b": torch.ones(2, dtype=torch.float64),
                                                  "only_b": torch.ones(1)}))
    comp = C.Comparison(a, b)
    status = {k: comp.status(r) for k, r in comp.rows.items()}
    assert status == {"x.w": C.SHAPE_DIFFERS, "x.b": C.DTYPE_DIFFERS, "only_a": C.ONLY_A, "only_b": C.ONLY_B}
    assert comp.modules["x"].problems == 2 and comp.modules[""].present == [3, 3]
    assert comp.filtered_keys() is None
    assert comp.filtered_keys("X.") == ["x.w", "x.b"]
    assert comp.filtered_keys("^only", regex=True) == ["only_a", "only_b"]
    tree = comp.subtree(["x.b"])
    assert tree.by_key["x.b"].data is comp.rows["x.b"]


def test_a_rename_aligns_the_right_side_under_the_left_key(tmp_path):
    a = C.load_side_data(_save(tmp_path, "a.pt", {"fc.weight": torch.ones(2)}))
    b = C.load_side_data(_save(tmp_path, "b.pt", {"module.fc.weight": torch.ones(2)}))
    comp = C.Comparison(a, b, {"module.fc.weight": "fc.weight"})
    assert list(comp.rows) == ["fc.weight"] and comp.rows["fc.weight"].renamed_from == "module.fc.weight"


def test_a_simulation_paints_the_rows_and_leaves_unexpected_reports_unmade(tmp_path):
    model = C.side_data(ModelSide(Net(), "Net"), "Net")
    extra = {f"extra.{i}": torch.ones(1) for i in range(50)}
    ck = C.load_side_data(_save(tmp_path, "ck.pt", {"fc.weight": torch.ones(2, 3), **extra}))
    comp = C.Comparison(model, ck)
    report = simulate_load(model.side, ck.side, strict=False)
    comp.apply_simulation(report)
    rows = comp.rows
    assert comp.status(rows["fc.bias"]) == C.MISSING and comp.status(rows["fc.weight"]) == C.CHANGED
    assert all(comp.status(rows[k]) == C.UNEXPECTED for k in extra)
    assert "never loaded" in rows["scratch"].explanation
    made = {k for k, _ in report.keys.made_items()}
    assert not made & set(extra)                   # painting made none of the 50 unexpected reports
    assert rows["extra.7"].explanation == report.keys["extra.7"].explanation != ""   # made when read
    comp.clear_simulation()
    assert comp.status(rows["fc.bias"]) == C.ONLY_A


def test_the_session_imports_no_qt():
    code = ("import sys, explorer.session.jobs, explorer.session.parse_guard; "
            "assert not [m for m in sys.modules if m.startswith(('PySide6', 'pyqtgraph', 'explorer.qt'))]")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_module_totals_count_every_tensor_below_on_each_side(tmp_path):
    """Tensors and bytes below each module, per side, equal a count over the keys themselves (keys that are both a
    tensor and a module's prefix included: "a.b" and "a.b.c")."""
    import random
    rnd = random.Random(3)
    names = ["a", "b", "0", "1", "10", "c"]
    for trial in range(25):
        keys = list(dict.fromkeys(".".join(rnd.choice(names) for _ in range(rnd.randint(1, 4)))
                                  for _ in range(rnd.randint(1, 25))))
        sides = [{k: torch.zeros(rnd.randint(1, 5)) for k in keys if rnd.random() < 0.8} for _ in range(2)]
        a, b = (C.load_side_data(_save(tmp_path, f"{trial}{i}.pt", sd)) for i, sd in enumerate(sides))
        comp = C.Comparison(a, b)
        for path, md in comp.modules.items():
            below = [[k for k in sd if not path or k.startswith(path + ".")] for sd in sides]
            assert md.present == [len(below[0]), len(below[1])], (path, keys)
            assert md.nbytes == [sum(sides[i][k].nbytes for k in below[i]) for i in (0, 1)], (path, keys)
