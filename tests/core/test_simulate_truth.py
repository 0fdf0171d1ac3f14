"""Load cases where the simulation used to differ from torch (issue 12): each prediction is checked against real
``load_state_dict`` on a fresh copy of the model, given what ``torch.load`` returns for a file the test saved."""
from __future__ import annotations

import copy
import io
import json

import pytest
import torch
import torch.nn as nn

from explorer.core import ModelSide, open_checkpoint
from explorer.commands.simulate import render_text
from explorer.core.simulate.run import simulate_load


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.bn = nn.BatchNorm1d(2)


def _differs(a, b) -> bool:
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return type(a) is not type(b) or len(a) != len(b) or any(map(_differs, a, b))
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
        return type(a) is not type(b) or a != b
    if a.shape != b.shape or a.dtype != b.dtype or a.is_meta != b.is_meta or a.is_quantized != b.is_quantized:
        return True
    if a.is_meta:
        return False
    if a.is_quantized:
        return not torch.equal(a.dequantize(), b.dequantize()) or not torch.equal(a.int_repr(), b.int_repr()) \
            or a.qscheme() != b.qscheme()
    x, y = a.detach().contiguous().reshape(-1), b.detach().contiguous().reshape(-1)
    return x.numel() > 0 and not torch.equal(x.view(torch.uint8), y.view(torch.uint8))


def _state(model: nn.Module) -> dict:
    return {k: "uninitialized" if nn.parameter.is_lazy(v) else v.detach().clone() if isinstance(v, torch.Tensor)
            else copy.deepcopy(v) for k, v in model.state_dict().items()}


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
    # a key the model gains during the load (a module registered by set_extra_state) is a change too
    changed = [k for k in before if k not in after or _differs(before[k], after[k])] + \
        [k for k in after if k not in before]
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
    from explorer.core.health import NO_DATA, health_scan
    ck = open_checkpoint(meta_ckpt)
    infos = ck.state_dict_infos()
    assert not infos["fc.weight"].has_data
    assert health_scan(ck)["fc.weight"] == [NO_DATA]
    out = cli("inspect", meta_ckpt)
    assert out.returncode == 0 and "no data: meta" in out.stdout
    out = cli("stats", meta_ckpt, "fc.weight")
    assert out.returncode == 2 and "no data (meta)" in out.stderr and "Traceback" not in out.stderr


# ---- 3: numpy arrays ----------------------------------------------------------------------------------------------

def test_numpy_arrays_are_read_as_data_and_simulated_like_torch(tmp_path, cli):
    import numpy as np
    from explorer.core.stats import tensor_stats
    sd = {k: v.detach().numpy().copy() for k, v in Net().state_dict().items()}
    sd["extra"] = np.asfortranarray(np.arange(6, dtype=">f8").reshape(2, 3))   # big-endian, Fortran order
    path = tmp_path / "np.pt"
    torch.save(sd, path)
    ck = open_checkpoint(path)
    infos = ck.state_dict_infos()
    assert infos["fc.weight"].kind == "numpy_array" and infos["fc.weight"].dtype == "float32"
    assert infos["extra"].shape == (2, 3) and infos["extra"].dtype == "float64"
    for key, arr in sd.items():   # the values, read without numpy's unpickler
        assert np.array_equal(ck.read_key(key).numpy(), arr)
    assert tensor_stats(ck.read_key("extra")).max == 5
    rep, exc, _ = agree(Net(), path, weights_only=False)
    assert "<class 'numpy.ndarray'>" in rep.error_message
    assert any("weights_only=True refuses" in n for n in rep.notes)
    with pytest.raises(Exception):   # the note is true: torch's default refuses the file
        torch.load(path, weights_only=True)
    out = cli("inspect", path)
    assert "numpy_array" in out.stdout and out.returncode == 0


def test_numpy_object_arrays_stay_placeholders(tmp_path):
    import numpy as np
    path = tmp_path / "obj.pt"
    torch.save({"w": torch.ones(2), "names": np.array(["a", None], dtype=object)}, path)
    ck = open_checkpoint(path)
    assert list(ck.state_dict_infos()) == ["w"]


# ---- 4: a whole pickled model --------------------------------------------------------------------------------------

