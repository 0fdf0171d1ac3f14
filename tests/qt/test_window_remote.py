"""The window on checkpoints by URL, against a real HTTP server on 127.0.0.1 (tests/core/remote_server.py, which
also answers the Hub's routes for hf://): File → Open URL…, URLs on the command line, dropped URLs, recent URLs, a
server's refusals shown inline, and the bytes transferred in the status bar (equal to what the server sent)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
from PySide6.QtGui import QDragEnterEvent, QDropEvent, QImage
from safetensors.torch import save_file

from explorer.core.demo_models import MyBatchNormModel
from explorer.core.remote import backends, mirror
from explorer.session import compare as C
from explorer.session import compute_process as cp
from explorer.session.remote_bytes import Tally, size_text, status_text

from .conftest import open_both

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "core"))
from remote_server import Server  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def _state_dict(seed: int) -> dict:
    torch.manual_seed(seed)
    sd = dict(MyBatchNormModel().state_dict())
    sd["extra.big"] = torch.randn(1000, 300)          # 1.2 MB: statistics in the compute process
    return sd


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    """A server holding a.safetensors and a.pt (also as the Hub repository hf://org/repo); the local copies and b.pt
    in ``srv.local``. The parse and compute processes are started anew here, so they read the same cache and Hub
    endpoint as the window (a child sees the environment it was started with)."""
    tmp = tmp_path_factory.mktemp("remote_window")
    local = tmp / "local"
    local.mkdir()
    sd = _state_dict(0)
    save_file(sd, str(local / "a.safetensors"))
    torch.save(sd, local / "a.pt")
    torch.save({k: v + 1 if v.is_floating_point() else v for k, v in sd.items()}, local / "b.pt")
    with pytest.MonkeyPatch.context() as mp, Server() as server:
        mp.setenv("XDG_CACHE_HOME", str(tmp / "cache"))
        mp.setenv("HF_ENDPOINT", server.base)
        mp.setenv("HF_TOKEN", "hf_test_token")
        mp.setattr(mirror, "BACKOFF", 0.01)
        mp.setattr(backends, "TIMEOUT", 5.0)
        parse, compute = cp.ComputeProcess(nice=0), cp.ComputeProcess()
        mp.setattr(cp, "_PARSE_ENGINE", parse)
        mp.setattr(cp, "_ENGINE", compute)
        for name in ("a.safetensors", "a.pt"):
            data = (local / name).read_bytes()
            server.served.files[f"/{name}"] = data
            server.served.files[f"/org/repo/{name}"] = data
        server.served.lfs.add("/org/repo/a.safetensors")
        server.local = local
        server.fresh_count = 0
        try:
            yield server
        finally:
            parse.shutdown()
            compute.shutdown()
            mirror.close_all()


def fresh_url(srv, name: str) -> str:
    """A URL of ``name`` never fetched before (a new path: a new mirror, nothing of it in the cache)."""
    srv.fresh_count += 1
    path = f"/fresh{srv.fresh_count}/{name}"
    srv.served.files[path] = srv.served.files[f"/{name}"]
    return srv.url(path)


def row_table(comp: C.Comparison, side: int) -> dict:
    return {k: (tuple(r.info(side).shape), str(r.info(side).dtype)) for k, r in comp.rows.items()
            if r.info(side) is not None}


# ---- opening -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["/a.safetensors", "/a.pt", "hf://org/repo/a.safetensors"])
def test_a_url_gives_the_rows_of_the_local_file_and_the_same_values(qtbot, make_window, srv, where):
    url = where if where.startswith("hf://") else srv.url(where)
    local = srv.local / ("a.pt" if where.endswith(".pt") else "a.safetensors")
    w = make_window()
    open_both(qtbot, w, url, local)
    comp = w.comparison
    assert set(comp.rows) == set(_state_dict(0))                   # the keys torch saved
    assert row_table(comp, C.LEFT) == row_table(comp, C.RIGHT)     # shapes and dtypes as the local copy's
    qtbot.waitUntil(lambda: all(comp.status(r) == C.IDENTICAL for r in comp.rows.values()), timeout=30000)
    assert w.sides[0].text == url and w.sides[0].label.endswith(local.name)
    assert url in w.compare.left_header.path.toolTip()


def test_open_url_dialog_opens_the_url_in_the_pane_chosen(qtbot, make_window, srv):
    w = make_window()
    w.open_path(0, str(srv.local / "b.pt"))
    qtbot.waitUntil(lambda: w.sides[0] is not None and w.is_idle(), timeout=30000)
    w.act_open_url.trigger()
    dialog = w.url_dialog
    assert dialog.isVisible() and dialog.side() == 1          # the left pane is taken: the right one is offered
    dialog.edit.setText("model.safetensors")                  # not a URL: said in the dialog, which stays open
    dialog.accept()
    assert dialog.isVisible() and "not a URL" in dialog.error.text() and w.sides[1] is None
    url = srv.url("/a.safetensors")
    dialog.edit.setText(f"  {url} ")
    with qtbot.waitSignal(w.sig_side_loaded, timeout=30000) as blocker:
        dialog.accept()
        assert not dialog.isVisible()
    assert blocker.args == [1] and w.sides[1].text == url


@pytest.mark.parametrize("how", ["404", "403", "no range"])
def test_a_refused_url_keeps_the_pane_as_it_was_and_names_the_url(qtbot, make_window, srv, how, monkeypatch):
    from explorer.qt import dialogs
    asked = []      # a server without ranges: the window offers to download the file; here the user says no
    monkeypatch.setattr(dialogs, "confirm_download", lambda parent, url, size: asked.append((url, size)) and False)
    w = make_window()
    w.open_path(0, str(srv.local / "b.pt"))
    qtbot.waitUntil(lambda: w.sides[0] is not None and w.is_idle(), timeout=30000)
    before = w.sides[0]
    if how == "404":
        url, says = srv.url("/gone.safetensors"), "not found (HTTP 404)"
    elif how == "403":
        url, says = fresh_url(srv, "a.safetensors"), "access denied (HTTP 403)"
        srv.served.status[url[len(srv.base):]] = 403
    else:
        url, says = fresh_url(srv, "a.safetensors"), "does not support range requests"
        srv.served.ranges = False
    try:
        with qtbot.waitSignal(w.sig_load_failed, timeout=30000) as blocker:
            w.open_path(0, url)
    finally:
        srv.served.ranges = True
    side, message = blocker.args
    assert side == 0 and message.startswith(f"{url}: ") and says in message and "\n" not in message
    assert w.sides[0] is before and w.compare.left_header.path.toolTip() == str(srv.local / "b.pt")
    assert w.compare.left_header.error.text() == f"⚠ {message}"
    assert w.statusBar().currentMessage() == f"Could not open {message}"      # the URL said once
    assert w.unmet_requests() == [f"the left side did not open ({message})"]
    if how == "no range":
        assert asked == [(url, len(srv.served.files[url[len(srv.base):]]))]
    else:
        assert asked == []


def test_a_server_without_ranges_the_user_agrees_to_download_from(qtbot, make_window, srv, monkeypatch):
    """The offer says the size; on yes, the file is fetched whole once (in the parse process, into the shared cache)
    and the pane shows the rows and values of the local copy."""
    from explorer.qt import dialogs
    asked = []
    monkeypatch.setattr(dialogs, "confirm_download", lambda parent, url, size: asked.append((url, size)) or True)
    url = fresh_url(srv, "a.safetensors")
    srv.served.ranges = False
    try:
        w = make_window()
        open_both(qtbot, w, url, srv.local / "a.safetensors")
        comp = w.comparison
        qtbot.waitUntil(lambda: all(comp.status(r) == C.IDENTICAL for r in comp.rows.values()), timeout=60000)
    finally:
        srv.served.ranges = True
    assert asked == [(url, len(srv.served.files[url[len(srv.base):]]))]
    assert w.sides[0].text == url and row_table(comp, C.LEFT) == row_table(comp, C.RIGHT)


# ---- drops ---------------------------------------------------------------------------------------------------------

def _drop(widget, mime, pos) -> bool:
    enter = QDragEnterEvent(pos, Qt.CopyAction, mime, Qt.LeftButton, Qt.NoModifier)
    enter.setAccepted(False)
    widget.dragEnterEvent(enter)
    if not enter.isAccepted():
        return False
    event = QDropEvent(QPointF(pos), Qt.CopyAction, mime, Qt.LeftButton, Qt.NoModifier)
    event.setAccepted(False)
    widget.dropEvent(event)
    return event.isAccepted()


def test_a_dropped_url_opens_like_a_dropped_file(qtbot, make_window, srv):
    w = make_window()
    url = srv.url("/a.safetensors")
    mime = QMimeData()
    mime.setUrls([QUrl(url)])                                   # text/uri-list, as a browser's link drag gives
    assert mime.hasFormat("text/uri-list")
    cv = w.compare
    right = cv.panels[2]
    with qtbot.waitSignal(w.sig_side_loaded, timeout=30000) as blocker:
        assert _drop(cv, mime, right.mapTo(cv, right.rect().center()))
    assert blocker.args == [1] and w.sides[1].text == url and w.sides[0] is None
    text = QMimeData()
    text.setText(f"{srv.url('/a.pt')}\n")                       # plain text holding a URL, dropped on the window
    with qtbot.waitSignal(w.sig_side_loaded, timeout=30000) as blocker:
        assert _drop(w, text, w.rect().center())
    assert blocker.args == [0] and w.sides[0].text == srv.url("/a.pt")
    qtbot.waitUntil(lambda: w.comparison is not None and w.comparison.left is not None
                    and w.comparison.right is not None, timeout=30000)
    words = QMimeData()
    words.setText("not a url, just words")
    assert not _drop(cv, words, cv.rect().center())


# ---- recent files --------------------------------------------------------------------------------------------------

def test_recent_files_keep_a_url_and_reopen_it(qtbot, make_window, srv):
    url = srv.url("/a.safetensors")
    w = make_window("recent.ini")
    open_both(qtbot, w, url, srv.local / "b.pt")
    assert set(w.recent_files()[:2]) == {url, str(srv.local / "b.pt")}
    w.close()
    w2 = make_window("recent.ini")                               # the next session, same settings file
    assert url in w2.recent_files()
    w2.fill_recent_menu()
    menus = {a.text(): a.menu() for a in w2.recent_menu.actions() if a.menu() is not None}
    assert url in menus                                         # listed as written, not dropped for not being a file
    open_right = next(a for a in menus[url].actions() if a.text() == "Open right")
    with qtbot.waitSignal(w2.sig_side_loaded, timeout=30000) as blocker:
        open_right.trigger()
    assert blocker.args == [1] and w2.sides[1].text == url
    w2.act_open_url.trigger()                                   # the dialog offers the recent URL
    assert w2.url_dialog.edit.text() == url
    w2.url_dialog.reject()
    signed = "https://example.org/m.safetensors?X-Amz-Expires=60&X-Amz-Signature=ab"
    w2.history.add_file(signed)
    w2.fill_recent_menu()
    titles = [a.text() for a in w2.recent_menu.actions()]
    assert titles[0] == signed.replace("&", "&&") and url in titles      # shown whole, never a mnemonic


# ---- bytes transferred ---------------------------------------------------------------------------------------------

def test_the_status_bar_shows_the_bytes_transferred_for_a_remote_side_only(qtbot, make_window, srv):
    w = make_window()
    w.open_path(0, str(srv.local / "b.pt"))
    qtbot.waitUntil(lambda: w.sides[0] is not None and w.is_idle(), timeout=30000)
    assert w.transfer_text() == "" and not w.transfer_label.isVisible()      # a local side: nothing said
    url = fresh_url(srv, "a.safetensors")
    sent = srv.served.sent
    w.open_path(0, url)                                         # one side: no diff, no value read
    qtbot.waitUntil(lambda: w.is_idle() and url in w.transfer_text(), timeout=30000)
    header = w.transfers.total(0)
    assert 0 < header == srv.served.sent - sent <= 2 * mirror.BLOCK < len(srv.served.files["/a.safetensors"])
    assert w.transfer_text() == f"{url} — {size_text(header)} transferred" and w.transfer_label.isVisible()
    # the statistics of a large tensor read its range in the compute process; the figure follows
    with qtbot.waitSignal(w.sig_detail_shown, timeout=60000):
        w.compare.select_path("extra.big")
    qtbot.waitUntil(lambda: w.is_idle() and w.transfers.total(0) > header, timeout=30000)
    moved = w.transfers.total(0)
    assert moved == srv.served.sent - sent and 1_200_000 <= moved < 1_200_000 + 3 * mirror.BLOCK
    # a small one's in the window's own process
    with qtbot.waitSignal(w.sig_detail_shown, timeout=60000):
        w.compare.select_path("linear.weight")
    qtbot.waitUntil(lambda: w.is_idle() and w.transfers.total(0) == srv.served.sent - sent, timeout=30000)
    # a local file on the other side: said of the remote side only
    w.open_path(1, str(srv.local / "b.pt"))
    qtbot.waitUntil(lambda: w.sides[1] is not None and w.comparison.right is not None and w.is_idle(),
                    timeout=30000)
    total = w.transfers.total(0)
    assert total == srv.served.sent - sent
    assert w.transfer_text() == f"{url} — {size_text(total)} transferred"


def test_tally_keeps_a_restarted_processs_count():
    t = Tally()
    t.update({"window": {0: 10}, "compute": {0: 500}})
    t.update({"compute": {0: 700}})
    assert t.total(0) == 710
    t.update({"compute": {0: 30}})        # the compute process restarted: its earlier 700 stay counted
    assert t.total(0) == 740
    t.reset(0)
    assert t.total(0) == 0
    assert size_text(970_123) == "0.97 MB" and size_text(512) == "512 bytes"
    assert status_text({0: "hf://org/repo/model.safetensors", 1: "/tmp/b.pt"}, {0: 970_123}) == \
        "hf://org/repo/model.safetensors — 0.97 MB transferred"


# ---- the command line ----------------------------------------------------------------------------------------------

def test_screenshot_of_a_url_and_a_local_file(srv, tmp_path):
    url = srv.url("/a.safetensors")
    out = tmp_path / "u.png"
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", XDG_CONFIG_HOME=str(tmp_path / "config"))
    r = subprocess.run([sys.executable, "main.py", url, str(srv.local / "a.safetensors"), "--select", "extra.big",
                        "--screenshot", str(out), "--settings", str(tmp_path / "s.ini")], cwd=ROOT,
                       capture_output=True, text=True, timeout=180, env=env)
    assert r.returncode == 0, r.stderr
    assert QImage(str(out)).width() == 1400


def test_a_url_is_read_first_in_the_parse_process_within_its_time_limit(qtbot, make_window, srv):
    """A server that answers too slowly is a parse past the limit: stopped and said, the window keeps its side."""
    w = make_window()
    w.open_path(0, str(srv.local / "b.pt"))
    qtbot.waitUntil(lambda: w.sides[0] is not None and w.is_idle(), timeout=30000)
    w.parse_timeout_s = 1.0
    url = fresh_url(srv, "a.pt")
    srv.served.latency = 0.6          # a HEAD and a first range: past the limit
    try:
        with qtbot.waitSignal(w.sig_load_failed, timeout=30000) as blocker:
            w.open_path(0, url)
    finally:
        srv.served.latency = 0.0
    side, message = blocker.args
    assert side == 0 and message.startswith(f"{url}: reading it did not finish within 1 s and was stopped")
    assert w.sides[0].text == str(srv.local / "b.pt")
