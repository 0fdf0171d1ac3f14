"""Load cases where the simulation used to differ from torch (issue 12): each prediction is checked against real
``load_state_dict`` on a fresh copy of the model, given what ``torch.load`` returns for a file the test saved."""
from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn as nn

from explorer.core import ModelSide, open_checkpoint
from explorer.core.simulate import render_text, simulate_load


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.bn = nn.BatchNorm1d(2)


def _differs(a, b) -> bool:
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
        return a != b
    if a.shape != b.shape or a.dtype != b.dtype or a.is_meta != b.is_meta or a.is_quantized != b.is_quantized:
        return True
    if a.is_meta:
        return False
    if a.is_quantized:
        return not torch.equal(a.int_repr(), b.int_repr()) or a.qscheme() != b.qscheme()
    x, y = a.detach().contiguous().reshape(-1), b.detach().contiguous().reshape(-1)
    return x.numel() > 0 and not torch.equal(x.view(torch.uint8), y.view(torch.uint8))


def _state(model: nn.Module) -> dict:
    return {k: v.detach().clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v)
            for k, v in model.state_dict().items()}


def real_load(model: nn.Module, obj, *, strict=True, assign=False):
    """torch itself on a fresh copy: (exception, missing, unexpected, changed keys, the copy after the load)."""
    fresh = copy.deepcopy(model)
    before = _state(fresh)
    exc, missing, unexpected = None, None, None
    try:
        res = fresh.load_state_dict(obj, strict=strict, assign=assign)
        missing, unexpected = list(res.missing_keys), list(res.unexpected_keys)
    except Exception as e:  # noqa: BLE001 - the exception is the answer
        exc = e
    after = _state(fresh)
    changed = [k for k in before if k not in after or _differs(before[k], after[k])]
    return exc, missing, unexpected, changed, fresh


def agree(model, path, *, weights_only=True, entry=None, pick=lambda o: o, **kw):
    """Simulate and run torch; assert they agree on the raise, its text, the keys and the changed values."""
    obj = pick(torch.load(path, weights_only=weights_only))
    exc, missing, unexpected, changed, fresh = real_load(model, obj, **kw)
    rep = simulate_load(ModelSide(model, "m"), open_checkpoint(path), entry=entry, **kw)
    assert rep.raises == (exc is not None), (rep.error_message, exc)
    if exc is not None:
        assert (rep.error_type, rep.error_message) == (type(exc).__name__, str(exc))
    else:
        assert (rep.missing_keys, rep.unexpected_keys) == (missing, unexpected)
    assert rep.changed_keys == changed, (rep.changed_keys, changed)
    return rep, exc, fresh


# ---- 2: tensors saved from the meta device ------------------------------------------------------------------------

@pytest.fixture
def meta_ckpt(tmp_path):
    with torch.device("meta"):
        m = Net()
    path = tmp_path / "meta.pt"
    torch.save(m.state_dict(), path)
    return path


def test_meta_checkpoint_raises_per_key_like_torch(meta_ckpt):
    rep, exc, _ = agree(Net(), meta_ckpt)
    assert "Cannot copy out of meta tensor; no data!" in str(exc)
    assert all(r.status == "not_loaded" and r.no_data for r in rep.keys.values())
    assert "no data" in rep.explanation
    # the structural answer alone (no values compared) is the same raise
    quick = simulate_load(Net(), open_checkpoint(meta_ckpt), compare_values=False)
    assert quick.error_message == rep.error_message
    # strict=False raises all the same
    agree(Net(), meta_ckpt, strict=False)


def test_meta_checkpoint_assign_installs_meta_tensors(meta_ckpt):
    rep, exc, fresh = agree(Net(), meta_ckpt, assign=True)
    assert exc is None and fresh.fc.weight.is_meta
    assert rep.keys["fc.weight"].no_data and rep.keys["fc.weight"].certain
    assert "no data" in rep.keys["fc.weight"].explanation


def test_meta_tensors_are_shown_as_no_data(meta_ckpt, cli):
    from explorer.core.stats import NO_DATA, health_scan
    ck = open_checkpoint(meta_ckpt)
    infos = ck.state_dict_infos()
    assert not infos["fc.weight"].has_data
    assert health_scan(ck)["fc.weight"] == [NO_DATA]
    out = cli("inspect", meta_ckpt)
    assert out.returncode == 0 and "no data: meta" in out.stdout
    out = cli("stats", meta_ckpt, "fc.weight")
    assert out.returncode == 2 and "no data (meta)" in out.stderr and "Traceback" not in out.stderr
