"""Statistics of one tensor against numpy/torch references, for every dtype a checkpoint can hold."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from explorer.core import chunks as C
from explorer.core import stats as S
from explorer.core import wide_stats as W
from explorer.core.health import FRESH_BN_VAR, health_scan
from explorer.core.stats import histogram, tensor_stats
from explorer.errors import Cancelled, ExplorerError

ROOT = Path(__file__).resolve().parents[2]
P = (1, 5, 25, 50, 75, 95, 99)


def as_f64(x: torch.Tensor) -> np.ndarray:
    """The values statistics are defined on, as float64 (complex: magnitude in the tensor's own precision)."""
    if x.is_complex():
        x = x.abs()
    if x.dtype == torch.bool:
        return x.numpy().astype(np.float64).reshape(-1)
    return x.to(torch.float64).numpy().reshape(-1)


def check(x: torch.Tensor, s, rtol=1e-6, exact_pct=True):
    v = as_f64(x)
    fin = v[np.isfinite(v)]
    assert s.numel == v.size
    assert s.count == fin.size
    assert s.nan == int(np.isnan(v).sum())
    assert s.posinf == int((v == np.inf).sum())
    assert s.neginf == int((v == -np.inf).sum())
    assert s.zero_count == int((v == 0).sum())
    if fin.size == 0:
        assert s.min is None and s.mean is None and all(p is None for p in s.percentiles.values())
        return
    assert s.min == fin.min() and s.max == fin.max()
    assert s.absmax == np.abs(fin).max()
    scale = max(np.abs(fin).max(), 1e-300)
    assert s.mean == pytest.approx(fin.mean(), rel=rtol, abs=rtol * scale)
    assert s.std == pytest.approx(fin.std(), rel=rtol, abs=rtol * scale * 1e-3)
    assert s.l2 == pytest.approx(np.sqrt((fin * fin).sum()), rel=rtol)
    ref = np.percentile(fin, P)
    got = np.array([s.percentiles[p] for p in P])
    if exact_pct:
        np.testing.assert_allclose(got, ref, rtol=1e-12, atol=0)
    # the histogram holds every finite value exactly once, NaN/Inf aside
    h = s.histogram
    assert h.counts.sum() + h.below + h.above == fin.size
    assert (h.nan, h.posinf, h.neginf) == (s.nan, s.posinf, s.neginf)
    if h.exact:
        ref_counts, _ = np.histogram(fin, bins=h.edges)
        np.testing.assert_array_equal(h.counts, ref_counts)


def make(dtype: torch.dtype, n: int, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.rand(n, generator=g) > 0.3
    if dtype in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64):
        info = torch.iinfo(dtype)
        lo, hi = max(info.min, -(2 ** 40)), min(info.max, 2 ** 40)
        return torch.randint(lo, hi, (n,), generator=g, dtype=torch.int64).to(dtype)
    if dtype in (torch.uint16, torch.uint32, torch.uint64):
        hi = {torch.uint16: 2 ** 16, torch.uint32: 2 ** 32, torch.uint64: 2 ** 50}[dtype]
        return torch.randint(0, hi, (n,), generator=g, dtype=torch.int64).to(dtype)
    if dtype.is_complex:
        return torch.randn(n, generator=g, dtype=dtype)
    return (torch.randn(n, generator=g) * 3).to(dtype)


DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2,
          torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64, torch.uint16, torch.uint32, torch.uint64,
          torch.bool, torch.complex64, torch.complex128]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
def test_every_dtype_matches_numpy(dtype):
    x = make(dtype, 20_011)
    s = tensor_stats(x)
    check(x, s)
    assert s.exact and not [n for n in s.notes if "estimated" in n]
    if dtype.is_complex:
        assert s.measured == "magnitude"
    if dtype in (torch.bool, torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64, torch.uint32):
        assert s.histogram.integer
        assert np.all(np.diff(s.histogram.edges) >= 1) and s.histogram.edges[0] % 1 == 0.5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.int32])
