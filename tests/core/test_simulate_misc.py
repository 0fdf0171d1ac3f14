"""Simulation: the model and files stay untouched, other sides (model, dict, entries), progress and cancel, and the
command line (exit codes, JSON schema). Remap suggestions, export and snippets: test_remap.py."""
from __future__ import annotations

import copy
import hashlib
import json
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file

from explorer.core import ModelSide, open_checkpoint
from explorer.core.demo_models import ModelA, ModelB, MyBatchNormModel
from explorer.core.records import MATCHED, MISSING, RUNNING_STAT, UNEXPECTED, CHANGED
from explorer.core.simulate.run import simulate_load
from explorer.errors import Cancelled

ROOT = Path(__file__).resolve().parents[2]


def sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def bits(model: nn.Module) -> dict:
    out = {}
    for name, mod in model.named_modules(remove_duplicate=False):
        for reg in (mod._parameters, mod._buffers):
            for k, v in reg.items():
                if v is not None:
                    out[f"{name}.{k}"] = (id(v), v._version, v.dtype, tuple(v.shape),
                                          v.detach().contiguous().reshape(-1).view(torch.uint8).clone())
    return out


def same_bits(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k][:4] == b[k][:4] and torch.equal(a[k][4], b[k][4]) for k in a)


def trained_bn(seed=1):
    torch.manual_seed(seed)
    m = MyBatchNormModel()
    m.train()
    m(torch.randn(6, 10))
    return m


def test_model_and_file_bit_identical_after_simulation(tmp_path):
    model = trained_bn(0)
    ck_model = trained_bn(1)
    sd = ck_model.state_dict()
    sd["linear.weight"] = sd["linear.weight"].half()
    path = tmp_path / "ck.pt"
    torch.save({"state_dict": sd, "optimizer": {"lr": 0.1}}, path)
    st = tmp_path / "ck.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(st))
    before_model, before_pt, before_st = bits(model), sha(path), sha(st)
    stat_before = path.stat().st_mtime_ns
    for p in (path, st):
        for assign in (False, True):
            rep = simulate_load(ModelSide(model, "m"), open_checkpoint(p), strict=True, assign=assign)
            assert not rep.raises and rep.changed_keys
    assert same_bits(before_model, bits(model))
    assert sha(path) == before_pt and sha(st) == before_st and path.stat().st_mtime_ns == stat_before
    # the real load on a copy does change it: the check above can fail
    real = copy.deepcopy(model)
    real.load_state_dict(torch.load(path, weights_only=True)["state_dict"])
    assert not torch.equal(real.bn.running_mean, model.bn.running_mean)


def test_hook_touching_the_real_model_is_reported():
    model = nn.Linear(2, 2)
    held = [model.weight]   # reached through a container: the copy's hooks cannot be redirected to the copy

    def hook(module, state_dict, prefix, *rest):
        with torch.no_grad():
            held[0].mul_(1.0)

    model.register_load_state_dict_pre_hook(hook)
    rep = simulate_load(model, nn.Linear(2, 2).state_dict())
    assert any(n.startswith("WARNING") for n in rep.notes)


def test_model_side_and_dict_as_checkpoint():
    a, b = trained_bn(1), trained_bn(2)
    rep = simulate_load(ModelSide(a, "a"), ModelSide(b, "b"))
    assert not rep.raises and rep.checkpoint == "b" and rep.model == "a"
    assert rep.keys["bn.running_mean"].status == RUNNING_STAT
    rep2 = simulate_load(a, copy.deepcopy(a).state_dict())
    assert rep2.changed_keys == [] and all(r.status == MATCHED for r in rep2.keys.values())
    # a dict of Parameters with assign=True: the caller's Parameters are not touched (requires_grad stays False)
    params = {k: nn.Parameter(v.detach().clone(), requires_grad=False) for k, v in b.state_dict().items()
              if v.is_floating_point()}
    params["bn.num_batches_tracked"] = torch.tensor(3)
    rep3 = simulate_load(a, params, assign=True)
    assert not rep3.raises and all(not p.requires_grad for p in params.values() if isinstance(p, nn.Parameter))