def test_whole_pickled_model_entry_root_is_the_object_itself(tmp_path):
    net = Net()
    path = tmp_path / "whole.pt"
    torch.save({"model": net, "epoch": 3}, path)
    rep, exc, _ = agree(Net(), path, weights_only=False, entry="model", pick=lambda o: o["model"])
    assert isinstance(exc, TypeError) and "test_simulate_truth.Net'>" in rep.error_message
    assert all(r.status == "not_loaded" for r in rep.keys.values())
    # the default: the recovered state dict, as load_state_dict(obj["model"].state_dict()) does; the report says
    # what passing the object itself would do
    rep2, exc2, _ = agree(Net(), path, weights_only=False, pick=lambda o: o["model"].state_dict())
    assert exc2 is None and any("Expected state_dict to be dict-like" in n for n in rep2.notes)
    root = tmp_path / "root.pt"
    torch.save(net, root)
    rep3, exc3, _ = agree(Net(), root, weights_only=False, entry="/")
    assert isinstance(exc3, TypeError) and rep3.error_message == str(exc3)


# ---- 9: warnings in the JSON ------------------------------------------------------------------------------------

def test_json_carries_the_warnings_the_text_shows(tmp_path):
    import io
    model = nn.Linear(2, 2)
    held = [model.weight]

    def hook(module, state_dict, prefix, *rest):
        with torch.no_grad():
            held[0].mul_(1.0)   # reaches the real model through a container the copy cannot redirect

    model.register_load_state_dict_pre_hook(hook)
    rep = simulate_load(model, nn.Linear(2, 2).state_dict())
    text = io.StringIO()
    render_text(rep, text)
    warns = json.loads(rep.dumps())["warnings"]
    assert warns and any(w.startswith("WARNING") for w in warns)
    assert all(f"note: {w}" in text.getvalue() for w in warns)


# ---- 18: no noise --------------------------------------------------------------------------------------------------

def test_unchanged_running_statistics_are_not_overwritten(tmp_path):
    import io
    torch.manual_seed(0)
    path = tmp_path / "fresh.pt"
    src = Net()
    src.bn.running_mean.fill_(0.5)   # one statistic differs, the others (num_batches_tracked 0 -> 0) do not
    torch.save(src.state_dict(), path)
    rep, _, _ = agree(Net(), path)
    assert rep.keys["bn.running_mean"].status == "running_stat_overwritten"
    for k in ("bn.running_var", "bn.num_batches_tracked"):
        assert rep.keys[k].status == "matched" and not rep.keys[k].running_stat
    assert list(rep.running_stats) == ["bn.running_mean"]
    text = io.StringIO()
    render_text(rep, text)
    assert "num_batches_tracked: 0 -> 0" not in text.getvalue()


def test_suggestions_that_still_raise_come_after_real_fixes(tmp_path):
    import io
    sd = {f"module.{k}": v for k, v in Net().state_dict().items()}
    path = tmp_path / "ddp.pt"
    torch.save(sd, path)
    ok = simulate_load(Net(), open_checkpoint(path))
    assert ok.suggestions and not ok.suggestions[0].preview["raises"]
    sd["module.fc.weight"] = torch.zeros(5, 3)   # stripping the prefix now leaves a size mismatch
    torch.save(sd, path)
    rep = simulate_load(Net(), open_checkpoint(path))
    assert rep.suggestions and all(s.preview["raises"] for s in rep.suggestions)
    fixed = {k[len("module."):]: v for k, v in sd.items()}
    with pytest.raises(RuntimeError):   # the preview is true: the fixed load raises
        Net().load_state_dict(fixed)
    text = io.StringIO()
    render_text(rep, text)
    out = text.getvalue()
    assert "partial fixes: the load would still raise" in out and "suggested fixes (preview" not in out
    flags = [s.preview["raises"] for s in ok.suggestions]
    assert flags == sorted(flags)   # real fixes first


# ---- 7: a hook that edits a checkpoint tensor in place ------------------------------------------------------------

def _halve_weight(module, state_dict, prefix, *rest):
    if prefix + "weight" in state_dict:
        state_dict[prefix + "weight"].mul_(0.5)


def _halving_model():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2))
    m[0].register_load_state_dict_pre_hook(_halve_weight)
    return m