def test_large_tensor_two_threads_exact(dtype):
    """Several chunks and both threads: merge of moments, bucket refinement for exact percentiles."""
    n = 4 * C.CHUNK + 12_345
    x = make(dtype, n, seed=1)
    if dtype.is_floating_point:
        x[::100_003] = 0
    s = tensor_stats(x)
    check(x, s, rtol=2e-6)


def test_nan_inf_never_break_the_range():
    x = torch.randn(C.CHUNK * 4 + 10)
    x[5] = float("nan")
    x[C.CHUNK * 3 + 7] = float("inf")
    x[C.CHUNK * 2 + 1] = -float("inf")
    x[17] = float("nan")
    x[18] = 0.0
    x[19] = -0.0
    s = tensor_stats(x)
    check(x, s)
    assert s.flags == ["nan", "inf"]
    assert np.all(np.isfinite(s.histogram.edges))
    assert s.histogram.edges[0] == s.min and s.histogram.edges[-1] == s.max


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_nan_inf_small(dtype):
    x = torch.tensor([1.0, float("nan"), -2.0, float("inf"), -float("inf"), 0.0, 3.5], dtype=dtype)
    s = tensor_stats(x)
    check(x, s)
    assert (s.nan, s.posinf, s.neginf, s.count) == (1, 1, 1, 4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int64, torch.bool])
def test_all_nan_and_empty(dtype):
    empty = torch.empty(0, 3, dtype=dtype)
    s = tensor_stats(empty)
    assert s.numel == 0 and s.count == 0 and s.min is None and s.flags == []
    assert s.histogram.counts.sum() == 0 and len(s.histogram.edges) == 257
    json.dumps(s.to_json("k", (0, 3), "x"))
    if dtype.is_floating_point:
        x = torch.full((5,), float("nan"), dtype=dtype)
        s = tensor_stats(x)
        assert s.nan == 5 and s.count == 0 and s.flags == ["nan"]
        out = s.to_json("k", (5,), "x")
        assert out["min"] is None and out["percentiles"]["50"] is None
        json.dumps(out, allow_nan=False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.int64, torch.bool])
def test_zero_dim(dtype):
    x = torch.tensor(3, dtype=dtype) if dtype != torch.bool else torch.tensor(True)
    s = tensor_stats(x)
    check(x, s)
    assert s.numel == 1 and s.std == 0
    assert "constant" not in s.flags  # one value is not "constant"


def test_constant_tensor_gets_a_sensible_range():
    s = tensor_stats(torch.full((1000,), 2.5))
    assert s.flags == ["constant"]
    e = s.histogram.edges
    assert e[0] < 2.5 < e[-1] and e[-1] - e[0] == pytest.approx(1.0)
    assert s.histogram.counts.sum() == 1000
    big = tensor_stats(torch.full((10,), 1e30))
    assert big.histogram.edges[0] < 1e30 < big.histogram.edges[-1] and big.flags == ["constant", "extreme"]
    zeros = tensor_stats(torch.zeros(10, 10))
    assert zeros.flags == ["all_zeros"] and zeros.zeros == 1.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_huge_magnitude(dtype):
    big = {torch.float32: 3e38, torch.float64: 1e150, torch.float16: 6e4}[dtype]
    x = torch.tensor([big, -big, big / 2, 1.0, -big / 3] * 100, dtype=dtype)
    s = tensor_stats(x)
    check(x, s, rtol=1e-5)
    assert "extreme" in s.flags and not s.nan and not s.posinf
    assert np.all(np.isfinite(s.histogram.edges))


def test_variance_is_accurate_for_a_large_offset():
    """1 + 1e-3 * noise: naive sum-of-squares loses every digit of the variance in float32."""
    g = torch.Generator().manual_seed(3)
    x = 1 + 1e-3 * torch.randn(3 * C.CHUNK, generator=g)
    s = tensor_stats(x)
    ref = x.double().numpy()
    assert s.std == pytest.approx(ref.std(), rel=1e-5)
    assert s.mean == pytest.approx(ref.mean(), rel=1e-7)


