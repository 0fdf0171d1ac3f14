"""Differential suite: for every case, the simulation's prediction must equal what real ``load_state_dict`` does on a
fresh deep copy of the model -- raise or not, exception type and exact text, missing/unexpected keys and order, and
which keys change value, dtype or shape (also after a load that raises part way).

Every case is a tiny model plus a state dict, saved at test time as ``.pt`` and, where the state dict can be stored
there, as its ``.safetensors`` twin (which has no ``_metadata``), and run strict and non-strict.
"""
from __future__ import annotations

import copy
from collections import OrderedDict

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from explorer.core import open_checkpoint
from explorer.core.records import (DTYPE_CAST, MISSING, NOT_LOADED, RUNNING_STAT, SHAPE_MISMATCH, UNEXPECTED)
from explorer.core.simulate.run import simulate_load


# ---- the truth --------------------------------------------------------------------------------------------------

def _bits_equal(a, b) -> bool:
    if isinstance(a, torch.Tensor) != isinstance(b, torch.Tensor):
        return False
    if not isinstance(a, torch.Tensor):
        if isinstance(a, dict) and isinstance(b, dict):
            return a.keys() == b.keys() and all(_bits_equal(a[k], b[k]) for k in a)
        return a == b
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    x, y = a.detach().contiguous().reshape(-1), b.detach().contiguous().reshape(-1)
    if x.numel() == 0:
        return True
    return torch.equal(x.view(torch.uint8), y.view(torch.uint8))


def _values(model: nn.Module) -> "OrderedDict[str, object]":
    out = OrderedDict()
    for k, v in model.state_dict().items():
        out[k] = v.detach().clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v)
    return out


def real_load(model: nn.Module, sd, *, strict: bool, assign: bool):
    """Run torch on a fresh deep copy; return (exception, missing, unexpected, changed keys, finished)."""
    fresh = copy.deepcopy(model)
    before = _values(fresh)
    captured = {}

    def post(module, incompatible):
        captured["missing"] = list(incompatible.missing_keys)
        captured["unexpected"] = list(incompatible.unexpected_keys)

    fresh.register_load_state_dict_post_hook(post)
    exc = None
    try:
        res = fresh.load_state_dict(sd, strict=strict, assign=assign)
        captured["missing"], captured["unexpected"] = list(res.missing_keys), list(res.unexpected_keys)
    except Exception as e:  # noqa: BLE001 - the exception is the answer
        exc = e
    after = _values(fresh)
    changed = [k for k in before if k not in after or not _bits_equal(before[k], after[k])]
    return exc, captured.get("missing"), captured.get("unexpected"), changed, "missing" in captured


def check(model: nn.Module, path, *, strict: bool, assign: bool = False, fmt: str = "pt"):
    sd = torch.load(path, weights_only=True) if fmt == "pt" else load_file(str(path))
    exc, missing, unexpected, changed, finished = real_load(model, sd, strict=strict, assign=assign)
    before = _values(model)
    ck = open_checkpoint(path)
    rep = simulate_load(model, ck, strict=strict, assign=assign)
    # the user's model is untouched
    after = _values(model)
    assert list(before) == list(after) and all(_bits_equal(before[k], after[k]) for k in before)
    assert rep.raises == (exc is not None), (rep.error_message, exc)
    if exc is not None:
        assert rep.error_type == type(exc).__name__
        assert rep.error_message == str(exc)
    else:
        assert rep.error_type is None and rep.error_message is None
    if finished:
        assert rep.missing_keys == missing
        assert rep.unexpected_keys == unexpected
    assert rep.aborted == (exc is not None and not finished)
    assert rep.changed_keys == changed, (rep.changed_keys, changed)
    assert list(rep.keys)[:len(before)] == list(before)
    for k in rep.missing_keys:
        if k in rep.keys and rep.keys[k].status != SHAPE_MISMATCH:
            assert rep.keys[k].status == MISSING
    for k in rep.unexpected_keys:
        assert rep.keys[k].status == UNEXPECTED
    for r in rep.keys.values():
        assert r.explanation
    return rep, exc


# ---- models -----------------------------------------------------------------------------------------------------

def seeded(fn, seed=0):
    torch.manual_seed(seed)
    return fn()


def mlp():
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


def bn_net():
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))


