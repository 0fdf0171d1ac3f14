"""The series view's Qt-free work (session.series_job): a generated run with a frozen key, a NaN from a known step, a
key added mid-run and BatchNorm statistics; figures checked against ``series --json``."""
import csv
import io
import json
import math

import numpy as np
import pytest

from explorer.session import series_job as J
from tests.core.test_series import make_run

STEPS = [100, 200, 300, 400, 500, 600]


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.fixture
def run(tmp_path):
    make_run(tmp_path / "run", STEPS, nan_at=400, added_at=300)
    data = J.open_and_measure([str(tmp_path / "run")])
    yield data
    data.close()


def json_cell(v) -> str:
    """A --json figure as the CSV spells it."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return v
    return str(v) if isinstance(v, int) else repr(float(v))


def test_heat_matrix_is_keys_by_checkpoints(run):
    m = J.heat_matrix(run, "rel_change_prev")
    assert m.shape == (len(run.keys), len(STEPS))
    r = run.keys.index("emb.weight")
    assert np.isnan(m[r, 0]) and (m[r, 1:] == 0).all()          # frozen: no change after the first
    fc = run.keys.index("fc.weight")
    assert np.isinf(m[fc, 3:]).all() and np.isfinite(m[fc, 1:3]).all()   # NaN from step 400 (checkpoint 3)
    head = run.keys.index("head.bias")
    assert np.isnan(m[head, :2]).all()                           # absent before step 300


def test_trajectory_has_one_point_per_checkpoint_holding_the_key(run):
    xs, ys = J.trajectory(run, "head.bias", "norm")
    assert list(xs) == [300.0, 400.0, 500.0, 600.0] and len(ys) == 4 and np.isfinite(ys).all()
    xs, ys = J.trajectory(run, "fc.weight", "norm")
    assert list(xs) == [float(s) for s in STEPS]
    assert np.isnan(ys[3:]).all() and np.isfinite(ys[:3]).all()
    xs, ys = J.trajectory(run, "fc.weight", "rel_change_prev")
    assert math.isnan(ys[0])          # nothing to compare the first checkpoint with


def test_histograms_share_bins_and_count_finite_values(run):
    h = J.histograms(run, "fc.weight", [0, 5])
    assert set(h["counts"]) == {0, 5} and len(h["edges"]) == len(h["counts"][0]) + 1
    assert int(h["counts"][0].sum()) == 32 and int(h["counts"][5].sum()) == 31   # the NaN is left out
    assert J.histograms(run, "head.bias", [0, 1])["counts"] == {}               # not in those checkpoints
    assert J.bins_for(32) == 11 and J.bins_for(10 ** 8) == 96 and J.bins_for(1) == 8


def test_csv_matches_series_json(run, tmp_path):
    out = tmp_path / "table.csv"
    assert J.write_csv(run, str(out)) == str(out)
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert len(rows) == len(run.keys) * len(STEPS)
    doc = json.loads(json.dumps(run.result.to_json()))
    for k in doc["keys"]:
        mine = [r for r in rows if r["key"] == k["key"]]
        assert [int(r["checkpoint"]) for r in mine] == list(range(len(STEPS)))
        for name in ("norm", "rel_change_prev", "rel_change_first", "frac_changed", "nonfinite", "present"):
            assert [r[name] for r in mine] == [json_cell(v) for v in k[name]], (k["key"], name)
    assert [r["step"] for r in rows[:len(STEPS)]] == [str(s) for s in STEPS]


def test_findings_and_run_detection(run, tmp_path):
    kinds = dict(J.findings_lines(run))
    assert "emb.weight" in kinds["frozen"] and "checkpoint 3" in kinds["nonfinite"]
    assert "6 checkpoints" in J.summary(run)
    assert J.looks_like_run(str(tmp_path / "run"))
    assert not J.looks_like_run(str(tmp_path / "run" / "step_100.pt"))
    (tmp_path / "empty").mkdir()
    assert not J.looks_like_run(str(tmp_path / "empty"))


def test_in_the_compute_process_the_figures_are_the_same(run, tmp_path):
    from explorer.session.compute_process import ComputeProcess
    eng = ComputeProcess(nice=0)
    try:
        there = J.open_and_measure(run.paths, engine=eng)
        assert there.series is None and there.keys == run.keys
        assert there.result.to_json() == run.result.to_json()
        assert there.result.cached           # the child used this test's cache folder, which the first look filled
        for metric in J.METRICS:
            np.testing.assert_array_equal(there.matrices[metric], run.matrices[metric])
        a, b = J.histograms(there, "fc.weight", [0, 5]), J.histograms(run, "fc.weight", [0, 5])
        np.testing.assert_array_equal(a["edges"], b["edges"])
        assert all((a["counts"][i] == b["counts"][i]).all() for i in (0, 5))
        assert J.table_csv(there) == J.table_csv(run)
    finally:
        eng.shutdown()


def test_colour_scale_is_the_runs_own_and_at_least_a_decade():
    m = np.array([[np.nan, 0.0, 0.001, 0.02], [np.nan, np.inf, 0.05, 0.1]])   # 0, inf, NaN are off the scale
    lo, hi = J.log_range(m)
    assert hi == pytest.approx(-1.0) and -3.0 < lo < -2.5
    lo, hi = J.log_range(np.array([[0.01, 0.0101]]))
    assert hi - lo == pytest.approx(J.SPAN) and lo < -2 < hi
    assert J.log_range(np.full((2, 2), np.nan)) == (-6.0, 0.0)


def test_module_rows_are_the_largest_figure_of_their_keys(run):
    """The heat map's tree (the compare view's dotted-name tree): a module's cell at a checkpoint is the largest
    figure of its keys there (NaN where none applies), present where any key is, NaN/Inf counts summed."""
    assert [c.name for c in run.tree.root.children] == ["fc", "emb", "bn", "proj", "head"]
    bn = [run.keys.index(k) for k in ("bn.running_mean", "bn.running_var", "bn.num_batches_tracked")]
    for metric in J.METRICS:
        m, cells = run.matrices[metric], run.cells[metric]
        for c in range(1, len(STEPS)):
            assert cells["bn"].values[c] == max(m[r, c] for r in bn)
        assert cells["bn"].keys == 3 and cells[""].keys == len(run.keys)
        np.testing.assert_array_equal(cells["fc.weight"].values, m[run.keys.index("fc.weight")])
    cells = run.cells["rel_change_prev"]
    assert np.isnan(cells["bn"].values[0]) and np.isnan(cells[""].values[0])      # nothing to compare with
    assert (cells["emb"].values[1:] == 0).all()                                   # frozen: unchanged
    assert cells["head"].present.tolist() == [False, False, True, True, True, True]
    assert cells[""].nonfinite.tolist() == [0, 0, 0, 1, 1, 1] == cells["fc"].nonfinite.tolist()
    assert np.isinf(cells[""].values[3:]).all()                                   # NaN/Inf: the top of the scale
    key, v = J.largest_key(run, "bn", "rel_change_prev", 1)
    assert key == "bn.num_batches_tracked" and v == cells["bn"].values[1] == 1.0   # 1000 -> 2000 batches


def test_a_key_that_is_also_a_module(tmp_path):
    import torch
    folder = tmp_path / "run"
    folder.mkdir()
    for i in range(3):
        torch.save({"a": torch.full((2,), 1.0 + i), "a.b": torch.full((3,), 1.0 + 10 * i)}, folder / f"s{i}.pt")
    data = J.open_and_measure([str(folder)])
    try:
        cells = data.cells["rel_change_prev"]
        assert data.tree.by_path["a"].is_leaf and data.tree.by_path["a"].children
        assert cells["a"].keys == 2 and cells["a"].values[1] == pytest.approx(10.0)   # its own 1.0, a.b's 10.0
        assert cells["a.b"].values[1] == pytest.approx(10.0)
    finally:
        data.close()


def test_the_tree_opens_as_deep_as_its_rows_allow():
    tree = J.key_tree([f"layers.{i}.{m}.weight" for i in range(10) for m in ("attn", "mlp")] + ["head.bias"])
    # rows by depth: 2 (layers, head), 11 (0..9, bias), 20 (attn, mlp), 20 (weight): 53 in all
    assert J.open_depth(tree, 60) is None
    assert J.open_depth(tree, 52) == 1 and J.open_depth(tree, 33) == 1    # layers open, and each layer: 33 rows
    assert J.open_depth(tree, 32) == 0 and J.open_depth(tree, 13) == 0    # the top level open: 13 rows
    assert J.open_depth(tree, 12) == -1 and J.open_depth(tree, 1) == -1
