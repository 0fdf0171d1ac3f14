"""The window tells what it could not do: two checkpoints simulated (checked against real torch), --screenshot's exit
status, a parse that never ends stopped and reported while the window stays responsive, and the layout (plots whole,
legends off the data, shapes whole, the first problem in view)."""
from __future__ import annotations

import textwrap
import time

import pytest
import torch
import torch.nn as nn

from explorer.qt.tree_model import NAME_COLUMN
from explorer.session import compare as C
from explorer.session.parse_guard import probe

from .conftest import open_both, wait_idle
from .test_app import run_main


def _net():
    torch.manual_seed(0)
    # a BatchNorm at the top (its running statistics change), the keys that make the load raise at the bottom,
    # many rows below the first screenful
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 4 * 4, 5),
                         *[nn.Linear(5, 5) for _ in range(LAST - 3)])


LAST = 33


@pytest.fixture
def raising_pair(tmp_path):
    """a.pt: a real model's state dict; bad.pt: the same with a missing key, an unexpected one, a shape mismatch and
    new values -- plus what real torch does loading bad.pt into the real model."""
    model = _net()
    sd = model.state_dict()
    bad = {k: (v + 1 if v.is_floating_point() else v) for k, v in sd.items()}
    del bad[f"{LAST}.bias"]
    bad[f"{LAST}.weight"] = torch.zeros(5, 7)
    bad["extra.w"] = torch.zeros(2)
    pa, pb = tmp_path / "a.pt", tmp_path / "bad.pt"
    torch.save(sd, pa)
    torch.save(bad, pb)
    real = _net()
    real.load_state_dict(torch.load(pa, weights_only=True))
    with pytest.raises(RuntimeError) as info:
        real.load_state_dict(torch.load(pb, weights_only=True))
    return pa, pb, str(info.value)


# ---- point 8: two checkpoints and --simulate ------------------------------------------------------------------------
def test_two_checkpoints_simulate_like_torch(qtbot, make_window, raising_pair):
    pa, pb, torch_message = raising_pair
    w = make_window()
    open_both(qtbot, w, pa, pb)
    with qtbot.waitSignal(w.sig_simulation_done, timeout=30000) as blocker:
        w.act_simulate.trigger()
    report = blocker.args[0]
    assert report.raises and report.error_type == "RuntimeError"
    # torch's own message, but for the class name: a state dict does not say what the model's class was
    assert report.error_message == torch_message.replace("for Sequential:", "for Module:")
    # torch's missing and unexpected keys (strict=False raises on the size mismatch: asked without that key)
    missing, unexpected = _net().load_state_dict(
        {k: v for k, v in torch.load(pb, weights_only=True).items() if k != f"{LAST}.weight"}, strict=False)
    assert report.missing_keys == [k for k in missing if k != f"{LAST}.weight"] and report.unexpected_keys == unexpected
    comp = w.comparison
    assert comp.simulated
    assert comp.status(comp.rows[f"{LAST}.weight"]) == C.SHAPE_MISMATCH
    assert comp.status(comp.rows["0.weight"]) == C.CHANGED      # values compared with the left checkpoint
    assert comp.status(comp.rows["1.num_batches_tracked"]) == C.MATCHED
    text = w.banner.summary.text()
    assert "not a model" in text and "module classes are unknown" in text
    # the first key that makes the load raise is selected and in view
    wait_idle(qtbot, w)
    assert w.compare.selection_key() == f"{LAST}.weight"
    for view, side in ((w.compare.left, 0), (w.compare.right, 1)):
        rect = view.visualRect(w.compare.model.index_of_path(f"{LAST}.weight").siblingAtColumn(NAME_COLUMN[side]))
        assert rect.isValid() and view.viewport().rect().contains(rect.center()), (side, rect, view.viewport().rect(), view.verticalScrollBar().value(), view.verticalScrollBar().maximum())


def test_screenshot_of_two_checkpoints_simulates_at_once(tmp_path, raising_pair):
    pa, pb, _ = raising_pair
    out = tmp_path / "sim.png"
    t0 = time.monotonic()
    r = run_main(str(pa), str(pb), "--simulate", "--screenshot", str(out), tmp_path=tmp_path, timeout=90)
    assert r.returncode == 0, r.stderr
    assert out.exists() and time.monotonic() - t0 < 60      # it used to wait out its 120 s timer


