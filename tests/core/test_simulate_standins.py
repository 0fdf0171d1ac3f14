"""Keys no code of the model can read share their meta tensors (one per shape, dtype and parameter-ness) in the
structural pass: a checkpoint with 10**6 unexpected keys then costs a dict entry per key, not a tensor.

Nothing a user sees may change: every case of the simulation table gives the same report -- JSON, text, suggestions
-- with the shared stand-ins as with one meta tensor per key, and a model whose own code could read any key (a load
hook, its own ``_load_from_state_dict`` or ``load_state_dict``) gets one tensor per key, checked against real torch.
"""
from __future__ import annotations

import io
from collections import OrderedDict

import pytest
import torch
import torch.nn as nn

from explorer.core.loaders import open_checkpoint
from explorer.core.simulate import _ModelIndex, render_text, simulate_load
from tests.core.test_simulate_diff import CASES, _save, _save_twin, check


def _answer(model, path, **kw) -> tuple[str, str]:
    rep = simulate_load(model, open_checkpoint(str(path)), **kw)
    buf = io.StringIO()
    render_text(rep, buf, verbose=True)
    return rep.dumps(), buf.getvalue()


def _without_standins(monkeypatch):
    monkeypatch.setattr(_ModelIndex, "read_keys", lambda self: None)


@pytest.mark.parametrize("assign", [False, True], ids=["copy", "assign"])
@pytest.mark.parametrize("name", list(CASES))
def test_same_report_with_and_without_standins(name, assign, tmp_path, monkeypatch):
    model_fn, sd_fn, twin = CASES[name]
    model, sd = model_fn(), sd_fn()
    paths = [_save(sd, tmp_path, name)] + ([_save_twin(sd, tmp_path, name)] if twin else [])
    for strict in (True, False):
        shared = [_answer(model, p, strict=strict, assign=assign) for p in paths]
        with monkeypatch.context() as m:
            _without_standins(m)
            whole = [_answer(model, p, strict=strict, assign=assign) for p in paths]
        assert shared == whole


def test_standins_are_shared_by_layout(tmp_path):
    """The keys the model cannot read get one tensor per (shape, dtype, parameter-ness); the ones it reads their
    own; shapes and dtypes are the file's."""
    sd = OrderedDict([("0.weight", torch.zeros(3, 4)), ("0.bias", torch.zeros(3)),
                      ("x1", torch.zeros(2)), ("x2", torch.ones(2)), ("x3", torch.zeros(2, dtype=torch.float16)),
                      ("x4", nn.Parameter(torch.zeros(2))), ("x5", torch.zeros(5, 5))])
    sd._metadata = OrderedDict([("", {"version": 1}), ("0", {"version": 1})])
    path = _save(sd, tmp_path, "standins")
    model = nn.Sequential(nn.Linear(4, 3))
    ck = open_checkpoint(str(path))
    got = ck.meta_state_dict(None, *_ModelIndex(model).read_keys())
    full = ck.load_object(None, device="meta")
    assert list(got) == list(full)
    for k in full:
        assert (got[k].shape, got[k].dtype, type(got[k])) == (full[k].shape, full[k].dtype, type(full[k]))
    assert got["x1"] is got["x2"]
    assert len({id(got[k]) for k in ("x1", "x3", "x4", "x5", "0.weight", "0.bias")}) == 6
    assert got._metadata == full._metadata == sd._metadata and got._metadata is not full._metadata


class _Hooked(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.lin.register_load_state_dict_pre_hook(lambda *a, **k: None)


class _Legacy(nn.Module):
    """Reads a key no parameter has: the old name of its weight (as real models do for old checkpoints)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        old = prefix + "old_weight"
        if old in state_dict:
            state_dict[prefix + "lin.weight"] = state_dict.pop(old)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class _OwnLoad(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2)

    def load_state_dict(self, state_dict, strict=True, assign=False):
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def _root_hooked():
    m = nn.Sequential(nn.Linear(2, 2))
    m.register_load_state_dict_pre_hook(lambda *a, **k: None)
    return m


@pytest.mark.parametrize("make, prefixes", [
    (lambda: nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)), ("1.",)),   # BatchNorm's _load_from_state_dict
    (lambda: nn.Sequential(_Hooked(), _Legacy(), nn.LazyLinear(2)), ("0.lin.", "1.", "2.")),  # hooks, own code
    (_root_hooked, None), (_Hooked, ("lin.",)),
    (_Legacy, None), (_OwnLoad, None),            # the root's own code may read any key
    (lambda: nn.BatchNorm1d(2), None),            # so may torch's own override at the root
    (lambda: nn.LazyLinear(2), None),             # a lazy module registers a load hook on itself
])
def test_read_keys(make, prefixes):
    model = make()
    got = _ModelIndex(model).read_keys()
    assert (got[1] if got is not None else None) == prefixes
    if got is not None:
        assert set(model.state_dict()) <= got[0]


@pytest.mark.parametrize("at", ["", "0."], ids=["root", "child"])
def test_model_code_reading_another_key_matches_torch(tmp_path, at):
    """``_Legacy`` moves ``old_weight`` onto ``lin.weight``: the report says the weight changes, as torch does it."""
    torch.manual_seed(0)
    model = _Legacy() if not at else nn.Sequential(_Legacy())
    legacy = model if not at else model[0]
    # the other keys of old_weight's layout hold the model's own weight: read in its place, no change would show
    sd = OrderedDict([(at + "old_weight", torch.full((2, 2), 7.0)),
                      (at + "lin.bias", legacy.lin.bias.detach().clone())]
                     + [(f"extra{i}", legacy.lin.weight.detach().clone()) for i in range(3)])
    path = _save(sd, tmp_path, "legacy")
    for strict in (True, False):
        rep, _ = check(model, path, strict=strict)
        assert at + "lin.weight" in rep.changed_keys


@pytest.mark.parametrize("shape,stride", [
    (b"(\x8a\x06\x00\x00\x00\x00\x00\x01\x8a\x06\x00\x00\x00\x00\x00\x01t", b"K\x01K\x01\x86"),  # 2**80 elements
    (b"K\x02\x85", b"X\x01\x00\x00\x00a\x85"),             # a stride that is a string
    (b"K\x02\x85", b"J\xff\xff\xff\xff\x85"),              # a negative stride
], ids=["huge", "text-stride", "negative-stride"])
def test_unusual_layouts_of_unread_keys_answer_as_without_standins(tmp_path, monkeypatch, shape, stride):
    """An unexpected key (no model code reads it) with a layout load_object treats with care: the simulation gives
    the same answer -- the same error, or the same report -- with the shared stand-ins as without them."""
    import zipfile

    from explorer.core.demo_models import MyBatchNormModel
    from explorer.errors import ExplorerError
    from tests.core.test_safety import _tensor_pickle
    path = tmp_path / "t.pt"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", _tensor_pickle(shape, stride))
        z.writestr("archive/data/0", b"\0" * 16)
    assert _ModelIndex(MyBatchNormModel()).read_keys() is not None

    def answer():
        try:
            return _answer(MyBatchNormModel(), path)
        except ExplorerError as e:
            return type(e).__name__, str(e)
    shared = answer()
    with monkeypatch.context() as m:
        _without_standins(m)
        assert answer() == shared
