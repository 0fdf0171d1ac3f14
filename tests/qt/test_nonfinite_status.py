"""The window's comparison: a NaN/Inf that appeared or went is a problem, said in words in the status column."""
from __future__ import annotations

import torch
from PySide6.QtCore import Qt

from explorer.core.diff import diff_sides
from explorer.core.records import CHANGED
from explorer.session import compare as C
from explorer.qt.tree_model import STATUS_COLUMN, StateTreeModel

NAN, INF = float("nan"), float("inf")


def test_window_status_and_problems_filter(tmp_path):
    """The comparison the window shows: a NaN appearing is a problem with its own words in the status column."""
    from safetensors.torch import save_file

    from explorer.session import compare as C
    a = {"w": torch.ones(3), "b": torch.ones(2), "c": torch.ones(2), "n": torch.tensor([NAN, 1.0])}
    b = {"w": torch.tensor([1.0, NAN, 1.0]), "b": torch.tensor([INF, 1.0]), "c": torch.tensor([1.0, 2.0]),
         "n": torch.tensor([0.0, 1.0])}
    save_file(a, tmp_path / "a.safetensors")
    save_file(b, tmp_path / "b.safetensors")
    left, right = C.load_side_data(str(tmp_path / "a.safetensors")), C.load_side_data(str(tmp_path / "b.safetensors"))
    comp = C.Comparison(left, right)
    comp.apply_diff(diff_sides(left.side, right.side))
    assert [comp.rows[k].alert for k in "wbcn"] == ["NaN appeared", "Inf appeared", "", "NaN gone"]
    assert comp.status(comp.rows["w"]) == C.NONFINITE and C.NONFINITE in C.PROBLEM_STATUSES
    assert comp.status(comp.rows["c"]) == CHANGED
    assert sorted(comp.filtered_keys(problems_only=True)) == ["b", "n", "w"]
    assert comp.modules[""].problems == 3
    assert "NaN appeared at 1 position" in comp.rows["w"].explanation
    expl = comp.rows["w"].explanation
    head, _, finite = expl.partition("over the 2 positions finite on both sides: ")
    assert "max |Δ| nan" in head and "max |Δ| 0" not in head and finite.startswith("max |Δ| 0")
    model = StateTreeModel()
    model.set_tree(comp)
    shown = {}
    for r in range(model.rowCount()):
        idx = model.index(r, STATUS_COLUMN)
        shown[model.index(r, 0).data(Qt.DisplayRole)] = idx.data(Qt.DisplayRole)
    assert shown["w"] == "⚠ NaN appeared" and shown["b"] == "⚠ Inf appeared" and shown["n"] == "⚠ NaN gone"
    assert "⚠" not in shown["c"]


def test_detail_delta_says_what_it_leaves_out_and_fresh_batchnorm_is_told(tmp_path):
    """The detail pane's data: the delta plot is over the finite deltas and says how many are left out; a fresh
    BatchNorm's zero running_mean carries its explanation in ``stats.info``, not a flag."""
    import torch.nn as nn

    from explorer.core.health import FRESH_BN_MEAN
    from explorer.session import detail_compute as D
    m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    sd = m.state_dict()
    torch.save(sd, tmp_path / "a.pt")
    sd2 = {k: v.clone() for k, v in sd.items()}
    sd2["0.weight"][0, :2] = torch.tensor([NAN, INF])
    sd2["0.weight"][1, 0] += 1.0
    torch.save(sd2, tmp_path / "b.pt")
    comp = C.Comparison(C.load_side_data(str(tmp_path / "a.pt")), C.load_side_data(str(tmp_path / "b.pt")))
    res = D.compute_detail(comp, "0.weight", bins=16)
    d = (sd2["0.weight"] - sd["0.weight"]).reshape(-1)
    assert res.delta_nonfinite == int((~torch.isfinite(d)).sum()) == 2
    assert "finite Δ only: 2 positions with NaN/Inf left out" in res.delta_note
    assert res.delta_max_abs == float(d[torch.isfinite(d)].abs().max())
    res = D.compute_detail(comp, "1.running_mean", bins=16)
    for sv in (res.left, res.right):
        assert sv.stats.flags == [] and sv.stats.info == [FRESH_BN_MEAN]
    assert D.compute_detail(comp, "1.bias", bins=16).left.stats.info     # the BN bias of zeros: its initial value