# ---- point 13: --screenshot says what did not happen ---------------------------------------------------------------
def test_screenshot_exits_2_when_a_side_fails_or_select_matches_nothing(tmp_path, two_checkpoints):
    out = tmp_path / "x.png"
    r = run_main(str(two_checkpoints[0]), str(tmp_path / "nope.pt"), "--select", "no.such.key", "--simulate",
                 "--screenshot", str(out), tmp_path=tmp_path, timeout=90)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert out.exists()                                   # the picture is still written
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    line = errors[0]
    assert "the right side did not open" in line and "nope.pt" in line
    assert "--select 'no.such.key' matched no key" in line
    assert "not simulated" in line


# ---- a parse that never ends ---------------------------------------------------------------------------------------
HOG = textwrap.dedent('''
    def hog(text, *, progress=None, should_stop=None):
        """Holds the interpreter lock in C code and never checks should_stop (as a hostile pickle's tuple DAG
        hashed by the C unpickler does): 2**64 steps."""
        t = ()
        for _ in range(64):
            t = (t, t)
        hash(t)
''')


def test_a_parse_that_never_ends_is_stopped_and_the_window_stays_responsive(qtbot, make_window, two_checkpoints,
                                                                              tmp_path, monkeypatch):
    from PySide6.QtCore import QTimer

    import explorer.session.compute_process as cp
    (tmp_path / "sde_test_hog.py").write_text(HOG)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cp, "CANCEL_GRACE_S", 1.0)
    eng = cp.ComputeProcess(nice=0)        # a child started now sees the module above
    monkeypatch.setattr(cp, "_PARSE_ENGINE", eng)
    try:
        w = make_window()
        w.parse_timeout_s = 2.0
        import sde_test_hog
        w.parse_probe = sde_test_hog.hog
        ticks = []
        timer = QTimer()
        timer.timeout.connect(lambda: ticks.append(time.monotonic()))
        timer.start(20)
        with qtbot.waitSignal(w.sig_load_failed, timeout=30000) as blocker:
            w.open_path(1, str(two_checkpoints[1]))
        failed_at = time.monotonic()
        timer.stop()
        side, message = blocker.args
        assert side == 1 and "did not finish within 2 s and was stopped" in message
        # the GUI thread ran while the parse was stuck (its last 2 s): in this process it would have held the GIL
        assert any(failed_at - 1.5 < t < failed_at - 0.5 for t in ticks)
        assert eng._proc is None                             # the runaway reader was killed
        assert w.unmet_requests() and "did not finish" in w.unmet_requests()[0]
        # the window goes on: the same file opens with the real reader (the compute process restarts)
        w.parse_probe = probe
        w.parse_timeout_s = 120.0    # the restarted process imports torch first: seconds on a busy machine
        with qtbot.waitSignal(w.sig_side_loaded, timeout=60000):
            w.open_path(1, str(two_checkpoints[1]))
        assert w.unmet_requests() == []
    finally:
        eng.shutdown()


def _dag_key_pickle(levels: int = 64) -> bytes:
    """{(((…),(…)),…): 1}: a 64-level tuple DAG as a dict key; building the dict hashes it (2**64 steps)."""
    out = [b"\x80\x04", b"}", b"\x94", b")", b"\x94"]
    for i in range(levels):
        out.append(b"0" + b"h" + bytes([i + 1]) + b"h" + bytes([i + 1]) + b"\x86\x94")
    out.append(b"K\x01s.")
    return b"".join(out)


def test_screenshot_run_with_a_hanging_file_ends_in_time(tmp_path, two_checkpoints, monkeypatch):
    from tests.hostile.corpus import write_torch_zip
    hang = tmp_path / "hang.pt"
    write_torch_zip(str(hang), _dag_key_pickle())
    out = tmp_path / "h.png"
    monkeypatch.setenv("STATE_DICT_EXPLORER_PARSE_TIMEOUT", "3")
    t0 = time.monotonic()
    r = run_main(str(two_checkpoints[0]), str(hang), "--screenshot", str(out), tmp_path=tmp_path, timeout=60)
    assert out.exists() and time.monotonic() - t0 < 45, r.stderr
    if "did not finish" in r.stderr:      # (a reader that refuses the file at once ends the run as well)
        assert r.returncode == 2 and "the right side did not open" in r.stderr


