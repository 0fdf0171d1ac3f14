"""``Checkpoint.load_object(device="meta")`` makes a state dict's meta tensors in bulk (no Python code per tensor).
What it gives must be what torch itself gives: ``torch.load(map_location="meta")`` for a ``.pt`` and
``safetensors.torch.load_file`` for a ``.safetensors`` -- the same keys in the same order, shapes, strides, dtypes,
``nn.Parameter``-ness, ``requires_grad`` and sharing (one tensor object under two keys stays one object) -- and what
the careful per-tensor path gives.
"""
from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from safetensors.torch import load_file, save_file

from explorer.core import materialize as materialize_mod
from explorer.core.loaders import open_checkpoint
from tests.core import test_many_tensors as _many_tensors
from tests.core.test_many_tensors import _python_calls

many = _many_tensors.many   # the fixture: N-tensor files as the hostile corpus writes them


def _describe(obj, seen=None):
    """A comparable picture of a loaded object: tensors by layout and by which earlier tensor they are."""
    seen = {} if seen is None else seen
    if isinstance(obj, torch.Tensor):
        if id(obj) in seen:
            return ("same as", seen[id(obj)])
        seen[id(obj)] = len(seen)
        return (type(obj).__name__, tuple(obj.shape), obj.stride(), obj.dtype, obj.requires_grad, obj.device.type)
    if isinstance(obj, dict):
        return (type(obj).__name__, [(k, _describe(v, seen)) for k, v in obj.items()])
    if isinstance(obj, (list, tuple)):
        return (type(obj).__name__, [_describe(v, seen) for v in obj])
    return obj


def _mixed_state(tmp_path):
    """A .pt with parameters, buffers, several dtypes, a transposed view, a tied tensor (one object under two keys)
    and a tensor shared between two state dicts."""
    lin = torch.nn.Linear(4, 3)
    shared = torch.arange(6.0)
    model = OrderedDict([
        ("w", lin.weight), ("b", lin.bias),                    # parameters (requires_grad)
        ("frozen", torch.nn.Parameter(torch.ones(2), requires_grad=False)),
        ("half", torch.zeros(3, 2, dtype=torch.float16)), ("bf", torch.zeros(5, dtype=torch.bfloat16)),
        ("count", torch.tensor(7)), ("mask", torch.ones(2, 2, dtype=torch.bool)),
        ("t", torch.arange(12.0).reshape(3, 4).t()),             # a non-contiguous view
        ("shared", shared), ("tied", None),
    ])
    model["tied"] = model["w"]
    obj = {"model": model, "ema": OrderedDict([("shared", shared), ("other", torch.ones(1, dtype=torch.int64))]),
           "step": 3}
    path = tmp_path / "mixed.pt"
    torch.save(obj, path)
    return path


def test_meta_pt_equals_torch_load(tmp_path):
    path = _mixed_state(tmp_path)
    want = torch.load(path, map_location="meta", weights_only=True)
    ck = open_checkpoint(str(path))
    got = ck.load_object("/", device="meta")
    assert _describe(got) == _describe(want)
    # the state dict alone, too (the bulk path at the top)
    assert _describe(ck.load_object("model", device="meta")) == _describe(want["model"])


def test_meta_safetensors_equals_load_file(tmp_path):
    sd = {"a": torch.zeros(2, 3), "b": torch.zeros(4, dtype=torch.float16), "c": torch.zeros((), dtype=torch.int8),
          "d": torch.zeros(0, 5), "e": torch.zeros(1, 1, 2, dtype=torch.bfloat16)}
    path = tmp_path / "x.safetensors"
    save_file(sd, str(path))
    want = {k: v.to("meta") for k, v in load_file(str(path)).items()}
    got = open_checkpoint(str(path)).load_object(None, device="meta")
    assert list(got) == list(want)
    assert [_describe(v) for v in got.values()] == [_describe(v) for v in want.values()]


@pytest.mark.parametrize("ext", ["pt", "safetensors"])
def test_bulk_equals_careful_path(tmp_path, monkeypatch, ext):
    if ext == "pt":
        path = _mixed_state(tmp_path)
        entry = "/"
    else:
        path = tmp_path / "y.safetensors"
        save_file({"a": torch.zeros(2, 3), "z": torch.zeros(7, dtype=torch.int32)}, str(path))
        entry = None
    bulk = open_checkpoint(str(path)).load_object(entry, device="meta")
    monkeypatch.setattr(materialize_mod, "meta_bulk", lambda *a: None)   # every mapping the careful way
    careful = open_checkpoint(str(path)).load_object(entry, device="meta")
    assert _describe(bulk) == _describe(careful)
    assert type(bulk) is type(careful)


def test_meta_python_work_per_tensor(many):
    """Materialising N more tensors on the meta device costs (nearly) no Python call per tensor."""
    for ext in ("pt", "safetensors"):
        small, large = many(2_000)[ext], many(12_000)[ext]
        cks = [open_checkpoint(p) for p in (small, large)]
        cks[0].load_object(None, device="meta")  # imports, caches
        calls = [_python_calls(lambda ck=ck: ck.load_object(None, device="meta")) for ck in cks]
        extra = calls[1] - calls[0]
        # each tensor's empty_strided goes through one small module-level function
        assert extra / 10_000 <= 1.05, f"{ext}: {extra / 10_000:.2f} Python calls per tensor"
        got = cks[1].load_object(None, device="meta")
        assert len(got) == 12_000 and got["t11999"].shape == (1,) and got["t0"].device.type == "meta"