def test_integer_bins_one_per_value():
    x = torch.tensor([0, 1, 1, 2, 5, 5, 5, -3], dtype=torch.int16)
    s = tensor_stats(x)
    h = s.histogram
    assert h.integer and h.edges[0] == -3.5 and h.edges[-1] == 5.5 and len(h.counts) == 9
    assert h.counts.tolist() == [1, 0, 0, 1, 2, 1, 0, 0, 3]
    wide = tensor_stats(torch.arange(1000, dtype=torch.int32), bins=10)
    assert wide.histogram.counts.tolist() == [100] * 10
    assert tensor_stats(torch.tensor([True, False, True])).histogram.counts.tolist() == [1, 2]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_histogram_with_explicit_range(dtype):
    x = torch.tensor([-5.0, -1.0, -0.5, 0.0, 0.25, 1.0, 1.0, 7.0, float("nan")], dtype=dtype)
    h = histogram(x, bins=4, range=(-1.0, 1.0))
    assert h.edges.tolist() == [-1.0, -0.5, 0.0, 0.5, 1.0]
    assert h.counts.tolist() == [1, 1, 2, 2]           # 1.0 == the top edge lands in the last bin
    assert (h.below, h.above, h.nan) == (1, 1, 1)
    with pytest.raises(ExplorerError):
        histogram(x, bins=4, range=(1.0, 1.0))
    with pytest.raises(ExplorerError):
        histogram(x, bins=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int32, torch.complex64, torch.float16])
def test_histogram_range_matches_numpy(dtype):
    x = make(dtype, 3 * C.CHUNK + 17, seed=9)
    v = as_f64(x)
    fin = v[np.isfinite(v)]
    lo, hi = np.percentile(fin, [10, 80])
    h = histogram(x, bins=50, range=(lo, hi))
    ref, _ = np.histogram(fin, bins=h.edges)
    np.testing.assert_array_equal(h.counts, ref)
    assert h.below == int((fin < lo).sum()) and h.above == int((fin > hi).sum())
    assert h.counts.sum() + h.below + h.above == fin.size


def test_values_on_bin_edges():
    """Values exactly on edges: float64 binning alone would put 0.0 of [-3, 3] / 256 bins one bin low."""
    x = torch.tensor([-3.0, 0.0, 0.0, 1.5, 3.0, -1.5] * 10_000 + [0.75] * 3)
    for h in (tensor_stats(x).histogram, histogram(x, 256, range=(-3.0, 3.0)),
              histogram(x.double(), 8, range=(-3.0, 3.0)), histogram(torch.arange(-50, 50, dtype=torch.int32), 7,
                                                                    range=(-10, 4))):
        v = x.double().numpy() if len(h.counts) != 7 else np.arange(-50, 50, dtype=np.float64)
        ref, _ = np.histogram(v, bins=h.edges)
        np.testing.assert_array_equal(h.counts, ref)


def test_estimated_mode_says_so_and_is_close():
    x = torch.randn(2 * C.CHUNK, generator=torch.Generator().manual_seed(5))
    s = tensor_stats(x, exact=False)
    assert not s.exact and s.notes and not s.histogram.exact
    ref = np.percentile(x.double().numpy(), P)
    got = np.array([s.percentiles[p] for p in P])
    np.testing.assert_allclose(got, ref, rtol=0.01, atol=1e-3)
    exact_h = tensor_stats(x).histogram
    assert s.histogram.counts.sum() == x.numel()
    assert np.abs(s.histogram.counts - exact_h.counts).max() <= 0.02 * exact_h.counts.max() + 2


def test_64bit_percentiles_beyond_gather_limit_are_estimated_and_say_so(monkeypatch):
    x = make(torch.float64, 50_000, seed=11)
    exact = tensor_stats(x)
    check(x, exact)                               # gathered: exact
    monkeypatch.setattr(W, "GATHER_LIMIT", 100)
    s = tensor_stats(x)
    assert not s.exact and any("interpolated" in n for n in s.notes)
    ref = np.percentile(x.numpy(), P)
    got = np.array([s.percentiles[p] for p in P])
    np.testing.assert_allclose(got, ref, rtol=0.07, atol=1e-3)   # within the bucket (1/16 octave for float64)
    assert s.histogram.exact and s.mean == exact.mean