def test_entry_selection_and_bad_entry(tmp_path):
    a, b = ModelA(), ModelA()
    path = tmp_path / "two.pt"
    torch.save({"model": a.state_dict(), "ema": {"inner": b.state_dict()}}, path)
    ck = open_checkpoint(path)
    rep = simulate_load(a, ck, entry="ema/inner")
    assert rep.entry == ["ema", "inner"] and set(rep.changed_keys) == {"linear.weight", "linear.bias"}
    rep = simulate_load(a, ck)
    assert rep.entry == ["model"] and rep.changed_keys == []
    rep = simulate_load(a, ck, entry="/")
    assert rep.raises and rep.missing_keys == ["linear.weight", "linear.bias"]
    assert rep.unexpected_keys == ["model", "ema"]
    real = copy.deepcopy(a)
    with pytest.raises(RuntimeError) as e:
        real.load_state_dict(torch.load(path, weights_only=True))
    assert str(e.value) == rep.error_message
    from explorer.errors import KeyNotFoundError
    with pytest.raises(KeyNotFoundError):
        simulate_load(a, ck, entry="nope")


def test_progress_and_cancel(tmp_path):
    model = trained_bn(0)
    path = tmp_path / "c.pt"
    torch.save(trained_bn(1).state_dict(), path)
    ck = open_checkpoint(path)
    calls = []
    rep = simulate_load(model, ck, progress=lambda d, t: calls.append((d, t)))
    assert calls and calls[-1][0] == len(calls) and all(d <= t for d, t in calls)
    n = {"i": 0}

    def stop():
        n["i"] += 1
        return n["i"] > 2

    with pytest.raises(Cancelled):
        simulate_load(model, ck, should_stop=stop)
    assert not rep.raises


def test_structural_only_assumes_loaded_keys_change(tmp_path):
    model = ModelA()
    path = tmp_path / "same.pt"
    torch.save(model.state_dict(), path)
    rep = simulate_load(model, open_checkpoint(path), compare_values=False)
    assert not rep.values_compared and not rep.raises
    assert all(r.changed and not r.certain for r in rep.keys.values())
    rep = simulate_load(model, open_checkpoint(path))
    assert rep.values_compared and rep.changed_keys == []


def ddp_checkpoint(tmp_path, prefix="module."):
    src = trained_bn(3)
    sd = src.state_dict()
    out = OrderedDict((prefix + k, v) for k, v in sd.items())
    out._metadata = OrderedDict(((prefix + k) if k else prefix[:-1], v) for k, v in sd._metadata.items())
    path = tmp_path / "ddp.pt"
    torch.save({"state_dict": out, "epoch": 1}, path)
    return src, path


# ---- command line -------------------------------------------------------------------------------------------

