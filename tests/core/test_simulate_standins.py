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
from explorer.commands.simulate import render_text
from explorer.core.load.index import ModelIndex
from explorer.core.simulate.run import simulate_load
from tests.core.test_simulate_diff import CASES, _save, _save_twin, check


def _answer(model, path, **kw) -> tuple[str, str]:
    rep = simulate_load(model, open_checkpoint(str(path)), **kw)
    buf = io.StringIO()
    render_text(rep, buf, verbose=True)
    return rep.dumps(), buf.getvalue()


def _without_standins(monkeypatch):
    monkeypatch.setattr(ModelIndex, "read_keys", lambda self: None)


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
    got = ck.meta_state_dict(None, *ModelIndex(model).read_keys())
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


def _instance_code(at: str):
    """A model whose module at ``at`` ("" the root) gets its own ``_load_from_state_dict`` on the instance (torch
    calls it before the class's), moving ``old_weight`` onto ``weight``."""
    import types
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    mod = model if not at else model.get_submodule(at)

    def load(self, state_dict, prefix, *args):
        if prefix + "old_weight" in state_dict:
            state_dict[prefix + ("weight" if at else "0.weight")] = state_dict.pop(prefix + "old_weight")
        return type(self)._load_from_state_dict(self, state_dict, prefix, *args)
    mod._load_from_state_dict = types.MethodType(load, mod)
    return model


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
    (lambda: _instance_code("1"), ("1.",)),       # code set on an instance counts as the module's own
    (lambda: _instance_code(""), None),
])
def test_read_keys(make, prefixes):
    model = make()
    got = ModelIndex(model).read_keys()
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
    assert ModelIndex(MyBatchNormModel()).read_keys() is not None

    def answer():
        try:
            return _answer(MyBatchNormModel(), path)
        except ExplorerError as e:
            return type(e).__name__, str(e)
    shared = answer()
    with monkeypatch.context() as m:
        _without_standins(m)
        assert answer() == shared


def test_read_keys_none_when_torch_itself_is_patched(monkeypatch):
    """Someone replaced nn.Module's own loading code: it may read any key."""
    model = nn.Sequential(nn.Linear(2, 2))
    assert ModelIndex(model).read_keys() is not None
    original = nn.Module._load_from_state_dict

    def patched(self, *args, **kwargs):
        return original(self, *args, **kwargs)
    monkeypatch.setattr(nn.Module, "_load_from_state_dict", patched)
    assert ModelIndex(model).read_keys() is None


@pytest.mark.parametrize("at", ["1", ""], ids=["child", "root"])
def test_instance_code_reading_another_key_matches_torch(tmp_path, at):
    """The code set on an instance reads ``old_weight``, which equals the model's weight; another key of that
    layout holds 7s. torch: nothing changes. Reading the wrong key (a shared stand-in) would say it changes."""
    torch.manual_seed(0)
    model = _instance_code(at)
    target = model[1] if at else model[0]
    prefix = "1." if at else ""
    sd = OrderedDict((k, v.detach().clone()) for k, v in model.state_dict().items())
    sd[f"{prefix}old_weight"] = sd.pop(f"{prefix}weight" if at else "0.weight")
    sd["zz.weight"] = torch.full_like(target.weight, 7.0)
    path = _save(sd, tmp_path, "instance")
    for strict in (True, False):
        rep, _ = check(model, path, strict=strict)
        assert (("1.weight" if at else "0.weight") not in rep.changed_keys), rep.changed_keys


class _InPlace(nn.Module):
    """``head``'s load hook transposes a weight stored in an old layout, in place (4, 2) -> (2, 4)."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(4, 2)
        self.proj = nn.Linear(2, 4)

        def hook(module, state_dict, prefix, *args):
            k = prefix + "weight"
            if k in state_dict and tuple(state_dict[k].shape) == (4, 2):
                state_dict[k].t_()
        self.head._register_load_state_dict_pre_hook(hook, with_module=True)


def test_a_remap_gives_keys_it_makes_readable_their_own_tensors(tmp_path, monkeypatch):
    """Every key carries ``module.``, so none is readable and head.weight (4, 2) and proj.weight (4, 2) share a
    stand-in. Stripping the prefix makes both readable: head's hook transposes its own tensor in place, and the
    preview -- as torch after ``consume_prefix_in_state_dict_if_present`` -- is a clean load."""
    from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present
    torch.manual_seed(9)
    model = _InPlace()
    sd = OrderedDict([("module.head.weight", model.head.weight.detach().t().contiguous()),
                      ("module.head.bias", model.head.bias.detach().clone()),
                      ("module.proj.weight", model.proj.weight.detach().clone()),
                      ("module.proj.bias", model.proj.bias.detach().clone())])
    path = _save(sd, tmp_path, "inplace")
    truth = OrderedDict(sd)
    consume_prefix_in_state_dict_if_present(truth, "module.")
    assert not _InPlace().load_state_dict(truth).missing_keys
    rep = simulate_load(model, open_checkpoint(str(path)))
    best = rep.suggestions[0]
    assert best.remap.kind == "strip_prefix" and best.preview["mismatched"] == 0 and not best.preview["raises"]
    with monkeypatch.context() as m:
        _without_standins(m)
        whole = _answer(model, path)
    assert _answer(model, path) == whole