@pytest.mark.parametrize("x", [torch.full((3_000_000,), 2.5), torch.zeros(3_000_000),
                               torch.tensor([1.0, -1.0, 0.0] * 1_000_000)], ids=["const", "zeros", "three"])
def test_estimated_mode_point_masses(x):
    e, s = tensor_stats(x, exact=False), tensor_stats(x)
    np.testing.assert_array_equal(e.histogram.counts, s.histogram.counts)
    assert e.zero_count == s.zero_count and e.flags == s.flags
    for p in P:   # inside its bucket: the zero bucket spans |x| < 2**-133
        assert e.percentiles[p] == pytest.approx(s.percentiles[p], abs=1e-39)


def test_estimated_mode_with_a_range_says_what_is_estimated():
    x = torch.randn(100_000, generator=torch.Generator().manual_seed(6))
    s = tensor_stats(x, exact=False, range=(-1.0, 1.0), bins=20)
    assert s.histogram.exact and not s.exact and any("percentiles" in n for n in s.notes)
    with pytest.raises(ExplorerError):
        tensor_stats(x, exact="yes")
    np.testing.assert_array_equal(s.histogram.counts, np.histogram(x.double().numpy(), bins=s.histogram.edges)[0])


def test_non_contiguous_views():
    base = torch.randn(300, 500, generator=torch.Generator().manual_seed(2))
    for view in (base.t(), base[:, ::3], base[::2, 1:400:7].t()):
        check(view, tensor_stats(view))


def test_cancel_and_progress():
    x = torch.randn(5 * C.CHUNK)
    seen = []
    tensor_stats(x, progress=lambda d, t: seen.append((d, t)))
    assert seen and seen[-1][0] == seen[-1][1] and all(d <= t for d, t in seen)
    assert all(b[0] >= a[0] for a, b in zip(seen, seen[1:]))
    calls = []

    def stop():
        calls.append(1)
        return len(calls) > 2
    with pytest.raises(Cancelled):
        tensor_stats(x, should_stop=stop)
    with pytest.raises(Cancelled):
        tensor_stats(torch.randn(100), should_stop=lambda: True)
    assert torch.get_num_threads() >= 1


def test_threads_setting_restored():
    before = torch.get_num_threads()
    tensor_stats(torch.randn(5 * C.CHUNK))
    assert torch.get_num_threads() == before


def test_unsupported_dtypes_raise_explorer_errors():
    with pytest.raises(ExplorerError):
        tensor_stats(torch.empty(3, device="meta"))
    with pytest.raises(ExplorerError):
        tensor_stats(torch.empty(4, dtype=torch.float4_e2m1fn_x2))
    with pytest.raises(ExplorerError):
        tensor_stats([1.0, 2.0])


def test_health_scan(tmp_path):
    sd = {"ok.weight": torch.randn(4, 4), "bad.nan": torch.tensor([1.0, float("nan")]),
          "bad.inf": torch.tensor([float("inf"), 1.0], dtype=torch.bfloat16), "z.bias": torch.zeros(3),
          "c.scale": torch.full((3,), 0.5), "big.weight": torch.tensor([1e5, -2.0]),
          "n.count": torch.tensor(10 ** 6), "h.half": torch.tensor([1.0, 2.0], dtype=torch.float16),
          "m.mask": torch.tensor([True, True])}
    path = tmp_path / "c.pt"
    torch.save({"model": sd, "epoch": 3}, path)
    from explorer.core.side import open_side
    seen = []
    flags = health_scan(open_side(path), progress=lambda d, t: seen.append((d, t)))
    assert list(flags) == list(sd)
    assert flags == {"ok.weight": [], "bad.nan": ["nan"], "bad.inf": ["inf"], "z.bias": ["all_zeros"],
                     "c.scale": ["constant"], "big.weight": ["extreme"], "n.count": [], "h.half": [],
                     "m.mask": ["constant"]}
    assert seen[-1][0] == seen[-1][1]
    for key, t in sd.items():  # the full statistics agree with the cheap scan
        assert tensor_stats(t).flags == flags[key], key