# ---- point 20: the window's rough edges ----------------------------------------------------------------------------
def test_banner_figures_are_the_explanations_own(qtbot, make_window, raising_pair):
    import re
    pa, pb, _ = raising_pair
    w = make_window()
    open_both(qtbot, w, pa, pb)
    with qtbot.waitSignal(w.sig_simulation_done, timeout=30000) as blocker:
        w.act_simulate.trigger()
    report = blocker.args[0]
    text = w.banner.summary.text()
    loaded, total = map(int, re.search(r"(\d+) of (\d+) model keys", report.explanation).groups())
    b_total, b_loaded = map(int, re.search(r"of the (\d+) model keys: (\d+) are copied", text).groups())
    assert (b_loaded, b_total) == (loaded, total) == (len(report.loaded_keys), len(_net().state_dict()))
    # the parts add up: loaded + missing + shape mismatches (+ kept) = the model's keys
    assert b_loaded + len(report.missing_keys) + len(report.mismatched_keys) == b_total


def test_suggestion_rows_use_an_icon_not_a_glyph():
    from explorer.core.remap.rules import Remap, Suggestion
    from explorer.qt.simulate_view import SuggestionRow
    row = SuggestionRow(Suggestion(Remap("strip_prefix", old="module."), "strip the prefix 'module.'", "",
                                   {"missing": 0, "unexpected": 0, "mismatched": 0, "raises": False}))
    labels = [c for c in row.findChildren(type(row.icon)) if c is not row.icon]
    assert not row.icon.pixmap().isNull()
    assert all("💡" not in label.text() for label in labels)


def test_plots_fit_their_widgets_and_legends_stay_off_the_data(qtbot, make_window, tmp_path):
    from PySide6.QtCore import QRectF
    long = "running_mean_of_a_buffer_with_a_rather_long_name"
    torch.manual_seed(0)
    a = {f"bn.{long}": torch.randn(40), "w": torch.randn(30, 20)}
    b = {f"bn.{long}": torch.randn(40) + 0.123456, "w": a["w"] * 3.33}
    pa, pb = tmp_path / "a.pt", tmp_path / "b.pt"
    torch.save(a, pa)
    torch.save(b, pb)
    w = make_window()
    w.resize(1400, 860)
    open_both(qtbot, w, pa, pb)
    d = w.detail
    with qtbot.waitSignal(w.sig_detail_shown, timeout=20000, check_params_cb=lambda k: k == f"bn.{long}"):
        w.compare.select_path("w")
        w.compare.select_path(f"bn.{long}")
    qtbot.wait(50)
    plots = [d.hist, d.delta, d.channel]
    assert all(p.isVisible() for p in plots)
    for p in plots:
        item = p.getPlotItem()
        # what the plot draws (title, axes, labels, legend) fits in its widget: nothing is cut off on the right
        drawn = item.mapRectToScene(item.boundingRect())
        assert drawn.width() <= p.viewport().width() + 1, (p, drawn, p.viewport().width())
        assert p.geometry().right() <= d.plots.width()
    for p in (d.hist, d.channel):
        vb = p.getPlotItem().vb
        legend = p.getPlotItem().legend
        assert len(legend.items) == 2
        data_area = vb.mapRectToScene(vb.boundingRect())
        assert not legend.mapRectToScene(legend.boundingRect()).intersects(QRectF(data_area))


