"""A NaN or Inf that appears, goes or stays is never read as "equal": every figure of ``diff`` against torch's own
arithmetic on the same tensors (torch.isnan, torch.isinf, (b - a).abs().max() ...), on every path a tensor can take
(bit-identical fast path, one chunk, many chunks over two threads, a non-contiguous view, another dtype)."""
import json
import math

import pytest
import torch

from explorer.core import chunks as C
from explorer.core.diff import compare_tensors, diff_sides
from explorer.core.records import CHANGED, DTYPE_DIFFERS, IDENTICAL
from explorer.core.side import open_side

NAN, INF = float("nan"), float("inf")


def _strict_json(text: str):
    """JSON as the standard defines it: a bare NaN / Infinity token is an error."""
    def bad(token):
        raise AssertionError(f"not valid JSON: bare {token}")
    return json.loads(text, parse_constant=bad)


def torch_reference(a: torch.Tensor, b: torch.Tensor) -> dict:
    """What torch computes for the same figures (float64, complex as real/imaginary parts)."""
    if a.is_complex():
        a, b = torch.view_as_real(a), torch.view_as_real(b)
    a, b = a.reshape(-1).double(), b.reshape(-1).double()
    d = b - a
    nan_a, nan_b, inf_a, inf_b = a.isnan(), b.isnan(), a.isinf(), b.isinf()
    fin = a.isfinite() & b.isfinite()
    fa, fb = a[fin], b[fin]
    fd = fb - fa

    def figures(x, y, dx):
        if not dx.numel():
            return dict.fromkeys(("max_abs_diff", "mean_abs_diff", "rel_l2", "cosine"))
        na, nb = x.norm(), y.norm()
        return {"max_abs_diff": float(dx.abs().max()), "mean_abs_diff": float(dx.abs().mean()),
                "rel_l2": float(dx.norm() / na) if float(na) != 0 else (0.0 if float(dx.norm()) == 0 else None),
                "cosine": float(x @ y / (na * nb)) if float(na) != 0 and float(nb) != 0 else None}
    equal = (a == b) | (nan_a & nan_b)
    out = figures(a, b, d)
    out.update(differing=int((~equal).sum()), nonfinite=int((~fin & ~equal).sum()),
               nan_a=int(nan_a.sum()), nan_b=int(nan_b.sum()), inf_a=int(inf_a.sum()), inf_b=int(inf_b.sum()),
               finiteness_differs=int((a.isfinite() ^ b.isfinite()).sum()),
               nan_appeared=int((nan_b & ~nan_a).sum()), nan_gone=int((nan_a & ~nan_b).sum()),
               inf_appeared=int((inf_b & ~inf_a).sum()), inf_gone=int((inf_a & ~inf_b).sum()),
               finite=dict(positions=int(fin.sum()), **figures(fa, fb, fd)))
    return out


def same_figure(got, want, rel=1e-9) -> bool:
    if want is None or got is None:
        return got is None and want is None
    if math.isnan(want):
        return math.isnan(got)
    if math.isinf(want):
        return got == want
    return got == pytest.approx(want, rel=rel, abs=1e-12)


def assert_matches_torch(got, a, b, rel=1e-9, ref=None):
    ref = torch_reference(a, b) if ref is None else ref
    get = got.get if isinstance(got, dict) else (lambda k: getattr(got, k))
    for name in ("differing", "nonfinite", "nan_a", "nan_b", "inf_a", "inf_b", "finiteness_differs", "nan_appeared",
                 "nan_gone", "inf_appeared", "inf_gone"):
        assert get(name) == ref[name], (name, get(name), ref[name])
    for name in ("max_abs_diff", "mean_abs_diff", "rel_l2", "cosine"):
        assert same_figure(get(name), ref[name], rel), (name, get(name), ref[name])
        assert same_figure(get("finite")[name], ref["finite"][name], rel), ("finite", name)
    assert get("finite")["positions"] == ref["finite"]["positions"]
    return ref


def sprinkle(t: torch.Tensor, seed: int, n: int = 7) -> torch.Tensor:
    """A copy with NaN, +Inf and -Inf at a few random positions."""
    g = torch.Generator().manual_seed(seed)
    t = t.clone()
    flat = t.view(-1)
    idx = torch.randint(0, flat.numel(), (3 * n,), generator=g)
    flat[idx[:n]] = NAN
    flat[idx[n:2 * n]] = INF
    flat[idx[2 * n:]] = -INF
    return t


