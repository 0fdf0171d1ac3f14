"""The detail pane's worker half (Qt-free): a first look for large float tensors, no value read twice."""
import numpy as np
import torch

from explorer.core import stats as S
from explorer.session import detail_compute as D
from tests.core.test_stats import count_pass1


def _infos(*ts):
    return [None if t is None else (tuple(t.shape), str(t.dtype).replace("torch.", "")) for t in ts]


def test_first_look_only_for_large_float_tensors(monkeypatch):
    monkeypatch.setattr(D, "FIRST_LOOK_MIN", 300_000)
    g = torch.Generator().manual_seed(1)
    a = torch.randn(200_000, generator=g)
    b = a * 1.5
    looks = []
    out = D.detail_from_tensors("w", 64, [a, b], _infos(a, b), ["", ""], partial=looks.append)
    assert len(looks) == 1
    first = looks[0]
    assert first.estimated and not out.estimated
    assert not first.left.stats.exact and not first.right.stats.exact
    assert out.left.stats.exact and out.right.stats.exact
    # shared edges in both; the first look's counts are an estimate of the same bins
    np.testing.assert_array_equal(first.edges, out.edges)
    assert first.left.counts.sum() == out.left.counts.sum() == a.numel()
    assert np.abs(first.right.counts - out.right.counts).max() <= 0.05 * out.right.counts.max() + 2
    np.testing.assert_array_equal(out.right.counts, np.histogram(b.double().numpy(), bins=out.edges)[0])
    assert first.delta_counts is None and out.delta_counts is not None
    # small, or narrow dtypes (exact in one pass): no first look
    looks.clear()
    D.detail_from_tensors("w", 64, [a[:1000], None], _infos(a[:1000], None), ["", ""], partial=looks.append)
    h = a.to(torch.bfloat16)
    D.detail_from_tensors("w", 64, [h, h], _infos(h, h), ["", ""], partial=looks.append)
    assert looks == []


def test_first_look_reads_each_value_once_in_pass_one(monkeypatch):
    monkeypatch.setattr(D, "FIRST_LOOK_MIN", 1)
    calls = count_pass1(monkeypatch)
    a = torch.randn(3 * S.STATS_CHUNK + 5)
    D.detail_from_tensors("w", 32, [a, None], _infos(a, None), ["", ""], partial=lambda r: None)
    with_look = calls["pass1"]
    calls["pass1"] = 0
    D.detail_from_tensors("w", 32, [a, None], _infos(a, None), ["", ""])
    assert with_look == calls["pass1"] == 4


def test_one_failing_side_still_shows_the_other():
    a = torch.randn(1000)
    bad = torch.empty(10, device="meta")
    out = D.detail_from_tensors("w", 16, [a, bad], _infos(a, bad), ["", ""], partial=lambda r: None)
    assert out.left.stats is not None and out.right.stats is None and "meta" in out.right.error


def test_ordinals_in_the_delta_note():
    assert [D._ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 23, 101, 111)] == \
        ["1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "23rd", "101st", "111th"]


def test_two_sides_share_one_range_with_no_extra_pass(monkeypatch):
    """Both sides' final histograms are on their common range, made in their own second pass: the only histogram
    pass afterwards is the delta's (right - left)."""
    called = []
    real = D.histogram

    def counted(t, *args, **kwargs):
        called.append(t)
        return real(t, *args, **kwargs)
    monkeypatch.setattr(D, "histogram", counted)
    g = torch.Generator().manual_seed(2)
    a = torch.randn(300_000, generator=g)
    b = a * 2 + 1
    out = D.detail_from_tensors("w", 40, [a, b], _infos(a, b), ["", ""])
    lo, hi = min(float(a.min()), float(b.min())), max(float(a.max()), float(b.max()))
    assert out.edges[0] == lo and out.edges[-1] == hi
    for t, sv in ((a, out.left), (b, out.right)):
        np.testing.assert_array_equal(sv.counts, np.histogram(t.double().numpy(), bins=out.edges)[0])
        assert sv.stats.exact
    assert len(called) == 1 and torch.equal(called[0], (b - a)[torch.isfinite(b - a)])