def test_shapes_are_shown_whole(qtbot, make_window, tmp_path):
    from PySide6.QtGui import QFontMetrics

    from explorer.qt.detail_pane import SHAPE_ROW
    from explorer.qt.tree_model import COLUMNS
    a = {"conv.weight": torch.zeros(512, 256, 3, 3), "head.weight": torch.zeros(1000, 512)}
    b = {"conv.weight": torch.ones(512, 256, 3, 3), "head.weight": torch.zeros(1000, 512, 1, 1)}
    pa, pb = tmp_path / "a.pt", tmp_path / "b.pt"
    torch.save(a, pa)
    torch.save(b, pb)
    w = make_window()
    open_both(qtbot, w, pa, pb)
    for view, side in ((w.compare.left, 0), (w.compare.right, 1)):
        col = next(i for i, c in enumerate(COLUMNS) if c.field == "shape" and c.side == side)
        need = QFontMetrics(view.font()).horizontalAdvance("(512, 256, 3, 3)")
        assert view.header().sectionSize(col) >= need + 4
    with qtbot.waitSignal(w.sig_detail_shown, timeout=30000, check_params_cb=lambda k: k == "head.weight"):
        w.compare.select_path("conv.weight")
        w.compare.select_path("head.weight")
    t = w.detail.table
    fm = QFontMetrics(t.font())
    for c, text in ((0, "(1000, 512)"), (1, "(1000, 512, 1, 1)")):
        item = t.item(SHAPE_ROW, c)
        assert item.text() == text and item.toolTip() == text
        one_line = fm.horizontalAdvance(text) <= t.columnWidth(c) - 8
        assert one_line or t.rowHeight(SHAPE_ROW) >= 2 * fm.height()    # whole: on one line, or wrapped


def test_values_only_pair_opens_on_the_first_changed_key(qtbot, make_window, tmp_path):
    torch.manual_seed(0)
    a = {"a.weight": torch.randn(3), "b.weight": torch.randn(3), "c.weight": torch.randn(3)}
    b = dict(a, **{"b.weight": a["b.weight"] + 1})
    pa, pb = tmp_path / "a.pt", tmp_path / "b.pt"
    torch.save(a, pa)
    torch.save(b, pb)
    w = make_window()
    open_both(qtbot, w, pa, pb)
    qtbot.waitUntil(lambda: w.detail.result is not None, timeout=20000)
    assert w.compare.selection_key() == "b.weight" and w.detail.key == "b.weight"


def test_small_tensors_need_no_compute_process(qtbot, make_window, two_checkpoints, monkeypatch):
    import explorer.session.jobs as jobs
    isolated = []

    def counting(*args, **kwargs):
        isolated.append(args[1])
        return real(*args, **kwargs)
    real = jobs.compute_detail_isolated
    monkeypatch.setattr(jobs, "compute_detail_isolated", counting)
    monkeypatch.setattr(jobs, "SMALL_DETAIL_ELEMENTS", 100)
    w = make_window()
    open_both(qtbot, w, *two_checkpoints)
    for key in ("fc1.bias", "fc1.weight", "bn.running_mean"):     # 16, 128 and 16 elements
        with qtbot.waitSignal(w.sig_detail_shown, timeout=30000, check_params_cb=lambda k, key=key: k == key):
            w.compare.select_path(key)
    assert "fc1.weight" in isolated and "fc1.bias" not in isolated and "bn.running_mean" not in isolated


def test_a_side_without_values_says_so_in_the_statistics(qtbot, make_window, tmp_path):
    """A checkpoint saved from the meta device has shapes and no values: its statistics column says "no values" (the
    line under the table says why), not "error"; the other side's figures are torch's."""
    from explorer.qt.detail_pane import STAT_ROWS
    meta = {"fc.weight": torch.empty(4, 3, device="meta")}
    real = {"fc.weight": torch.arange(12.0).reshape(4, 3)}
    pa, pb = tmp_path / "meta.pt", tmp_path / "real.pt"
    torch.save(meta, pa)
    torch.save(real, pb)
    w = make_window()
    open_both(qtbot, w, pa, pb)
    with qtbot.waitSignal(w.sig_detail_shown, timeout=30000, check_params_cb=lambda k: k == "fc.weight"):
        w.compare.select_path("fc.weight")
    qtbot.waitUntil(lambda: w.detail.result is not None and not w.detail.result.estimated, timeout=30000)
    rows = [attr for _, attr in STAT_ROWS]
    t = w.detail.table
    assert t.item(rows.index("count"), 0).text() == "no values"
    assert t.item(rows.index("count"), 1).text() == "12"
    assert float(t.item(rows.index("max"), 1).text()) == float(real["fc.weight"].max())
    line = w.detail.flags.text()
    assert "holds no data (meta)" in line and "NoDataError" not in line   # the reason, in the user's words