@pytest.mark.parametrize("factor", [1.0, 2.0])
def test_in_place_edit_of_a_checkpoint_tensor_is_compared(tmp_path, factor):
    model = _halving_model()
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    sd["0.weight"] *= factor   # 2.0: the hook halves it back to the model's own value
    path = tmp_path / "ck.pt"
    torch.save(sd, path)
    rep, _, _ = agree(model, path)
    assert any("in place" in n for n in rep.notes)
    ck = open_checkpoint(path)
    simulate_load(model, ck)
    assert torch.equal(ck.read_key("0.weight"), sd["0.weight"])   # later reads still see the file's values
    # a dict handed in directly is not changed either
    given = {k: v.clone() for k, v in sd.items()}
    rep2 = simulate_load(model, given)
    assert rep2.changed_keys == rep.changed_keys and torch.equal(given["0.weight"], sd["0.weight"])


# ---- 5: lazy modules ----------------------------------------------------------------------------------------------

def _lazy_net():
    return nn.Sequential(nn.LazyConv2d(4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))


@pytest.mark.parametrize("kw", [{}, {"assign": True}, {"strict": False}])
def test_lazy_modules_materialize_from_the_checkpoint(tmp_path, kw):
    torch.manual_seed(0)
    src = _lazy_net()
    src(torch.randn(1, 3, 6, 6))   # initialized: the checkpoint has shapes
    sd = src.state_dict()
    if kw.get("strict") is False:
        del sd["3.bias"]
    path = tmp_path / "lazy.pt"
    torch.save(sd, path)
    rep, exc, fresh = agree(_lazy_net(), path, **kw)
    assert exc is None and tuple(fresh[0].weight.shape) == (4, 3, 3, 3)
    assert rep.keys["0.weight"].status == "changed" and "materializes" in rep.keys["0.weight"].explanation
    if kw.get("strict") is False:
        assert rep.missing_keys == ["3.bias"] and rep.keys["3.bias"].status == "missing"