def cli(*args, cwd=ROOT):
    """The real command line, in a subprocess (a few calls: each one imports torch)."""
    return subprocess.run([sys.executable, "main.py", "simulate", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


class _Result:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def cli_in_process(capsys):
    """The same ``main()`` in this process (fast), for the many variations."""
    from explorer.cli import main

    def run(*args):
        capsys.readouterr()
        try:
            code = main(["simulate", *args])
        except SystemExit as e:  # argparse errors
            code = e.code
        out = capsys.readouterr()
        return _Result(code, out.out, out.err)
    return run


TOP = ["model", "checkpoint", "entry", "strict", "assign", "raises", "error_type", "error_message", "missing_keys",
       "unexpected_keys", "keys", "changed_keys", "changed_buffers", "suggestions",
       "warnings"]
PER_KEY = ["key", "kind", "status", "changed", "dtype_cast", "running_stat"]


def test_cli_example3_json_schema_and_exit_codes(tmp_path, cli_in_process):
    torch.manual_seed(0)
    path = tmp_path / "a.pt"
    torch.save(ModelA().state_dict(), path)
    r = cli("--model", "demo:ModelB", "--checkpoint", str(path), "--no-strict", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert list(out) == TOP
    assert out["model"] == "demo:ModelB" and out["checkpoint"] == str(path) and out["entry"] == []
    assert out["strict"] is False and out["assign"] is False and out["raises"] is False
    assert out["error_type"] is None and out["error_message"] is None
    assert out["missing_keys"] == ["different_linear.weight", "different_linear.bias"]
    assert out["unexpected_keys"] == ["linear.weight", "linear.bias"]
    assert out["changed_keys"] == [] and out["changed_buffers"] == []
    assert [k["key"] for k in out["keys"]] == ["different_linear.weight", "different_linear.bias", "linear.weight",
                                               "linear.bias"]
    for k in out["keys"]:
        assert list(k) == PER_KEY and k["kind"] in ("parameter", "buffer", "extra_state")
        assert k["changed"] is False and k["dtype_cast"] is None and k["running_stat"] is False
    assert [k["status"] for k in out["keys"]] == [MISSING, MISSING, UNEXPECTED, UNEXPECTED]
    r = cli("--model", "demo:ModelB", "--checkpoint", str(path), "--json")
    assert r.returncode == 1
    out = json.loads(r.stdout)
    real = ModelB()
    with pytest.raises(RuntimeError) as e:
        real.load_state_dict(torch.load(path, weights_only=True))
    assert out["raises"] is True and out["error_type"] == "RuntimeError" and out["error_message"] == str(e.value)
    r = cli_in_process("--model", "demo:ModelB", "--checkpoint", str(path))
    assert r.returncode == 1 and "WOULD RAISE RuntimeError" in r.stdout


def test_cli_file_spec_bn_dtype_and_assign(tmp_path, cli_in_process):
    (tmp_path / "mymodels.py").write_text(
        "import torch.nn as nn\n"
        "def make():\n"
        "    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))\n")
    torch.manual_seed(2)
    src = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    src.train()
    src(torch.randn(5, 3))
    sd = {k: (v.half() if v.is_floating_point() else v) for k, v in src.state_dict().items()}
    path = tmp_path / "half.safetensors"
    save_file(sd, str(path))
    r = cli_in_process("--model", f"{tmp_path / 'mymodels.py'}:make", "--checkpoint", str(path), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    keys = {k["key"]: k for k in out["keys"]}
    assert keys["0.weight"]["dtype_cast"] == ["float16", "float32"] and keys["0.weight"]["status"] == "dtype_cast"
    assert keys["1.running_mean"]["running_stat"] and keys["1.running_mean"]["status"] == "running_stat_overwritten"
    assert out["changed_buffers"] == ["1.running_mean", "1.running_var", "1.num_batches_tracked"]
    r = cli_in_process("--model", f"{tmp_path / 'mymodels.py'}:make", "--checkpoint", str(path), "--assign", "--json")
    out = json.loads(r.stdout)
    keys = {k["key"]: k for k in out["keys"]}
    assert r.returncode == 0 and out["assign"] is True and keys["0.weight"]["dtype_cast"] is None
    assert keys["0.weight"]["changed"] and keys["0.weight"]["status"] == CHANGED


def test_cli_bad_input_exit_2(tmp_path, cli_in_process):
    r = cli("--model", "demo:NoSuchModel", "--checkpoint", str(tmp_path / "x.pt"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr and r.stdout == ""
    path = tmp_path / "a.pt"
    torch.save(ModelA().state_dict(), path)
    r = cli_in_process("--model", "demo:ModelA", "--checkpoint", str(tmp_path / "missing.pt"))
    assert r.returncode == 2 and "no such file" in r.stderr
    r = cli_in_process("--model", "demo:ModelA", "--checkpoint", str(path), "--entry", "no/such")
    assert r.returncode == 2 and "no/such" in r.stderr and r.stderr.count("\n") == 1
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"PK\x03\x04 broken")
    r = cli_in_process("--model", "demo:ModelA", "--checkpoint", str(bad), "--json")
    assert r.returncode == 2 and r.stdout == ""
    r = cli_in_process("--model", "demo:ModelA", "--checkpoint", str(path), "--strict", "--no-strict")
    assert r.returncode == 2


def test_cli_model_into_model(cli_in_process):
    r = cli_in_process("--model", "demo:MyModel", "--checkpoint", "demo:ModelA", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["checkpoint"] == "demo:ModelA" and out["missing_keys"] == [] and out["raises"] is False


# ---- harder cases, checked against real torch with the differential harness ----------------------------------

def test_data_dependent_hook_structural_only_falls_back_to_values(tmp_path):
    from test_simulate_diff import CASES, check
    model_fn, sd_fn, _ = CASES["data_dependent_hook"]
    model = model_fn()
    path = tmp_path / "dd.pt"
    torch.save(sd_fn(), path)
    rep, exc = check(model, path, strict=True)
    assert exc is None and not rep.raises
    fast = simulate_load(model, open_checkpoint(path), compare_values=False)
    assert not fast.raises and fast.missing_keys == [] and fast.unexpected_keys == []


def test_swap_tensors_future_flag(tmp_path):
    from test_simulate_diff import CASES, check
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        for name in ("all_values_differ", "fp16_to_fp32", "shape_mismatch", "bn_running_stats", "tied_one_alias"):
            model_fn, sd_fn, _ = CASES[name]
            path = tmp_path / f"{name}.pt"
            torch.save(sd_fn(), path)
            for strict in (True, False):
                for assign in (False, True):
                    check(model_fn(), path, strict=strict, assign=assign)
    finally:
        torch.__future__.set_swap_module_params_on_conversion(False)


def test_hook_changing_a_parameter_in_place_is_flagged():
    class Init(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(2, 2)
            self.b = nn.Linear(2, 2)

            def reinit(module, incompatible):
                with torch.no_grad():
                    module.b.weight.zero_()
            self.register_load_state_dict_post_hook(reinit)

    torch.manual_seed(0)
    model = Init()
    sd = {k: v for k, v in model.state_dict().items() if k.startswith("a.")}
    rep = simulate_load(model, sd, strict=False)
    k = rep.keys["b.weight"]
    assert k.status == MISSING and k.changed and not k.certain
    assert any("b.weight" in n and "zero_" in n for n in rep.notes)
    assert not rep.keys["b.bias"].changed
    real = copy.deepcopy(model)
    real.load_state_dict(sd, strict=False)
    assert not torch.equal(real.b.weight, model.b.weight)  # torch really changes it


def test_assign_does_not_leak_into_the_next_simulation(tmp_path):
    """torch writes ``assign_to_params_buffers`` into the ``_metadata`` it is given: the checkpoint must not keep it."""
    from test_simulate_diff import real_load
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 2))
    sd = nn.Sequential(nn.Linear(2, 2)).state_dict()
    sd = OrderedDict((k, v.half()) for k, v in sd.items())
    sd._metadata = OrderedDict([("", {"version": 1}), ("0", {"version": 1})])
    path = tmp_path / "half.pt"
    torch.save(sd, path)
    ck = open_checkpoint(path)
    for assign in (True, False, True, False):
        rep = simulate_load(model, ck, assign=assign)
        exc, _, _, changed, _ = real_load(model, torch.load(path, weights_only=True), strict=True, assign=assign)
        assert exc is None and rep.changed_keys == changed
        assert (rep.keys["0.weight"].dtype_cast is None) == assign
    for key_sd in (sd, ):  # a plain dict side: its _metadata stays as it was
        simulate_load(model, key_sd, assign=True)
        assert key_sd._metadata["0"] == {"version": 1}


def test_cli_write_fixed(tmp_path, cli_in_process):
    src, path = ddp_checkpoint(tmp_path)
    out = tmp_path / "fixed.pt"
    r = cli_in_process("--model", "demo:MyBatchNormModel", "--checkpoint", str(path), "--write-fixed", str(out),
                       "--json")
    assert r.returncode == 1 and json.loads(r.stdout)["raises"] is True   # the original load would raise
    assert "wrote" in r.stderr and "consume_prefix_in_state_dict_if_present" in r.stderr
    r = cli_in_process("--model", "demo:MyBatchNormModel", "--checkpoint", str(out), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["missing_keys"] == []
    fixed = torch.load(out, weights_only=True)
    assert fixed._metadata["bn"]["version"] == 2 and torch.equal(fixed["bn.running_var"], src.bn.running_var)
    r = cli_in_process("--model", "demo:MyBatchNormModel", "--checkpoint", str(out), "--write-fixed",
                       str(tmp_path / "again.pt"))
    assert r.returncode == 2 and "no remap suggestion" in r.stderr and not (tmp_path / "again.pt").exists()


def test_lazy_module_is_left_uninitialized():
    import warnings
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Lazy modules are a new feature")
        model = nn.Sequential(nn.LazyLinear(3), nn.ReLU(), nn.Linear(3, 2))
    torch.manual_seed(0)
    src = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).state_dict()
    rep = simulate_load(model, src)
    assert not rep.raises and rep.changed_keys == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert rep.keys["0.weight"].shape_checkpoint == (3, 4)
    assert torch.nn.parameter.is_lazy(model[0].weight)   # the user's lazy module is not materialized
    real = copy.deepcopy(model)
    real.load_state_dict(src)
    assert not torch.nn.parameter.is_lazy(real[0].weight)


@pytest.mark.parametrize("kind", ["weight_norm_old", "spectral_norm_old", "spectral_norm_param"])
def test_norm_reparametrizations_against_a_fresh_model(tmp_path, kind):
    """Old-style weight_norm keeps a non-leaf ``weight`` attribute that ``copy.deepcopy`` refuses (torch's own
    limitation): the truth is a second model built the same way, the simulation must still be exact."""
    import warnings

    def make():
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"`torch\.nn\.utils\.weight_norm` is deprecated",
                                    category=FutureWarning)
            lin = nn.Linear(3, 4)
            if kind == "weight_norm_old":
                return nn.Sequential(torch.nn.utils.weight_norm(lin))
            if kind == "spectral_norm_old":
                return nn.Sequential(torch.nn.utils.spectral_norm(lin))
            return nn.Sequential(torch.nn.utils.parametrizations.spectral_norm(lin))

    src = make()
    with torch.no_grad():
        for p in src.parameters():
            p.add_(1)
    path = tmp_path / f"{kind}.pt"
    torch.save(src.state_dict(), path)
    model = make()
    for strict in (True, False):
        rep = simulate_load(model, open_checkpoint(path), strict=strict)
        truth = make()
        before = {k: v.detach().clone() for k, v in truth.state_dict().items()}
        res = truth.load_state_dict(torch.load(path, weights_only=True), strict=strict)
        changed = [k for k, v in truth.state_dict().items() if not torch.equal(v, before[k])]
        assert not rep.raises and rep.missing_keys == res.missing_keys and rep.unexpected_keys == res.unexpected_keys
        assert rep.changed_keys == changed and changed


def test_sharded_safetensors_folder(tmp_path):
    from test_simulate_diff import real_load
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    src = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    src.train()
    src(torch.randn(5, 4))
    sd = src.state_dict()
    keys = list(sd)
    shards = {"model-00001-of-00002.safetensors": keys[:4], "model-00002-of-00002.safetensors": keys[4:]}
    for name, ks in shards.items():
        save_file({k: sd[k].contiguous() for k in ks}, str(tmp_path / name))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: name for name, ks in shards.items() for k in ks}}))
    rep = simulate_load(model, open_checkpoint(tmp_path))
    exc, _, _, changed, _ = real_load(model, sd, strict=True, assign=False)
    assert exc is None and not rep.raises and rep.changed_keys == changed and len(changed) == 7