# ---- command line ----------------------------------------------------------------------------------------------------
@pytest.fixture
def files(tmp_path):
    from safetensors.torch import save_file
    g = torch.Generator().manual_seed(0)
    sd = {"enc.weight": torch.randn(64, 32, generator=g), "enc.bias": torch.randn(64, generator=g),
          "head.weight": torch.randn(10, 64, generator=g).to(torch.bfloat16), "step": torch.tensor(7)}
    torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "nested.pt")
    torch.save(sd, tmp_path / "flat.pt")
    save_file(sd, tmp_path / "flat.safetensors")
    shard = tmp_path / "sharded"
    shard.mkdir()
    save_file({k: sd[k] for k in ("enc.weight", "step")}, shard / "model-00001-of-00002.safetensors")
    save_file({k: sd[k] for k in ("enc.bias", "head.weight")}, shard / "model-00002-of-00002.safetensors")
    wm = {"enc.weight": "model-00001-of-00002.safetensors", "step": "model-00001-of-00002.safetensors",
          "enc.bias": "model-00002-of-00002.safetensors", "head.weight": "model-00002-of-00002.safetensors"}
    (shard / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wm}))
    return sd, tmp_path


SCHEMA = {"key", "shape", "dtype", "count", "min", "max", "mean", "std", "l2", "absmax", "zeros", "nan", "posinf",
          "neginf", "percentiles", "histogram"}


@pytest.mark.parametrize("where", ["nested.pt", "flat.pt", "flat.safetensors", "sharded"])
def test_cli_stats_json_every_format(files, where, cli):
    sd, tmp = files
    r = cli("stats", tmp / where, "head.weight", "--json", "--bins", "16")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert SCHEMA <= set(out)
    assert out["key"] == "head.weight" and out["shape"] == [10, 64] and out["dtype"] == "bfloat16"
    ref = sd["head.weight"].double().numpy().ravel()
    assert out["count"] == ref.size and out["min"] == ref.min() and out["max"] == ref.max()
    assert out["mean"] == pytest.approx(ref.mean(), rel=1e-12)
    assert list(out["percentiles"]) == ["1", "5", "25", "50", "75", "95", "99"]
    assert out["percentiles"]["50"] == pytest.approx(np.percentile(ref, 50), rel=1e-12)
    assert len(out["histogram"]["counts"]) == 16 and len(out["histogram"]["edges"]) == 17
    assert out["histogram"]["counts"] == np.histogram(ref, bins=out["histogram"]["edges"])[0].tolist()


def test_cli_stats_entry_path_and_text(files, cli):
    _, tmp = files
    r = cli.sub("stats", tmp / "nested.pt", "state_dict/enc.weight")   # once as a real process
    assert r.returncode == 0, r.stderr
    assert "percentiles" in r.stdout and "histogram" in r.stdout and "flags    none" in r.stdout
    r = cli("stats", tmp / "nested.pt", "state_dict/step", "--json")
    assert json.loads(r.stdout)["histogram"]["integer"] is True
    r = cli.sub("stats", tmp / "nested.pt", "enc.weigth")
    assert r.returncode == 2 and "enc.weight" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = cli("stats", tmp / "nested.pt", "enc.weight", "--bins", "0")
    assert r.returncode == 2 and "bins" in r.stderr
    r = cli("stats", "demo:MyBatchNormModel", "bn.running_var", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)   # a fresh BatchNorm's running_var of ones: said, not flagged
    assert out["flags"] == [] and out["info"] == [FRESH_BN_VAR] and out["min"] == out["max"] == 1.0