def _trained_bn_model():
    m = seeded(bn_net, 1)
    m.train()
    m(torch.randn(8, 4))
    m(torch.randn(8, 4))
    return m.eval()


def trained_bn_sd():
    m = seeded(bn_net, 1)
    m.train()
    m(torch.randn(8, 4))
    m(torch.randn(8, 4))
    return m.state_dict()


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(5, 3)
        self.head = nn.Linear(3, 5, bias=False)
        self.head.weight = self.emb.weight


class WithExtra(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.config = {"scale": 1, "name": "a"}

    def get_extra_state(self):
        return dict(self.config)

    def set_extra_state(self, state):
        self.config = dict(state)


class Scalars(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("temperature", torch.tensor(1.0))
        self.register_buffer("steps", torch.tensor(3, dtype=torch.int64))
        self.alpha = nn.Parameter(torch.tensor(0.5))


class NonPersistent(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.register_buffer("cache", torch.zeros(2), persistent=False)


class NoneParts(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2, bias=False)   # bias registered as None
        self.head = None
        self.register_module("aux", None)


class RenameHook(nn.Module):
    """A module whose load pre-hook renames an old key (``old_proj.*`` -> ``proj.*``)."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3, 3)
        self.register_load_state_dict_pre_hook(self._rename)

    @staticmethod
    def _rename(module, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
        for name in ("weight", "bias"):
            old = f"{prefix}old_proj.{name}"
            if old in state_dict:
                state_dict[f"{prefix}proj.{name}"] = state_dict.pop(old)


def scale_hook(state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
    key = prefix + "weight"
    if key in state_dict:
        state_dict[key] = state_dict[key] * 2


class ScaleOnLoad(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.lin._register_load_state_dict_pre_hook(scale_hook)


class ForgivingPost(nn.Module):
    """A post hook that forgives missing keys of ``extra`` (so strict=True does not raise for them)."""

    def __init__(self):
        super().__init__()
        self.base = nn.Linear(3, 3)
        self.extra = nn.Linear(3, 3)

        def forgive(module, incompatible):
            incompatible.missing_keys[:] = [k for k in incompatible.missing_keys if not k.startswith("extra.")]
        self.register_load_state_dict_post_hook(forgive)


class StrictPost(nn.Module):
    """A post hook that adds an unexpected key: strict=True then raises."""

    def __init__(self):
        super().__init__()
        self.base = nn.Linear(3, 3)

        def complain(module, incompatible):
            incompatible.unexpected_keys.append("imaginary.key")
        self.register_load_state_dict_post_hook(complain)


class Transposing(nn.Linear):
    """A custom ``_load_from_state_dict`` that transposes checkpoints saved the other way round."""

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "weight"
        if key in state_dict and state_dict[key].shape == self.weight.shape[::-1]:
            state_dict[key] = state_dict[key].t()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class Exploding(nn.Module):
    """The second submodule's pre-hook raises: the first is already loaded when the exception escapes."""

    def __init__(self):
        super().__init__()
        self.first = nn.Linear(2, 2)
        self.second = nn.Linear(2, 2)

        def boom(module, state_dict, prefix, *rest):
            raise ValueError(f"refusing to load {prefix}")
        self.second.register_load_state_dict_pre_hook(boom)


class BadExtra(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2)

    def get_extra_state(self):
        return {"v": 1}

    def set_extra_state(self, state):
        if state.get("v") != 1:
            raise KeyError(f"unsupported extra state version {state.get('v')}")


class IntBuffer(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("counts", torch.arange(4, dtype=torch.int64))


def wn_model():
    from torch.nn.utils.parametrizations import weight_norm
    torch.manual_seed(0)
    return weight_norm(nn.Linear(3, 4))


def instnorm(track):
    return nn.Sequential(nn.Conv1d(2, 2, 1), nn.InstanceNorm1d(2, affine=True, track_running_stats=track))


def perturbed(model_fn, seed=5):
    m = seeded(model_fn, seed)
    return m.state_dict()


def drop(sd, *keys):
    out = OrderedDict((k, v) for k, v in sd.items() if k not in keys)
    if hasattr(sd, "_metadata"):
        out._metadata = sd._metadata
    return out


def with_meta(sd, meta):
    out = OrderedDict(sd)
    out._metadata = meta
    return out


def with_prefix(sd, prefix):
    out = OrderedDict((prefix + k, v) for k, v in sd.items())
    meta = getattr(sd, "_metadata", None)
    if meta is not None:
        out._metadata = OrderedDict(((prefix + k) if k else prefix[:-1], v) for k, v in meta.items())
    return out


def _tied_both_sd():
    torch.manual_seed(9)
    return OrderedDict([("emb.weight", torch.randn(5, 3)), ("head.weight", torch.randn(5, 3))])


def _nan_model():
    """A model holding a NaN: a checkpoint with the same bits must count as unchanged (NaN != NaN numerically)."""
    m = seeded(mlp)
    with torch.no_grad():
        m[0].weight[0, 0] = float("nan")
    return m


def _extra_sd():
    sd = seeded(WithExtra).state_dict()
    sd["_extra_state"] = {"scale": 2, "name": "b"}
    return sd


def _weight_g_v_sd():
    """An old-style weight-norm checkpoint (``weight_g`` / ``weight_v``) for a parametrized model."""
    torch.manual_seed(3)
    v = torch.randn(4, 3)
    g = torch.linalg.vector_norm(v, dim=1, keepdim=True) * 2
    return OrderedDict([("bias", torch.randn(4)), ("weight_g", g), ("weight_v", v)])


class DataDependent(nn.Module):
    """A pre-hook that looks at the checkpoint's values (meta tensors have none): rescales large weights."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 3)

        def rescale(module, state_dict, prefix, *rest):
            key = prefix + "lin.weight"
            if key in state_dict and float(state_dict[key].abs().max()) > 10:
                state_dict[key] = state_dict[key] / 100
        self.register_load_state_dict_pre_hook(rescale)


def _shared_views_sd():
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    return OrderedDict([("0.weight", base[:, :3].t()), ("0.bias", base[0, :3]), ("2.weight", base[1:, :3]),
                        ("2.bias", base[2, 2:])])


class Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("mask", torch.tensor([True, False, True]))
        self.register_buffer("codes", torch.tensor([1, -2, 3], dtype=torch.int8))
        self.d = nn.Parameter(torch.zeros(2, dtype=torch.float64))
        self.h = nn.Parameter(torch.zeros(2, dtype=torch.float16))


class SharedSubmodule(nn.Module):
    """One Linear under two names: torch loads it twice (once per name), the last key wins."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(2, 2)
        self.b = self.a


# name -> (model factory, state-dict factory, twin in safetensors?)
CASES = {
    "identical": (lambda: seeded(mlp), lambda: seeded(mlp).state_dict(), True),
    "all_values_differ": (lambda: seeded(mlp), lambda: perturbed(mlp), True),
    "missing_one": (lambda: seeded(mlp), lambda: drop(perturbed(mlp), "2.bias"), True),
    "unexpected_one": (lambda: seeded(mlp), lambda: OrderedDict(perturbed(mlp), extra=torch.ones(2)), True),
    "unexpected_nested": (lambda: seeded(mlp), lambda: OrderedDict(perturbed(mlp), **{"0.extra": torch.ones(2),
                                                                                      "9.weight": torch.ones(1)}),
                          True),
    "article_example3": (lambda: seeded(lambda: __import__("explorer.core.demo_models", fromlist=["x"]).ModelB()),
                         lambda: seeded(lambda: __import__("explorer.core.demo_models", fromlist=["x"]).ModelA())
                         .state_dict(), True),
    "shape_mismatch": (lambda: seeded(mlp),
                       lambda: OrderedDict(perturbed(mlp), **{"2.weight": torch.ones(5, 3), "2.bias": torch.ones(5)}),
                       True),
    "shape_mismatch_and_missing": (lambda: seeded(mlp),
                                   lambda: drop(OrderedDict(perturbed(mlp), **{"0.weight": torch.ones(3, 5)}),
                                                "2.bias"), True),
    "fp16_to_fp32": (lambda: seeded(mlp), lambda: OrderedDict((k, v.half()) for k, v in perturbed(mlp).items()), True),
    "bf16_to_fp32": (lambda: seeded(mlp),
                     lambda: OrderedDict((k, v.to(torch.bfloat16)) for k, v in perturbed(mlp).items()), True),
    "fp16_same_values": (lambda: seeded(lambda: mlp().half().float()),
                         lambda: OrderedDict((k, v.half()) for k, v in seeded(lambda: mlp().half().float())
                                             .state_dict().items()), True),
    "bn_running_stats": (lambda: seeded(bn_net), trained_bn_sd, True),
    "bn_nbt_missing_v2": (lambda: seeded(bn_net), lambda: drop(trained_bn_sd(), "1.num_batches_tracked"), True),
    # the model's own count is 2: BatchNorm fills the missing key with the model's tensor (a meta stand-in would not)
    "bn_nbt_missing_trained_model": (_trained_bn_model,
                                     lambda: drop(perturbed(bn_net), "1.num_batches_tracked"), True),
    "bn_nbt_missing_v1": (lambda: seeded(bn_net),
                          lambda: with_meta(drop(trained_bn_sd(), "1.num_batches_tracked"),
                                            OrderedDict([("", {"version": 1}), ("1", {"version": 1})])), False),
    "bn_nbt_missing_nometa": (lambda: seeded(bn_net),
                              lambda: OrderedDict(drop(trained_bn_sd(), "1.num_batches_tracked")), False),
    "bn_conv_demo": (lambda: seeded(lambda: __import__("explorer.core.demo_models", fromlist=["x"])
                                    .ConvBatchNormModel()),
                     lambda: seeded(lambda: __import__("explorer.core.demo_models", fromlist=["x"])
                                    .ConvBatchNormModel(), 4).state_dict(), True),
    "weight_norm_same": (wn_model, lambda: seeded(wn_model, 2).state_dict(), True),
    "weight_norm_old_keys": (wn_model, _weight_g_v_sd, True),
    "instnorm_no_track_vs_stats": (lambda: seeded(lambda: instnorm(False)),
                                   lambda: seeded(lambda: instnorm(True), 2).state_dict(), True),
    "instnorm_no_track_vs_stats_v1": (lambda: seeded(lambda: instnorm(False)),
                                      lambda: with_meta(OrderedDict(seeded(lambda: instnorm(True), 2).state_dict()),
                                                        OrderedDict([("", {"version": 1}), ("1", {"version": 1})])),
                                      False),
    "instnorm_track_both": (lambda: seeded(lambda: instnorm(True)),
                            lambda: seeded(lambda: instnorm(True), 2).state_dict(), True),
    "pre_hook_rename": (lambda: seeded(RenameHook),
                        lambda: OrderedDict(("old_proj." + k.split(".", 1)[1], v)
                                            for k, v in perturbed(RenameHook).items()), True),
    "private_pre_hook_scales": (lambda: seeded(ScaleOnLoad), lambda: seeded(ScaleOnLoad).state_dict(), True),
    "post_hook_forgives_missing": (lambda: seeded(ForgivingPost),
                                   lambda: drop(perturbed(ForgivingPost), "extra.weight", "extra.bias"), True),
    "post_hook_adds_unexpected": (lambda: seeded(StrictPost), lambda: perturbed(StrictPost), True),
    "custom_load_transposes": (lambda: seeded(lambda: Transposing(3, 2)),
                               lambda: OrderedDict(weight=torch.randn(3, 2), bias=torch.randn(2)), True),
    "non_persistent_in_ckpt": (lambda: seeded(NonPersistent),
                               lambda: OrderedDict(perturbed(NonPersistent), cache=torch.ones(2)), True),
    "none_param_and_submodule": (lambda: seeded(NoneParts),
                                 lambda: OrderedDict(perturbed(NoneParts), **{"lin.bias": torch.ones(2),
                                                                             "head.weight": torch.ones(2, 2),
                                                                             "aux.bias": torch.ones(1)}), True),
    "tied_one_alias": (lambda: seeded(Tied), lambda: drop(perturbed(Tied), "head.weight"), True),
    "tied_both_differ": (lambda: seeded(Tied), _tied_both_sd, True),
    "extra_state_changes": (lambda: seeded(WithExtra), _extra_sd, False),
    "extra_state_missing": (lambda: seeded(WithExtra), lambda: drop(_extra_sd(), "_extra_state"), True),
    "extra_state_unexpected": (lambda: seeded(lambda: nn.Linear(2, 2)),
                               lambda: OrderedDict(perturbed(lambda: nn.Linear(2, 2)), _extra_state={"x": 1}), False),
    "extra_state_raises": (lambda: seeded(BadExtra),
                           lambda: OrderedDict(perturbed(BadExtra), _extra_state={"v": 2}), False),
    "zero_dim": (lambda: seeded(Scalars),
                 lambda: OrderedDict(temperature=torch.tensor(2.0), steps=torch.tensor(3), alpha=torch.tensor(0.5)),
                 True),
    "zero_dim_from_1d": (lambda: seeded(Scalars),
                         lambda: OrderedDict(temperature=torch.tensor([2.0]), steps=torch.tensor([7]),
                                             alpha=torch.tensor([0.5])), True),
    "hook_raises_part_way": (lambda: seeded(Exploding), lambda: perturbed(Exploding), True),
    "non_tensor_value": (lambda: seeded(mlp), lambda: OrderedDict(perturbed(mlp), **{"2.bias": 3}), False),
    "float_into_int_buffer": (lambda: IntBuffer(), lambda: OrderedDict(counts=torch.tensor([0.5, 1.5, 2.0, 9.9])),
                              True),
    "ddp_prefix": (lambda: seeded(bn_net), lambda: with_prefix(trained_bn_sd(), "module."), True),
    "empty_checkpoint": (lambda: seeded(mlp), lambda: OrderedDict(), False),
    "nan_identical": (_nan_model, lambda: _nan_model().state_dict(), True),
    "data_dependent_hook": (lambda: seeded(DataDependent),
                            lambda: OrderedDict(perturbed(DataDependent), **{"lin.weight": torch.full((3, 3), 50.0)}),
                            True),
    "shared_submodule": (lambda: seeded(SharedSubmodule),
                         lambda: OrderedDict((k, v + (1 if k.startswith("b.") else 0))
                                             for k, v in perturbed(SharedSubmodule).items()), True),
    "shared_submodule_one_name": (lambda: seeded(SharedSubmodule),
                                  lambda: drop(perturbed(SharedSubmodule), "b.weight", "b.bias"), True),
    "shared_storage_views": (lambda: seeded(mlp), _shared_views_sd, True),
    "bool_int8_fp64_fp16": (Mixed, lambda: OrderedDict(mask=torch.tensor([True, True, False]),
                                                       codes=torch.tensor([1.9, -2.0, 300.0]),
                                                       d=torch.tensor([0.1, 0.2]),
                                                       h=torch.tensor([1e-8, 70000.0])), True),
}


def _save(sd, tmp_path, name):
    pt = tmp_path / f"{name}.pt"
    torch.save(sd, pt)
    return pt


def _save_twin(sd, tmp_path, name):
    st = tmp_path / f"{name}.safetensors"
    save_file({k: v.detach().clone().contiguous() for k, v in sd.items()}, str(st))
    return st


@pytest.mark.parametrize("strict", [True, False], ids=["strict", "nonstrict"])
@pytest.mark.parametrize("name", list(CASES))
def test_case_pt_and_twin(name, strict, tmp_path):
    model_fn, sd_fn, twin = CASES[name]
    model = model_fn()
    sd = sd_fn()
    check(model, _save(sd, tmp_path, name), strict=strict)
    if twin:
        check(model, _save_twin(sd, tmp_path, name), strict=strict, fmt="safetensors")


ASSIGN_CASES = ["bool_int8_fp64_fp16", "identical", "all_values_differ", "fp16_to_fp32", "bf16_to_fp32",
                "shape_mismatch", "missing_one",
                "bn_running_stats", "tied_one_alias", "zero_dim", "zero_dim_from_1d", "weight_norm_old_keys"]


@pytest.mark.parametrize("name", ASSIGN_CASES)
def test_case_assign(name, tmp_path):
    model_fn, sd_fn, twin = CASES[name]
    model = model_fn()
    sd = sd_fn()
    check(model, _save(sd, tmp_path, name), strict=True, assign=True)
    check(model, _save(sd, tmp_path, name), strict=False, assign=True)
    if twin:
        check(model, _save_twin(sd, tmp_path, name), strict=False, assign=True, fmt="safetensors")


# ---- statuses of specific cases ---------------------------------------------------------------------------------

def _run(name, tmp_path, fmt="pt", **kw):
    model_fn, sd_fn, _ = CASES[name]
    model = model_fn()
    sd = sd_fn()
    path = _save(sd, tmp_path, name) if fmt == "pt" else _save_twin(sd, tmp_path, name)
    rep, _ = check(model, path, fmt=fmt, **kw)
    return rep


def test_statuses_dtype_and_running_stats(tmp_path):
    rep = _run("fp16_to_fp32", tmp_path, strict=True)
    assert rep.keys["0.weight"].status == DTYPE_CAST and rep.keys["0.weight"].dtype_cast == ["float16", "float32"]
    rep = _run("bf16_to_fp32", tmp_path, strict=True)
    assert rep.keys["2.bias"].dtype_cast == ["bfloat16", "float32"]
    rep = _run("bn_running_stats", tmp_path, strict=True)
    for k in ("1.running_mean", "1.running_var", "1.num_batches_tracked"):
        assert rep.keys[k].status == RUNNING_STAT and rep.keys[k].running_stat and rep.keys[k].kind == "buffer"
    assert rep.running_stats["1.num_batches_tracked"] == {
        "before": {"shape": [], "dtype": "int64", "value": 0}, "after": {"shape": [], "dtype": "int64", "value": 2}}
    assert rep.running_stats["1.running_var"]["before"]["mean"] == 1.0
    assert rep.changed_buffers == ["1.running_mean", "1.running_var", "1.num_batches_tracked"]


def test_num_batches_tracked_depends_on_metadata(tmp_path):
    rep = _run("bn_nbt_missing_v2", tmp_path, strict=True)
    assert rep.raises and rep.missing_keys == ["1.num_batches_tracked"]
    assert "_metadata" in rep.keys["1.num_batches_tracked"].explanation
    rep = _run("bn_nbt_missing_v2", tmp_path, fmt="safetensors", strict=True)
    assert not rep.raises and rep.keys["1.num_batches_tracked"].changed is False
    rep = _run("bn_nbt_missing_v1", tmp_path, strict=True)
    assert not rep.raises


def test_tied_alias_missing_but_changed(tmp_path):
    rep = _run("tied_one_alias", tmp_path, strict=False)
    k = rep.keys["head.weight"]
    assert k.status == MISSING and k.changed and "tied" in k.explanation


def test_size_mismatch_raises_non_strict_and_copies_the_rest(tmp_path):
    rep = _run("shape_mismatch", tmp_path, strict=False)
    assert rep.raises and rep.error_type == "RuntimeError"
    assert rep.keys["2.weight"].status == SHAPE_MISMATCH and not rep.keys["2.weight"].changed
    assert rep.keys["0.weight"].changed          # copied before torch raised
    assert "half-loaded" in rep.explanation


def test_part_way_raise_marks_not_loaded(tmp_path):
    rep = _run("hook_raises_part_way", tmp_path, strict=True)
    assert rep.aborted and rep.error_type == "ValueError"
    assert rep.keys["first.weight"].changed and rep.keys["second.weight"].status == NOT_LOADED
    assert not rep.keys["second.weight"].changed


def test_none_submodule_keys_are_silently_ignored(tmp_path):
    rep = _run("none_param_and_submodule", tmp_path, strict=True)
    # ``self.head = None`` is a plain attribute (its keys are unexpected); a submodule *registered* as None is not
    assert rep.unexpected_keys == ["head.weight", "lin.bias"]
    assert rep.ignored_keys == ["aux.bias"]
    assert "None" in rep.keys["lin.bias"].explanation and "no submodule 'head'" in rep.keys["head.weight"].explanation


def test_article_example3_truth(tmp_path):
    """ModelA's checkpoint into ModelB with strict=False: nothing is assigned by order."""
    rep = _run("article_example3", tmp_path, strict=False)
    assert not rep.raises
    assert rep.missing_keys == ["different_linear.weight", "different_linear.bias"]
    assert rep.unexpected_keys == ["linear.weight", "linear.bias"]
    assert rep.changed_keys == [] and rep.changed_buffers == []
    assert [r.status for r in rep.keys.values()] == [MISSING, MISSING, UNEXPECTED, UNEXPECTED]


def test_case_count():
    n = len(CASES) * 2 + len(ASSIGN_CASES)
    assert len(CASES) >= 40 and n >= 80