def test_cli_nan_and_inf_appearing_are_not_equal(tmp_path, cli):
    """The case of the issue: one element of w set to NaN and one of b to Inf, two .safetensors files."""
    from safetensors.torch import save_file
    g = torch.Generator().manual_seed(0)
    a = {"w": torch.randn(8, 6, generator=g), "b": torch.randn(6, generator=g), "c": torch.randn(3, generator=g)}
    b = {k: v.clone() for k, v in a.items()}
    b["w"][2, 3] = NAN
    b["b"][4] = INF
    save_file(a, tmp_path / "a.safetensors")
    save_file(b, tmp_path / "nan.safetensors")
    r = cli.sub("diff", tmp_path / "a.safetensors", tmp_path / "nan.safetensors", "--json")
    assert r.returncode == 1, r.stderr
    out = _strict_json(r.stdout)
    keys = {k["key"]: k for k in out["keys"]}
    assert sorted(out["nonfinite_changed"]) == ["b", "w"]
    assert keys["c"]["status"] == IDENTICAL and keys["c"]["nonfinite"]["a"] == {"nan": 0, "inf": 0}
    for name in ("w", "b"):
        k = keys[name]
        ta, tb = a[name], b[name]
        assert k["status"] == CHANGED
        assert k["nonfinite"]["a"] == {"nan": int(ta.isnan().sum()), "inf": int(ta.isinf().sum())}
        assert k["nonfinite"]["b"] == {"nan": int(tb.isnan().sum()), "inf": int(tb.isinf().sum())}
        assert k["nonfinite"]["finiteness_differs"] == int((ta.isfinite() ^ tb.isfinite()).sum()) == 1
        # no figure claims equality: each is what torch's arithmetic gives (as a string: JSON has no NaN)
        d = (tb.double() - ta.double())
        assert k["max_abs_diff"] == str(float(d.abs().max())).lower()
        assert k["cosine"] != 1.0 and k["rel_l2"] != 0
        assert k["finite"]["positions"] == int((ta.isfinite() & tb.isfinite()).sum())
        assert k["finite"]["max_abs_diff"] == 0.0
    assert keys["w"]["max_abs_diff"] == "nan" and keys["w"]["nonfinite"]["nan_appeared"] == 1
    assert keys["b"]["max_abs_diff"] == "inf" and keys["b"]["nonfinite"]["inf_appeared"] == 1
    r = cli("diff", tmp_path / "a.safetensors", tmp_path / "nan.safetensors")
    assert r.returncode == 1
    assert "w: ⚠ NaN appeared at 1 position" in r.stdout and "b: ⚠ Inf appeared at 1 position" in r.stdout
    # the other way round: the NaN went
    r = cli("diff", tmp_path / "nan.safetensors", tmp_path / "a.safetensors", "--json")
    keys = {k["key"]: k for k in _strict_json(r.stdout)["keys"]}
    assert keys["w"]["nonfinite"]["nan_gone"] == 1 and keys["b"]["nonfinite"]["inf_gone"] == 1
    # identical files: exit 0
    assert cli("diff", tmp_path / "a.safetensors", tmp_path / "a.safetensors").returncode == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.complex64])
def test_figures_and_counts_match_torch(dtype):
    g = torch.Generator().manual_seed(3)
    base = torch.randn(40, 50, generator=g, dtype=torch.complex64 if dtype.is_complex else torch.float32).to(dtype)
    a = sprinkle(base, 1)
    b = sprinkle(base + (0.01 * torch.randn(40, 50, generator=g)).to(dtype), 2)
    b.view(-1)[:5] = a.view(-1)[:5]          # a few positions equal, non-finite ones among them if any
    for x, y in ((a, b), (b, a), (a, base), (base, base + 1), (a, a.clone())):
        assert_matches_torch(compare_tensors(x, y), x, y)


def test_inf_facing_inf_and_nan_facing_nan():
    a = torch.tensor([INF, -INF, NAN, 1.0, INF])
    b = torch.tensor([INF, INF, NAN, 1.0, NAN])
    m = assert_matches_torch(compare_tensors(a, b), a, b)
    assert m["nonfinite"] == 2 and m["finiteness_differs"] == 0        # -Inf -> +Inf, Inf -> NaN
    m = compare_tensors(a, b)
    assert m["nan_appeared"] == 1 and m["inf_gone"] == 1 and m["differing"] == 2


def test_signed_zeros_beside_changed_values():
    """-0.0 facing +0.0 is counted whether or not other values changed (bits compared where values are equal)."""
    a = torch.tensor([0.0, 1.0, 2.0, -0.0, 5.0])
    b = torch.tensor([-0.0, 1.0, 3.0, 0.0, 5.0])
    m = assert_matches_torch(compare_tensors(a, b), a, b)
    m = compare_tensors(a, b)
    assert m["differing"] == 1 and m["signed_zeros_differ"] == 2 and m["nan_bits_differ"] == 0
    every = compare_tensors(a, a + 1)                  # every value differs: no bit is compared, none counted
    assert every["differing"] == 5 and every["signed_zeros_differ"] == 0


@pytest.mark.parametrize("dtype, nan_bits", [(torch.float32, (0x7FC00000, 0x7FC00001, -0x400000)),
                                             (torch.float16, (0x7E00, 0x7E01, -0x200)),
                                             (torch.bfloat16, (0x7FC0, 0x7FC1, -0x40))])