def test_lazy_model_on_the_command_line(tmp_path, cli):
    spec = tmp_path / "lazy_model.py"
    spec.write_text("import torch.nn as nn\n\ndef build():\n    return nn.Sequential(nn.LazyLinear(4), nn.ReLU(), "
                    "nn.LazyLinear(2))\n")
    path = tmp_path / "plain.pt"
    torch.save(nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2)).state_dict(), path)
    out = cli("simulate", "--model", f"{spec}:build", "--checkpoint", path, "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["changed_keys"] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert cli("inspect", f"{spec}:build").returncode == 0


def test_uninitialized_parameters_in_a_checkpoint(tmp_path, cli):
    path = tmp_path / "uninit.pt"
    torch.save(nn.LazyLinear(4).state_dict(), path)
    ck = open_checkpoint(path)
    assert "torch.nn.parameter.UninitializedParameter" in ck.references
    # into an initialized Linear torch raises its own error (not one naming a stand-in class)
    rep, exc, _ = agree(nn.Linear(3, 4), path, weights_only=False)
    assert exc is not None and "uninitialized" in rep.error_message and "explorer" not in rep.error_message
    assert "lazy" in rep.explanation
    # into a lazy one it loads, and the parameters stay uninitialized
    rep2, exc2, fresh = agree(nn.LazyLinear(4), path, weights_only=False)
    assert exc2 is None and nn.parameter.is_lazy(fresh.weight)


# ---- 10: where the simulation ran other code than torch (cases from PyTorch's own load_state_dict tests) ----------

class CustomState(nn.Module):
    """PyTorch's test_load_state_dict_custom: its own _save_to/_load_from_state_dict write through param.data."""

    def __init__(self):
        super().__init__()
        self.param = nn.Parameter(torch.ones(3))
        self.sub = nn.Linear(5, 5)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        destination[prefix + "serialized"] = self.param.data + 1

    def _load_from_state_dict(self, state_dict, prefix, *rest):
        self.param.data.copy_(state_dict[prefix + "serialized"] - 1)


class CustomNoGrad(CustomState):
    def _load_from_state_dict(self, state_dict, prefix, *rest):
        with torch.no_grad():
            self.param.copy_(state_dict[prefix + "serialized"] - 1)


class DataCopy(nn.Linear):
    def _load_from_state_dict(self, state_dict, prefix, *rest):
        self.weight.data.copy_(state_dict[prefix + "weight"])
        self.bias.data.mul_(0)


class GrowsAChild(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(2, 2)

    def get_extra_state(self):
        return {"n": 3}

    def set_extra_state(self, state):
        self.child = nn.Linear(state["n"], 1)


def _identity_checking():
    model = nn.Sequential(nn.Linear(2, 2))

    def hook(module, state_dict, prefix, *rest):
        assert module is model[0], "not the module itself"

    model[0].register_load_state_dict_pre_hook(hook)
    return model


@pytest.mark.parametrize("cls", [CustomState, CustomNoGrad])
def test_own_load_code_writing_through_data(tmp_path, cls):
    src = nn.Sequential(cls())
    with torch.no_grad():
        src[0].param[0] = 10
    path = tmp_path / "custom.pt"
    torch.save(src.state_dict(), path)
    torch.manual_seed(1)
    rep, _, fresh = agree(nn.Sequential(cls()), path)
    assert fresh[0].param[0].item() == 10 and rep.keys["0.serialized"].status == "changed"
    same = tmp_path / "same.pt"   # the same values: nothing changes
    model = nn.Sequential(cls())
    torch.save(model.state_dict(), same)
    rep2, _, _ = agree(model, same)
    assert rep2.keys["0.serialized"].status == "matched"


def test_data_copy_and_data_inplace_are_seen(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "lin.pt"
    torch.save(nn.Linear(3, 2).state_dict(), path)
    torch.manual_seed(1)
    rep, _, _ = agree(DataCopy(3, 2), path)
    assert rep.keys["weight"].status == "changed" and not rep.keys["bias"].certain


def test_identity_checking_hook_sees_the_module_itself(tmp_path):
    path = tmp_path / "seq.pt"
    torch.save(nn.Sequential(nn.Linear(2, 2)).state_dict(), path)
    # torch on a model of its own (a deep copy would fail the check: the hook's closure names the original)
    torch.manual_seed(0)
    real = _identity_checking()
    before = real[0].weight.detach().clone()
    real.load_state_dict(torch.load(path, weights_only=True))
    assert not torch.equal(before, real[0].weight)
    torch.manual_seed(0)
    rep = simulate_load(_identity_checking(), open_checkpoint(path))
    assert not rep.raises and rep.changed_keys == ["0.weight", "0.bias"] and not rep.notes


def test_set_extra_state_registering_a_child(tmp_path):
    src = GrowsAChild()
    src.set_extra_state({"n": 3})
    path = tmp_path / "grow.pt"
    torch.save(src.state_dict(), path)
    for compare in (True, False):
        rep = simulate_load(GrowsAChild(), open_checkpoint(path), compare_values=compare)
        assert not rep.raises and rep.keys["child.weight"].status == "changed" and not rep.unexpected_keys
        assert not rep.ignored_keys
    real = GrowsAChild()
    assert real.load_state_dict(torch.load(path, weights_only=False)).unexpected_keys == []
    # a checkpoint without the child's keys: torch reports them missing, and so does the prediction
    no_child = tmp_path / "nochild.pt"
    torch.save({k: v for k, v in src.state_dict().items() if not k.startswith("child.")}, no_child)
    rep, exc, _ = agree(GrowsAChild(), no_child, weights_only=False)
    assert "child.weight" in rep.error_message and rep.keys["child.weight"].status == "missing"


class SubTensor(torch.Tensor):
    pass


def test_tensor_subclass_in_the_file_is_not_predicted_as_exact(tmp_path):
    m = nn.Linear(2, 2)
    path = tmp_path / "sub.pt"
    torch.save({"weight": m.weight.detach().clone().as_subclass(SubTensor), "bias": m.bias.detach().clone()}, path)
    rep = simulate_load(nn.Linear(2, 2), open_checkpoint(path))
    assert any(n.startswith("WARNING: this prediction cannot be exact") and "SubTensor" in n for n in rep.notes)
    plain = tmp_path / "plain.pt"
    torch.save(m.state_dict(), plain)
    assert not any("cannot be exact" in n for n in simulate_load(nn.Linear(2, 2), open_checkpoint(plain)).notes)


# ---- 6: quantized modules -----------------------------------------------------------------------------------------

def _dynamic(seed):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    return torch.ao.quantization.quantize_dynamic(m, {nn.Linear}, dtype=torch.qint8)


def _static(seed):
    import torch.ao.nn.quantized as nnq
    torch.manual_seed(seed)
    lin = nnq.Linear(4, 3)
    w = torch.randn(3, 4)
    per_channel = torch.quantize_per_channel(w, torch.rand(3) / 10 + 0.01, torch.zeros(3, dtype=torch.long), 0,
                                             torch.qint8)
    lin.set_weight_bias(per_channel, torch.randn(3))
    conv = nnq.Conv2d(2, 2, 3)
    conv.set_weight_bias(torch.quantize_per_tensor(torch.randn(2, 2, 3, 3), 0.05, 0, torch.qint8), torch.randn(2))
    conv.scale, conv.zero_point = 0.2, 3
    return nn.Sequential(lin, conv)


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")
@pytest.mark.parametrize("build", [_dynamic, _static])
def test_quantized_modules_load_as_torch_loads_them(tmp_path, build):
    path = tmp_path / "q.pt"
    torch.save(build(7).state_dict(), path)
    rep, exc, _ = agree(build(0), path)
    assert exc is None and rep.changed_keys   # the packed weights change
    assert any("_packed_params" in k for k in rep.changed_keys)
    same = tmp_path / "same.pt"
    torch.save(build(0).state_dict(), same)
    rep2, _, _ = agree(build(0), same)
    assert rep2.changed_keys == []


@pytest.mark.parametrize("strict", [True, False])
def test_assign_that_changes_the_models_dtype_is_said(tmp_path, strict):
    """``assign=True`` with a float16 / float64 checkpoint tensor: torch converts nothing, the model's tensor becomes
    the checkpoint's dtype. Each key says so (``dtype_assigned``: [model's, checkpoint's], in the JSON and on the
    key's text line) exactly where torch's own model changed dtype, and only there."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    sd["0.weight"] = sd["0.weight"].half()
    sd["1.running_var"] = sd["1.running_var"].double()
    path = tmp_path / "mixed.pt"
    torch.save(sd, path)
    rep = simulate_load(ModelSide(copy.deepcopy(model), "m"), open_checkpoint(path), strict=strict, assign=True)
    before = {k: v.dtype for k, v in model.state_dict().items()}
    real = copy.deepcopy(model)
    real.load_state_dict(torch.load(path), strict=strict, assign=True)
    after = {k: v.dtype for k, v in real.state_dict().items()}
    want = {k: [str(before[k]).replace("torch.", ""), str(after[k]).replace("torch.", "")]
            for k in before if before[k] != after[k]}
    assert set(want) == {"0.weight", "1.running_var"}
    got = {k: r.to_json().get("dtype_assigned") for k, r in rep.keys.items()}
    assert {k: v for k, v in got.items() if v} == want
    assert all(r.dtype_cast is None for r in rep.keys.values())
    buf = io.StringIO()
    render_text(rep, buf)
    text = buf.getvalue()
    line = next(ln for ln in text.splitlines() if " 0.weight " in ln)
    assert "float32->float16" in line and "assigned" in line, line
    # without assign, the same file casts: copy_ keeps the model's dtype
    rep = simulate_load(ModelSide(copy.deepcopy(model), "m"), open_checkpoint(path), strict=strict)
    assert rep.keys["0.weight"].dtype_cast == ["float16", "float32"] and rep.keys["0.weight"].dtype_assigned is None


def test_other_copies_of_the_state_dict_are_named(tmp_path, cli):
    """A file holding the model's state dict and an EMA of it: the simulation of the default one says the other is
    there (and how to pick it); an optimizer's per-parameter state beside a model is no such copy."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    (tmp_path / "m.py").write_text("import torch.nn as nn\n"
                                   "def make():\n    return nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))\n")
    spec = f"{tmp_path / 'm.py'}:make"
    torch.save({"model": m.state_dict(), "ema": m.state_dict()}, tmp_path / "two.pt")
    r = cli("simulate", "--model", spec, "--checkpoint", tmp_path / "two.pt")
    assert r.returncode == 0 and "[entry model]" in r.stdout
    assert "note: the file holds other state dicts too: 'ema'" in r.stdout, r.stdout
    r = cli("simulate", "--model", spec, "--checkpoint", tmp_path / "two.pt", "--entry", "ema")
    assert r.returncode == 0 and "other state dicts" not in r.stdout
    opt = torch.optim.Adam(m.parameters())
    m(torch.randn(3, 2)).sum().backward()
    opt.step()
    torch.save({"model": m.state_dict(), "optimizer": opt.state_dict()}, tmp_path / "train.pt")
    r = cli("simulate", "--model", spec, "--checkpoint", tmp_path / "train.pt")
    assert r.returncode == 0 and "other state dicts" not in r.stdout, r.stdout
