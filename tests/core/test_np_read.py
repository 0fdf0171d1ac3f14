"""The numpy read path (``read_key_array``) gives exactly the values torch's read path (``read_key``) gives: every
dtype, strided and empty tensors, scalars; torch zip (new and legacy), safetensors; bfloat16, float8 and complex32
as raw bits widened exactly as torch converts them (NaN bits included)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from explorer.core.np_values import FLOAT8, float8_table, tensor_array, widen
from explorer.core.side import open_side


def _tensors() -> dict:
    g = torch.Generator().manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # complex32 is "experimental"
        c32 = torch.randn(3, dtype=torch.complex64, generator=g).to(torch.complex32)
    sd = {"f32": torch.randn(3, 4, generator=g), "bf16": torch.randn(5, generator=g).bfloat16(),
          "t": torch.randn(4, 3, generator=g).t(), "f16": torch.randn(7, generator=g).half(),
          "i64": torch.arange(6).view(2, 3), "c64": torch.randn(3, dtype=torch.complex64, generator=g),
          "bool": torch.rand(4, generator=g) > 0.5, "empty": torch.empty(0, 3), "scalar": torch.tensor(3.5),
          "cols": torch.randn(4, 5, generator=g)[:, 1:3], "u16": torch.arange(5).to(torch.uint16),
          "f64": torch.randn(2, 2, dtype=torch.float64, generator=g), "i8": torch.arange(-3, 3, dtype=torch.int8),
          "c32": c32}
    for name in FLOAT8:
        sd[name] = torch.arange(256, dtype=torch.uint8).view(getattr(torch, name))
    sd["bf16nan"] = torch.tensor([0x7FC1, -1, 0x7F80, -128], dtype=torch.int16).view(torch.bfloat16)
    return sd


def _as_compared(t: torch.Tensor) -> np.ndarray:
    if t.dtype == torch.bfloat16 or t.dtype.itemsize == 1 and t.dtype.is_floating_point:
        return t.float().numpy()
    if t.dtype == torch.complex32:
        return t.to(torch.complex64).numpy()
    return t.numpy()


def _same(got: np.ndarray, want: np.ndarray) -> bool:
    if got.shape != want.shape or got.dtype != want.dtype:
        return False
    return np.array_equal(np.ascontiguousarray(got).view(np.uint8), np.ascontiguousarray(want).view(np.uint8))


def _deflated(src, dst) -> None:
    """``src`` (a torch.save zip) with every record deflated (torch's reader inflates them)."""
    import zipfile
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for item in zin.infolist():
            zout.writestr(item.filename, zin.read(item.filename))


@pytest.mark.parametrize("fmt", ["pt", "deflated", "legacy", "safetensors", "dcp"])
def test_read_key_array_matches_read_key(tmp_path, fmt):
    sd = _tensors()
    path = tmp_path / f"a.{fmt}"
    if fmt == "pt":
        torch.save(sd, path)
    elif fmt == "deflated":
        torch.save(sd, tmp_path / "stored.pt")
        _deflated(tmp_path / "stored.pt", path)
        assert torch.equal(torch.load(path)["f32"], sd["f32"])   # torch reads it as well
    elif fmt == "dcp":
        from tests.hostile.corpus import dcp_save
        sd = {k: v for k, v in sd.items() if k in ("f32", "bf16", "i64")}
        dcp_save(sd, str(path))
    elif fmt == "legacy":
        torch.save(sd, path, _use_new_zipfile_serialization=False)
    else:
        save_file({k: v.contiguous() for k, v in sd.items() if k != "c32" and "fnuz" not in k}, path)
    side = open_side(str(path))
    keys = list(side.state_dict_infos(None))
    assert len(keys) >= len(sd) - 3 and keys
    for key in keys:
        t = side.read_key(key)
        v = side.read_key_array(key)
        assert v.dtype == str(t.dtype).removeprefix("torch.")
        assert _same(widen(v.array, v.dtype), _as_compared(t)), key
        assert v.array.shape == tuple(t.shape)
        tv = tensor_array(t)   # a model side's tensor handed over: the same bits
        assert tv.dtype == v.dtype and _same(np.ascontiguousarray(tv.array), np.ascontiguousarray(v.array)), key


def test_float8_tables_are_torchs_conversions():
    raw = torch.arange(256, dtype=torch.uint8)
    for name in FLOAT8:
        want = raw.view(getattr(torch, name)).float().numpy()
        assert np.array_equal(float8_table(name).view(np.uint32), want.view(np.uint32)), name


def test_bfloat16_widening_is_torchs():
    bits = np.arange(1 << 16, dtype=np.uint16)
    want = torch.from_numpy(bits.view(np.int16)).view(torch.bfloat16).float().numpy()
    assert np.array_equal(widen(bits, "bfloat16").view(np.uint32), want.view(np.uint32))


def test_a_numpy_array_inside_the_pickle_reads_as_itself(tmp_path):
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    torch.save({"w": torch.ones(2), "n": arr}, tmp_path / "a.pt")
    side = open_side(str(tmp_path / "a.pt"))
    v = side.read_key_array("n")
    assert v.dtype == "float32" and _same(v.array, arr)
    assert _same(v.array, side.read_key("n").numpy())