def test_nan_bits_are_precise(tmp_path, dtype, nan_bits):
    """The same NaN bits on both sides: identical (counted). Other NaN bits (payload, sign): changed, and said so
    -- no value differs, no NaN appeared."""
    from safetensors.torch import save_file
    idt = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}[dtype]
    q, payload, neg = nan_bits
    a = torch.tensor([1.0, 2.0, 0.0, 3.0], dtype=dtype)
    a.view(idt)[1] = q
    same = a.clone()
    other = a.clone()
    other.view(idt)[1] = payload
    signed = a.clone()
    signed.view(idt)[1] = neg
    signed[2] = -0.0
    for t in (a, same, other, signed):
        assert torch.isnan(t[1])
    save_file({"x": a, "y": a.clone(), "z": a.clone()}, tmp_path / "a.safetensors")
    save_file({"x": same, "y": other, "z": signed}, tmp_path / "b.safetensors")
    rep = diff_sides(open_side(tmp_path / "a.safetensors"), open_side(tmp_path / "b.safetensors"))
    x, y, z = rep.by_key["x"], rep.by_key["y"], rep.by_key["z"]
    assert x.status == IDENTICAL and (x.nan_a, x.nan_b, x.inf_a) == (1, 1, 0)
    assert not torch.equal(a, same)     # torch.equal would call it unequal: we say what the bits say
    assert y.status == CHANGED and y.differing == 0 and y.nan_bits_differ == 1 and y.nonfinite == 0
    assert y.signed_zeros_differ == 0 and not y.alert and "NaN facing a NaN with other bits" in y.explanation
    assert z.status == CHANGED and z.nan_bits_differ == 1 and z.signed_zeros_differ == 1 and z.differing == 0
    assert not rep.nonfinite_keys
    for kd, t in ((y, other), (z, signed)):
        assert_matches_torch(kd, a, t)


def test_large_tensor_every_path_gives_the_same_counts(tmp_path):
    """Several chunks over two threads (contiguous), the row path (a saved transposed view), the bit-identical fast
    path: the same counts as torch, and the same as each other."""
    from safetensors.torch import save_file
    n = C.PARALLEL_MIN + 3 * C.CHUNK // 2 + 11        # > PARALLEL_MIN: chunked, two threads
    g = torch.Generator().manual_seed(11)
    a = torch.randn(n, generator=g)
    a[[5, C.CHUNK + 1, 3 * C.CHUNK + 7]] = torch.tensor([NAN, INF, -INF])      # in different chunks
    b = a.clone()
    b[[17, 2 * C.CHUNK + 3, n - 1]] = torch.tensor([NAN, INF, NAN])           # the last chunk too
    b[5] = 0.5                                                                 # a NaN gone
    b[4 * C.CHUNK + 2] += 1e-3
    w = sprinkle(torch.randn(700, 500, generator=g), 5)
    w2 = w.clone()
    w2[600, 400] = NAN
    torch.save({"big": a, "w": w.t(), "same": a}, tmp_path / "a.pt")     # w: a non-contiguous view
    save_file({"big": b, "w": w2.t().contiguous(), "same": a.clone()}, tmp_path / "b.safetensors")
    rep = diff_sides(open_side(tmp_path / "a.pt"), open_side(tmp_path / "b.safetensors"))
    big, wk, same = rep.by_key["big"], rep.by_key["w"], rep.by_key["same"]
    ref = assert_matches_torch(big, a, b)
    assert (ref["nan_appeared"], ref["nan_gone"], ref["inf_appeared"]) == (2, 1, 1)
    assert big.alert == "NaN appeared, Inf appeared, NaN gone"
    assert big.signed_zeros_differ == 0 and big.nan_bits_differ == 0
    assert_matches_torch(compare_tensors(a, b), a, b, ref=ref)                # the same, straight from memory
    assert_matches_torch(wk, w.t(), w2.t())
    assert wk.status == CHANGED and wk.nan_appeared == 1
    # the fast path: identical, and it still counts what both sides hold
    assert same.status == IDENTICAL
    assert (same.nan_a, same.inf_a, same.nan_b, same.inf_b) == (int(a.isnan().sum()), int(a.isinf().sum())) * 2
    assert {k.key for k in rep.nonfinite_keys} == {"big", "w"}


def test_other_dtype_keeps_the_counts():
    a = torch.tensor([1.0, NAN, 3.0, 4.0], dtype=torch.float16)
    b = torch.tensor([1.0, NAN, INF, 4.5], dtype=torch.float32)
    m = assert_matches_torch(compare_tensors(a, b), a, b)
    assert m["inf_appeared"] == 1
    assert compare_tensors(a, b)["nan_bits_differ"] is None      # bits of two dtypes are not compared


def test_dtype_differs_with_nan_stays_dtype_differs(tmp_path):
    from safetensors.torch import save_file
    save_file({"x": torch.ones(4)}, tmp_path / "a.safetensors")
    save_file({"x": torch.tensor([1.0, NAN, 1.0, 1.0], dtype=torch.float16)}, tmp_path / "b.safetensors")
    kd = diff_sides(open_side(tmp_path / "a.safetensors"), open_side(tmp_path / "b.safetensors")).by_key["x"]
    assert kd.status == DTYPE_DIFFERS and kd.nan_appeared == 1 and kd.alert == "NaN appeared"
