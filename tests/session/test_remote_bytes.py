"""The bytes fetched per side (``session.remote_bytes``) and the question a busy child is never waited for
(``ComputeProcess.call_if_idle``), against the real local HTTP server."""
from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from explorer.core.remote import backends, mirror
from explorer.core.side import open_side
from explorer.session import remote_bytes as R
from explorer.session.compute_process import ComputeProcess

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "core"))
from remote_server import Server  # noqa: E402


@pytest.fixture
def srv(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(mirror, "BACKOFF", 0.01)
    monkeypatch.setattr(backends, "TIMEOUT", 5.0)
    monkeypatch.setattr(R, "_URLS", {})
    sd = {"a": torch.randn(100, 100), "b": torch.randn(50), "c": torch.zeros(3)}
    save_file({"a": sd["a"]}, str(tmp_path / "s1.safetensors"))
    save_file({"b": sd["b"], "c": sd["c"]}, str(tmp_path / "s2.safetensors"))
    index = {"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors", "c": "s2.safetensors"}}
    with Server() as server:
        server.served.files["/run/model.safetensors.index.json"] = json.dumps(index).encode()
        for name in ("s1.safetensors", "s2.safetensors"):
            server.served.files[f"/run/{name}"] = (tmp_path / name).read_bytes()
        yield server
    mirror.close_all()


def test_a_sharded_side_counts_its_index_and_every_shard(srv):
    index = srv.url("/run/model.safetensors.index.json")
    side = open_side(index)
    assert R.side_urls(side.label) == [index, srv.url("/run/s1.safetensors"), srv.url("/run/s2.safetensors")]
    assert R.side_urls("/local/model.pt") == [] and R.side_urls("demo:MyModel") == []
    side.read_key("a")
    got = R.fetched_here({0: R.side_urls(side.label)})
    assert got == {0: srv.served.sent} and srv.served.sent > 100 * 100 * 4
    # another side's URLs are not this one's
    assert R.fetched_here({1: [srv.url("/run/other.safetensors")]}) == {1: 0}


def _sleep(seconds, *, progress=None, should_stop=None):
    time.sleep(seconds)
    return seconds


def _answer(*, progress=None, should_stop=None):
    return 42


def test_call_if_idle_never_starts_a_child_nor_waits_for_a_busy_one():
    eng = ComputeProcess(nice=0)
    try:
        assert eng.call_if_idle(_answer) is None and eng._proc is None         # not running: not started for it
        assert eng.call(_answer) == 42
        assert eng.call_if_idle(_answer) == 42                                 # running and free: answered
        busy = threading.Thread(target=eng.call, args=(_sleep, 2.0))
        busy.start()
        time.sleep(0.3)
        t0 = time.monotonic()
        assert eng.call_if_idle(_answer) is None and time.monotonic() - t0 < 0.1   # busy: at once, no answer
        busy.join()
        assert eng.call_if_idle(_answer) == 42
    finally:
        eng.shutdown()