def _pass2_cases():
    g = torch.Generator().manual_seed(21)
    n = 2 * C.CHUNK + 777
    noisy = 1 + 1e-3 * torch.randn(n, generator=g)                   # every value in 1-2 buckets
    gauss = torch.randn(n, generator=g) * 0.02
    gauss[::997] = 0.0
    gauss[5] = -0.0
    gauss[C.CHUNK + 3] = float("nan")
    gauss[C.CHUNK + 4] = float("inf")
    edges = torch.tensor([-3.0, 0.0, 0.0, 1.5, 3.0, -1.5, 0.75] * 50_000)   # values exactly on bin edges
    few = torch.tensor([2.0 ** -140, -(2.0 ** -140), 0.0, 7.0, -7.0] * 30_000)  # subnormals in the zero buckets
    ints = torch.randint(-100_000, 100_000, (n,), generator=g, dtype=torch.int32)
    uniform = torch.rand(n, generator=g) + 1                          # every bucket straddles an edge
    return {"noisy": noisy, "gauss": gauss, "edges": edges, "few": few, "ints": ints, "uniform": uniform,
            "complex": torch.randn(300_000, generator=g, dtype=torch.complex64)}


@pytest.mark.parametrize("select_max", [0.0, 1.0])
@pytest.mark.parametrize("case", list(_pass2_cases()))
def test_pass2_selective_and_full_binning_agree_and_are_exact(monkeypatch, case, select_max):
    """Pass 2 either bins every value, or only the values of the buckets that straddle a bin edge (the others'
    bins follow from their bucket): both exact, same figures."""
    x = _pass2_cases()[case]
    monkeypatch.setattr(W, "SELECT_MAX", select_max)
    s = tensor_stats(x)
    check(x, s, rtol=2e-6)
    assert s.exact and s.histogram.exact
    monkeypatch.setattr(W, "SELECT_MAX", 1.0 - select_max)
    o = tensor_stats(x)
    np.testing.assert_array_equal(o.histogram.counts, s.histogram.counts)
    assert o.percentiles == s.percentiles and o.zero_count == s.zero_count
    assert histogram(x).counts.tolist() == s.histogram.counts.tolist()


def test_no_second_pass_when_every_bucket_sits_in_one_bin(monkeypatch):
    x = torch.tensor([-1000.0, 1.0, 2.0, 3.0] * 1_000_000)   # no bucket holds an edge of the 256 bins
    calls = []
    real = W.run_chunked
    monkeypatch.setattr(W, "run_chunked", lambda *a, **k: calls.append(1) or real(*a, **k))
    seen = []
    h = histogram(x, progress=lambda d, t: seen.append((d, t)))
    assert len(calls) == 1 and seen[-1][0] == seen[-1][1]
    ref, _ = np.histogram(x.numpy(), bins=h.edges)
    np.testing.assert_array_equal(h.counts, ref)
    assert h.exact


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int32, torch.bfloat16])
def test_same_figures_whatever_thread_took_which_chunk(monkeypatch, dtype):
    """Chunks go to whichever thread is free; moments are merged in chunk order, so every figure is identical
    to the one-thread result, to the last bit."""
    x = make(dtype, 6 * C.CHUNK + 4321, seed=3)
    two = tensor_stats(x)
    monkeypatch.setattr(S, "THREADS", 1)
    one = tensor_stats(x)
    assert two.to_json("k", x.shape, "d") == one.to_json("k", x.shape, "d")


# ---- in steps: pass 1's figures first, then the exact ones ---------------------------------------------------------
def _same(a, b) -> bool:
    return json.dumps(a.to_json("k", [1], "d"), sort_keys=True) == json.dumps(b.to_json("k", [1], "d"), sort_keys=True)


