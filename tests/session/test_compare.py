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


def test_module_problem_counts_equal_a_count_over_the_keys_made_before_or_after(tmp_path, monkeypatch):
    """Problems and differences below each module equal a count over the statuses of the keys below it, whether a
    module's data was made before a recount (a diff landing) or after, and with the levels made ahead or not."""
    import random
    rnd = random.Random(5)
    names = ["a", "b", "0", "1", "10"]
    for trial in range(12):
        monkeypatch.setattr(C, "PREBUILD_ABOVE", rnd.choice([0, 2, 1000]))
        keys = list(dict.fromkeys(".".join(rnd.choice(names) for _ in range(rnd.randint(1, 4)))
                                  for _ in range(rnd.randint(2, 25))))
        sides = [{k: torch.zeros(rnd.choice([1, 2])) for k in keys if rnd.random() < 0.8} for _ in range(2)]
        a, b = (C.load_side_data(_save(tmp_path, f"p{trial}{i}.pt", sd)) for i, sd in enumerate(sides))
        comp = C.Comparison(a, b)
        early = [comp.modules.get(p) for p in rnd.sample(keys, k=3)]     # made before the statuses change
        for row in comp.rows.values():                                    # as a diff would: some keys changed
            if row.diff_status == C.SAME_LAYOUT and rnd.random() < 0.5:
                row.diff_status = C.CHANGED
        comp.recount()

        def below(path):
            return [r for k, r in comp.rows.items() if not path or k.startswith(path + ".")]
        for path, md in comp.modules.items():
            sts = [comp.status(r) for r in below(path)]
            assert md.problems == sum(s in C.PROBLEM_STATUSES for s in sts), (path, keys)
            assert md.differences == sum(s not in C.SAME_STATUSES for s in sts), (path, keys)
        assert all(md is None or md is comp.modules[md.path] for md in early)
