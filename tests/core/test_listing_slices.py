"""The listing's remaining passes over every key (a state dict's key -> info dict, the key index of a first read, the
paths of a bulk-listed state dict, the surrogate check, the state-dict score) run a slice at a time, offering the
interpreter lock between slices: with slices of 7 they answer exactly what they answer in one slice, and values read
through the index are torch's own."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from explorer.core import gc_pause as G
from explorer.core.checkpoint import _score
from explorer.core.entries import SegmentPaths
from explorer.core.loaders import open_checkpoint
from explorer.core.safe_pickle.printable import unprintable


@pytest.fixture
def yields(monkeypatch):
    count = [0]
    monkeypatch.setattr(G, "let_others_run", lambda: count.__setitem__(0, count[0] + 1))
    return count


def _listing(path):
    ck = open_checkpoint(path)
    infos = ck.state_dict_infos()
    return ck, [(k, i.shape, i.dtype, i.nbytes, i.location) for k, i in infos.items()]


@pytest.mark.parametrize("fmt", ["pt", "safetensors", "nested"])
def test_sliced_listing_and_reads_equal_the_one_slice_ones(tmp_path, monkeypatch, yields, fmt):
    g = torch.Generator().manual_seed(0)
    sd = {f"blocks.{i // 5}.p{i % 5}": torch.randn(3, i % 4 + 1, generator=g) for i in range(60)}
    path = tmp_path / f"m.{fmt}"
    if fmt == "safetensors":
        save_file(sd, str(path))
    else:
        torch.save({"model": sd, "step": 3} if fmt == "nested" else sd, path)
    _, whole = _listing(path)
    monkeypatch.setattr(G, "SLICE", 7)
    yields[0] = 0
    ck, sliced = _listing(path)
    assert sliced == whole and sorted(k for k, *_ in sliced) == sorted(sd)
    assert yields[0] > 0
    for key in ("blocks.0.p0", "blocks.6.p3", "blocks.11.p4"):   # first, middle and last slice of the index
        assert torch.equal(ck.read_key(key), sd[key])


def test_segment_paths_span_and_score_over_slices(monkeypatch, yields):
    keys = [f"k{i}" for i in range(30)] + ["late.dotted"]
    paths = SegmentPaths()
    paths.extend(("sd",), keys[:20])
    paths.extend((), keys[20:])
    whole, scored = paths.span(0, len(keys)), _score(("sd",), {}, 31, keys)
    monkeypatch.setattr(G, "SLICE", 7)
    yields[0] = 0
    assert paths.span(0, len(keys)) == whole == list(paths)
    assert _score(("sd",), {}, 31, keys) == scored and "dotted module keys" in scored[1]   # the dot is in the last
    assert yields[0] > 0


def test_a_lone_surrogate_is_found_in_any_slice(monkeypatch):
    monkeypatch.setattr(G, "SLICE", 4)
    keys = [f"k{i}" for i in range(20)]
    assert not unprintable(keys)
    assert unprintable(keys[:17] + ["bad\udc80"] + keys[17:])
    assert unprintable(iter(["a", "b", "c", "d", "e", "\ud800"]))
    assert not unprintable({"a": 1, 2: 3, "b": 4}.keys())   # keys that are not all str: only the str ones count