def count_pass1(monkeypatch) -> dict:
    """Counts the chunks pass 1 reads (``counter["pass1"]``), from now on."""
    counter = {"pass1": 0}
    real = W.WidePasses.pass1

    def counted(self, st, i):
        counter["pass1"] += 1
        return real(self, st, i)
    monkeypatch.setattr(W.WidePasses, "pass1", counted)
    return counter


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.complex64])
def test_steps_estimate_then_exact_with_no_work_done_twice(monkeypatch, dtype):
    g = torch.Generator().manual_seed(7)
    x = (torch.randn(3_000_000, generator=g) * 3).to(dtype)
    x[::1000] = 0
    passes = count_pass1(monkeypatch)
    seen = []
    steps = list(S.tensor_stats_steps(x, bins=64, progress=lambda d, t: seen.append((d, t))))
    n_chunks = passes["pass1"]
    passes["pass1"] = 0
    exact = tensor_stats(x, bins=64)
    assert passes["pass1"] == n_chunks, "the steps read each chunk once in pass 1, as tensor_stats does"
    assert len(steps) == 2
    est, final = steps
    assert final.exact and not est.exact and est.notes and "estimated" in " ".join(est.notes)
    assert _same(final, exact)
    check(x, final)
    # pass 1's own figures are already the exact ones
    for attr in ("numel", "count", "min", "max", "mean", "std", "l2", "absmax", "nan", "posinf", "neginf", "flags"):
        assert getattr(est, attr) == getattr(final, attr), attr
    assert int(est.histogram.counts.sum()) == final.count
    np.testing.assert_array_equal(est.histogram.edges, final.histogram.edges)
    span = final.max - final.min
    for p, v in final.percentiles.items():
        assert abs(est.percentiles[p] - v) <= 0.01 * max(abs(v), 1e-30) + 1e-3 * span, p
    assert seen[-1][0] == seen[-1][1] and all(b >= a for (a, _), (b, _) in zip(seen, seen[1:]))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.int8, torch.bool])
def test_steps_of_narrow_dtypes_are_exact_at_once(dtype):
    x = (torch.randn(3_000_000) * 4).to(dtype)
    first, final = S.tensor_stats_steps(x)
    assert first is final and final.exact
    check(x, final)


def test_steps_of_int32_estimate_then_exact():
    x = (torch.randn(3_000_000) * 4).to(torch.int32)
    first, final = S.tensor_stats_steps(x)
    assert not first.exact and final.exact
    check(x, final)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.int32, torch.float16])
def test_steps_take_a_shared_range_between_the_steps_at_no_extra_pass(monkeypatch, dtype):
    """The detail pane sends both tensors' common range after pass 1: the final histogram is on it, exactly as
    numpy bins the values, and no chunk is read a third time."""
    g = torch.Generator().manual_seed(9)
    x = (torch.randn(2_500_000, generator=g) * 3).to(dtype)
    lo, hi = float(x.min()) - 1.25, float(x.max()) + 0.5
    reads = {"n": 0}
    for name in ("pass1",):
        real = getattr(W.WidePasses, name)

        def counted(self, st, i, _real=real):
            reads["n"] += 1
            return _real(self, st, i)
        monkeypatch.setattr(W.WidePasses, name, counted)
    steps = S.tensor_stats_steps(x, bins=50)
    first = next(steps)
    final = steps.send((lo, hi))
    assert next(steps, None) is None
    assert final.exact and final.histogram.edges[0] == lo and final.histogram.edges[-1] == hi
    ref = np.histogram(as_f64(x), bins=np.linspace(lo, hi, 51))[0]
    np.testing.assert_array_equal(final.histogram.counts, ref)
    assert final.histogram.below == final.histogram.above == 0
    if dtype in (torch.float32, torch.float64, torch.int32):   # pass 1 once (pass 2 is the second read)
        assert reads["n"] == len(list(C.iter_chunks(x, S.STATS_CHUNK)))
    assert final.min == first.min and final.percentiles == tensor_stats(x).percentiles


