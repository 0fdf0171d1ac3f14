"""diff's numpy engine against torch's own figures: the maximum difference and the count of differing elements are
exact; the float64 sums behind mean |Δ|, relative L2 and cosine are numpy's (pairwise sum, OpenBLAS ddot), which add
in another order than torch's kernels: equal to torch's within 1e-12 (relative), not to the bit. Inputs may be torch
tensors (a model side) or numpy ``Values`` (a file), with the same answer."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from explorer.core.diff import compare_tensors, identical_scan
from explorer.core.np_values import tensor_array


def _reference(a: torch.Tensor, b: torch.Tensor) -> dict:
    """The figures as torch computes them over float64 tensors (one chunk: fewer than 2**20 elements), on one thread
    as diff runs them (MKL's ddot rounds differently on two)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _figures(a, b)
    finally:
        torch.set_num_threads(threads)


def _figures(a: torch.Tensor, b: torch.Tensor) -> dict:
    fa, fb = a.to(torch.float64), b.to(torch.float64)
    d = fb - fa
    dd, aa, bb, ab = (float(torch.dot(x, y)) for x, y in ((d, d), (fa, fa), (fb, fb), (fa, fb)))
    return {"max_abs_diff": float(d.abs().max()), "mean_abs_diff": float(d.abs().sum()) / d.numel(),
            "rel_l2": math.sqrt(dd) / math.sqrt(aa),
            "cosine": max(-1.0, min(1.0, ab / (math.sqrt(aa) * math.sqrt(bb)))),
            "differing": int(torch.count_nonzero(d))}


EXACT = ("max_abs_diff", "differing")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16, torch.int32,
                                   torch.float8_e4m3fn])
@pytest.mark.parametrize("n", [5, 216, 4097, 300_001, 2_500_001])
def test_figures_are_torchs(dtype, n):
    g = torch.Generator().manual_seed(n)
    a = (torch.randn(n, generator=g) * 100).to(dtype)
    b = (a.to(torch.float32) + torch.randn(n, generator=g)).to(dtype)
    want = _reference(a, b)
    answers = [compare_tensors(x, y) for x, y in ((a, b), (tensor_array(a), tensor_array(b)))]
    assert {k: answers[0][k] for k in want} == {k: answers[1][k] for k in want}   # a model's tensor = a file's
    got = answers[0]
    assert {k: got[k] for k in EXACT} == {k: want[k] for k in EXACT}
    for k in set(want) - set(EXACT):
        assert got[k] == pytest.approx(want[k], rel=1e-12, abs=0), k


@pytest.mark.parametrize("dtype", ["uint4", "bits8", "uint1"])
def test_sub_byte_dtypes_compare_as_bytes_and_refuse_numbers_as_torch_does(dtype):
    t = torch.zeros(4, dtype=torch.uint8).view(getattr(torch, dtype))
    assert identical_scan(t, t) == (True, 0, 0)
    with pytest.raises(NotImplementedError, match='"copy_" not implemented for'):
        compare_tensors(t, t)


def test_complex_facing_real_is_refused_with_torchs_message():
    a, b = torch.randn(3, dtype=torch.complex64), torch.randn(3)
    with pytest.raises(RuntimeError, match=r"tensor a \(6\) must match the size of tensor b \(3\)"):
        compare_tensors(a, b)
    with pytest.raises(RuntimeError, match=r"tensor a \(3\) must match the size of tensor b \(6\)"):
        compare_tensors(b, a)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.complex64,
                                   torch.float8_e5m2, torch.float8_e4m3fn])
def test_identical_scan_counts_nan_and_inf_as_torch_does(dtype):
    g = torch.Generator().manual_seed(1)
    t = (torch.randn(3 * 2 ** 20 + 5, generator=g) * 1e3).to(dtype)
    if not dtype.is_complex:
        t[::1001] = float("nan")
        if dtype != torch.float8_e4m3fn:   # (no Inf in e4m3fn)
            t[5::2003] = float("inf")
            t[7::3001] = float("-inf")
    else:
        t.real[::999] = float("nan")
        t.imag[3::1999] = float("inf")
    parts = torch.view_as_real(t) if dtype.is_complex else t.float() if dtype.itemsize == 1 else t
    want = (True, int(torch.isnan(parts).sum()), int(torch.isinf(parts).sum()))
    assert want[1] > 0
    assert identical_scan(t, t.clone()) == want
    assert identical_scan(tensor_array(t), tensor_array(t.clone())) == want


def test_complex32_and_complex64_compare_part_by_part():
    import warnings
    g = torch.Generator().manual_seed(2)
    a = torch.randn(1000, dtype=torch.complex64, generator=g)
    b = a.clone()
    b.real[::7] = float("nan")
    a.real[::7] = float("nan")
    b.imag[1::9] += 1
    b[3] = complex(-0.0, 0.0)
    a[3] = complex(0.0, 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pairs = [(a, b), (a.to(torch.complex32), b.to(torch.complex32))]
    for x, y in pairs:
        got = compare_tensors(x, y)
        ra, rb = torch.view_as_real(x.to(torch.complex64)), torch.view_as_real(y.to(torch.complex64))
        fin = torch.isfinite(ra) & torch.isfinite(rb)
        assert got["differing"] == int(((ra != rb) & ~(torch.isnan(ra) & torch.isnan(rb))).sum())
        assert got["signed_zeros_differ"] == 1 and got["nan_bits_differ"] == 0
        assert got["finite"]["positions"] == int(fin.sum())