@pytest.mark.parametrize("name", ["all_values_differ", "fp16_to_fp32", "bn_running_stats", "shape_mismatch",
                                  "tied_both_differ", "private_pre_hook_scales", "zero_dim_from_1d", "nan_identical"])
def test_values_without_rerunning_torch_agree_with_the_full_values_pass(tmp_path, monkeypatch, name):
    """Most loads are compared straight from the structural pass (tensors read by key with pread, no memory maps);
    the rest re-run torch with real values. Both must give the same report, and the fast one must be taken when
    every copy came straight from the file."""
    import explorer.core.simulate.run as sim
    from test_simulate_diff import CASES
    model_fn, sd_fn, _ = CASES[name]
    path = tmp_path / f"{name}.pt"
    torch.save(sd_fn(), path)
    model = model_fn()
    passes = []
    real_run_pass = sim.run_pass
    monkeypatch.setattr(sim, "run_pass", lambda *a, **k: passes.append(k.get("compare")) or real_run_pass(*a, **k))
    fast = simulate_load(model, open_checkpoint(path), suggest=False)
    fast_passes = list(passes)
    monkeypatch.setattr(sim, "compare_from_structural", lambda *a, **k: False)
    passes.clear()
    full = simulate_load(model, open_checkpoint(path), suggest=False)
    assert passes == [False, True]
    assert fast.to_json() == full.to_json() and fast.running_stats == full.running_stats
    computed = name in ("private_pre_hook_scales", "zero_dim_from_1d")   # a hook computes / torch takes a view
    assert fast_passes == ([False, True] if computed else [False])