def test_an_explicit_range_covering_the_data_bins_as_numpy_does():
    x = torch.randn(3_000_000, generator=torch.Generator().manual_seed(4))
    for lo, hi in ((float(x.min()), float(x.max())), (-10.0, 10.0), (float(x.min()), 7.0), (-0.5, 0.5)):
        h = tensor_stats(x, bins=64, range=(lo, hi)).histogram
        v = x.double().numpy()
        inside = v[(v >= lo) & (v <= hi)]
        np.testing.assert_array_equal(h.counts, np.histogram(inside, bins=np.linspace(lo, hi, 65))[0])
        assert h.below == int((v < lo).sum()) and h.above == int((v > hi).sum())


def test_steps_of_empty_and_all_nan_tensors():
    for x in (torch.empty(0), torch.full((10,), float("nan"))):
        first, final = S.tensor_stats_steps(x)
        assert final.exact and final.count == 0


# ---- numpy engine: torch tensors, numpy arrays and raw bits measured alike ----------------------------------------
NARROW_TORCH = [torch.bool, torch.int8, torch.uint8, torch.int16, torch.uint16, torch.float16, torch.bfloat16,
                torch.float8_e4m3fn, torch.float8_e5m2, torch.float8_e4m3fnuz, torch.float8_e5m2fnuz,
                torch.float8_e8m0fnu]


@pytest.mark.parametrize("dtype", NARROW_TORCH, ids=lambda d: str(d).replace("torch.", ""))
def test_value_table_is_torchs_conversion(dtype):
    """The value of every bit pattern of a narrow dtype, computed without torch, is what torch converts it to."""
    from explorer.core.dtype_plan import value_table
    from explorer.core.records import dtype_name
    bits = 8 if torch.empty((), dtype=dtype).element_size() == 1 else 16
    raw = torch.arange(1 << bits, dtype=torch.int32).to(torch.uint8 if bits == 8 else torch.int16)
    ref = raw.view(dtype).to(torch.float64).numpy() if dtype != torch.bool else (raw != 0).double().numpy()
    got = value_table(dtype_name(dtype))
    assert np.array_equal(np.isnan(got), np.isnan(ref))
    np.testing.assert_array_equal(got[~np.isnan(got)], ref[~np.isnan(ref)])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float8_e5m2, torch.int64, torch.complex64,
                                   torch.complex128, torch.bool], ids=str)
def test_numpy_values_and_torch_tensors_give_the_same_figures(dtype):
    """A checkpoint's values come as numpy (raw bits for bfloat16/float8), a model's as a torch tensor: one engine,
    the same figures to the last bit."""
    from explorer.core.np_values import tensor_array
    x = make(dtype, 3 * C.CHUNK + 11, seed=13)
    a = tensor_array(x)
    assert isinstance(a.array, np.ndarray)
    s_t, s_np = tensor_stats(x, bins=33), tensor_stats(a, bins=33)
    assert s_t.to_json("k", [1], "d") == s_np.to_json("k", [1], "d")
    check(x, s_np, rtol=2e-6)
    if dtype in (torch.float32, torch.int64):   # a plain numpy array is measured as its own dtype
        assert tensor_stats(x.numpy(), bins=33).to_json("k", [1], "d") == s_t.to_json("k", [1], "d")


def test_text_of_a_tensor_with_nothing_finite_draws_no_made_up_bins(tmp_path, cli):
    """``stats`` of an all-NaN or an empty tensor: one line says there is nothing to bin, instead of 256 empty bins
    over an invented [0, 1) range; a tensor with a finite value still gets its bins."""
    import torch
    torch.save({"nan": torch.full((4,), float("nan")), "empty": torch.zeros(0),
                "mixed": torch.tensor([float("nan"), 2.0, 3.0])}, tmp_path / "nf.pt")
    for key in ("nan", "empty"):
        r = cli("stats", tmp_path / "nf.pt", key)
        assert r.returncode == 0, r.stderr
        assert "no finite value to bin" in r.stdout and "\n    [" not in r.stdout, r.stdout
    r = cli("stats", tmp_path / "nf.pt", "mixed")
    assert r.returncode == 0 and "\n    [" in r.stdout and "no finite value" not in r.stdout
