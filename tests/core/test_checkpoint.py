"""core/checkpoint.py and core/entries.py: _metadata of pickled modules, metadata copies, concurrent first opens,
entries made one at a time, in runs and all at once alike."""
import threading
from collections import OrderedDict

import torch
import torch.nn as nn

from explorer.core.loaders import open_checkpoint


def test_pickled_module_state_dict_has_torchs_metadata(tmp_path):
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Sequential(nn.LayerNorm(4)))
    path = tmp_path / "whole.pt"
    torch.save(model, path)
    expected = torch.load(path, weights_only=False).state_dict()._metadata
    got = open_checkpoint(path).load_object(None)._metadata
    assert got == expected
    assert got["1"] == {"version": 2}  # BatchNorm's version decides how num_batches_tracked is handled


def test_each_load_object_gets_its_own_metadata(tmp_path):
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    path = tmp_path / "sd.pt"
    torch.save(model.state_dict(), path)
    ckpt = open_checkpoint(path)
    first = ckpt.load_object(None)
    nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)).to("meta").load_state_dict(first, assign=True)
    second = ckpt.load_object(None)
    assert second._metadata == model.state_dict()._metadata
    assert "assign_to_params_buffers" not in second._metadata["0"]


def test_empty_state_dict_resolves_to_root(tmp_path):
    path = tmp_path / "empty.pt"
    torch.save(OrderedDict(), path)
    ckpt = open_checkpoint(path)
    assert ckpt.resolve_entry(None) == ()
    assert ckpt.state_dict_infos() == OrderedDict()


def test_first_opens_from_two_threads(tmp_path):
    import subprocess
    import sys
    a, b = tmp_path / "a.safetensors", tmp_path / "b.pt"
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(2)}, str(a))
    torch.save({"w": torch.zeros(2)}, b)
    code = (
        "import sys, threading\n"
        "from explorer.core.loaders import open_checkpoint\n"
        "errs=[]\n"
        "def go(p):\n"
        "    try: open_checkpoint(p)\n"
        "    except Exception as e: errs.append(e)\n"
        f"ts=[threading.Thread(target=go, args=(p,)) for p in ({str(a)!r}, {str(b)!r})]\n"
        "[t.start() for t in ts]; [t.join() for t in ts]\n"
        "sys.exit(1 if errs else 0)\n")
    for _ in range(3):  # the race needs a fresh interpreter each time
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr


def test_segment_paths_span_is_the_slice():
    from explorer.core.entries import SegmentPaths
    paths = SegmentPaths()
    paths.extend(("model",), ["a", "b", "c"])
    paths.add(("opt", "0"), "x")
    paths.add(("opt", "0"), "y")
    paths.extend((), ["top"])
    every = [("model", "a"), ("model", "b"), ("model", "c"), ("opt", "0", "x"), ("opt", "0", "y"), ("top",)]
    assert list(paths) == every and len(paths) == 6
    for start in range(7):
        for stop in range(start, 8):
            assert paths[start:stop] == every[start:stop], (start, stop)
    assert paths[::2] == every[::2] and paths[-1] == ("top",)


def test_entries_one_at_a_time_in_runs_and_all_at_once_agree(tmp_path):
    torch.save({"model": OrderedDict([("w", nn.Parameter(torch.ones(2, 3))), ("b", torch.zeros(3))]),
                "meta": torch.empty(4, device="meta"), "opt": {"state": {0: {"exp_avg": torch.zeros(2)}}}},
               tmp_path / "mixed.pt")
    want = list(open_checkpoint(tmp_path / "mixed.pt").entries)
    ck = open_checkpoint(tmp_path / "mixed.pt")
    first = ck.entries[1]
    run = ck.entries.span(0, 3)
    assert run[1] is first and run == want[:3] and not ck.entries.complete
    assert list(ck.entries) == want and ck.entries.complete
    assert [e.device for e in want] == ["cpu", "cpu", "meta", "cpu"]
    assert want[0].kind == "parameter" and want[0].requires_grad and want[2].location is None
