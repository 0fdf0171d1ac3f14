"""Models built on the meta device (explorer.core.model_build): the meta route gives torch's own answer of
``load_state_dict`` (raise, message, missing and unexpected keys) on models that fit, and a model over the budget is
never allocated."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from explorer.core.model_build import BUDGET_ENV, build_model, default_budget, model_nbytes, parse_size
from explorer.errors import ModelSpecError

ROOT = Path(__file__).resolve().parents[2]


# ---- the corpus: models whose meta build is compared with the real one -------------------------------------------

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.bn = nn.BatchNorm1d(2)


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(7, 4)
        self.head = nn.Linear(4, 7, bias=False)
        self.head.weight = self.emb.weight


class Shared(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(2, 2)
        self.b = self.a


class Buffers(nn.Module):
    """Buffers of every kind, and tensors the factory creates on the CPU itself (they ignore the device context)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 3)
        self.register_buffer("table", torch.tensor([1.0, 2.0, 3.0]))   # torch.tensor follows the device context
        self.register_buffer("ids", torch.from_numpy(np.arange(3, dtype=np.float32)))
        self.register_buffer("cache", torch.zeros(4), persistent=False)
        self.scale = nn.Parameter(torch.ones(3, device="cpu"))


class Extra(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2)

    def get_extra_state(self):
        return {"version": 2}

    def set_extra_state(self, state):
        self.version = state["version"]


class Convs(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.attn = nn.MultiheadAttention(4, 2)
        self.rnn = nn.LSTM(4, 3)


class CustomLoad(nn.Module):
    """Its own state-dict code, writing through ``.data`` (PyTorch's test_load_state_dict_custom)."""

    def __init__(self):
        super().__init__()
        self.param = nn.Parameter(torch.ones(3))
        self.sub = nn.Linear(5, 5)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        destination[prefix + "serialized"] = self.param.data + 1

    def _load_from_state_dict(self, state_dict, prefix, *rest):
        self.param.data.copy_(state_dict[prefix + "serialized"] - 1)


class GrowsAChild(nn.Module):
    """A module registered during the load, by set_extra_state."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(2, 2)

    def get_extra_state(self):
        return {"n": 3}

    def set_extra_state(self, state):
        self.child = nn.Linear(state["n"], 1)


def _lazy():
    return nn.Sequential(nn.LazyLinear(4), nn.ReLU(), nn.LazyLinear(2))


ZOO = {"net": Net, "tied": Tied, "shared": Shared, "buffers": Buffers, "extra": Extra, "convs": Convs, "lazy": _lazy,
       "custom": lambda: nn.Sequential(CustomLoad()), "grows": GrowsAChild}


def _checkpoints(name: str) -> dict[str, dict]:
    """Checkpoints for model ``name``: its own, one with a key missing, an extra key, a shape mismatch, a prefix."""
    torch.manual_seed(3)
    if name == "lazy":
        src = _lazy()
        src(torch.randn(1, 5))
    elif name == "grows":
        src = GrowsAChild()
        src.set_extra_state({"n": 3})
    else:
        src = ZOO[name]()
    own = {k: (v.detach().clone() if isinstance(v, torch.Tensor) else v) for k, v in src.state_dict().items()}
    tensor_keys = [k for k, v in own.items() if isinstance(v, torch.Tensor)]
    first = tensor_keys[0]
    out = {"own": own,
           "missing": {k: v for k, v in own.items() if k != tensor_keys[-1]},
           "extra": {**own, "stray.weight": torch.zeros(2)},
           "shape": {**own, first: torch.zeros(*(s + 1 for s in own[first].shape))},
           "prefix": {f"module.{k}": v for k, v in own.items()}}
    return out


def _load(model: nn.Module, sd: dict, **kw):
    """torch's answer: (exception type and text or None, missing, unexpected, state-dict keys/shapes/dtypes after)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # the meta model warns that copying into meta tensors is a no-op
        try:
            res = model.load_state_dict(dict(sd), **kw)
            outcome = (None, list(res.missing_keys), list(res.unexpected_keys))
        except Exception as e:  # noqa: BLE001 - the exception is the answer
            outcome = ((type(e).__name__, str(e)), None, None)
    return outcome + (_layout(model),)


def _layout(model: nn.Module) -> dict:
    return {k: ("uninitialized" if nn.parameter.is_lazy(v) else (tuple(v.shape), v.dtype))
            if isinstance(v, torch.Tensor) else type(v).__name__ for k, v in model.state_dict().items()}


@pytest.mark.parametrize("kw", [{}, {"strict": False}, {"assign": True}])
@pytest.mark.parametrize("name", list(ZOO))
def test_meta_build_loads_like_the_real_model(name, kw):
    built = build_model(ZOO[name], budget_bytes=-1)   # nothing fits, not even the lazy model's 0 bytes: meta
    assert not built.materialized and "not materialized" in built.note
    meta = built.module
    assert _layout(meta) == _layout(ZOO[name]())
    answers = set()
    for case, sd in _checkpoints(name).items():
        real_answer, meta_answer = _load(ZOO[name](), sd, **kw), _load(build_model(ZOO[name], budget_bytes=-1).module,
                                                                         sd, **kw)
        assert meta_answer == real_answer, case
        answers.add(repr(real_answer[:3]))
    assert len(answers) >= 3   # the checkpoints give different answers (a raise, missing or unexpected keys)


def test_meta_model_tensors_are_meta_except_what_the_factory_made_on_the_cpu():
    built = build_model(Buffers, budget_bytes=0)
    m = built.module
    assert m.lin.weight.is_meta and m.cache.is_meta
    assert m.table.is_meta and not m.ids.is_meta and not m.scale.is_meta   # made on the CPU explicitly: real
    total, real, any_meta = model_nbytes(m)
    assert total == built.nbytes == 4 * (6 + 3 + 3 + 3 + 4 + 3) and real == 4 * (3 + 3) and any_meta
    assert "the factory created on the CPU itself" in built.note


def test_a_model_that_fits_is_built_for_real_with_the_values_of_one_call():
    torch.manual_seed(11)
    expected = Buffers().state_dict()
    torch.manual_seed(11)
    built = build_model(Buffers)
    assert built.materialized and built.note == "" and built.nbytes == 4 * 22
    got = built.module.state_dict()
    assert list(got) == list(expected) and all(torch.equal(got[k], expected[k]) for k in expected)
    # a factory that draws on the CPU whatever the device: the meta build's draws are given back
    draws = []

    def drawing():
        draws.append(torch.randn(2, device="cpu"))
        return nn.Linear(2, 2)
    torch.manual_seed(5)
    once = torch.randn(2)
    torch.manual_seed(5)
    build_model(drawing)
    assert len(draws) == 2 and torch.equal(draws[1], once)


def test_a_factory_returning_a_real_model_gives_that_model():
    existing = Net()
    built = build_model(lambda: existing, budget_bytes=0)
    assert built.module is existing and built.materialized and built.nbytes == 72


def test_the_meta_builds_warnings_are_shown_only_when_its_model_is_kept():
    def warns():
        warnings.warn("from the factory", UserWarning)
        return Net()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build_model(warns)
        assert [str(w.message) for w in caught] == ["from the factory"]   # the real build's only
        build_model(warns, budget_bytes=0)
        assert [str(w.message) for w in caught] == ["from the factory"] * 2


def test_tied_weights_are_counted_once():
    assert build_model(Tied, budget_bytes=0).nbytes == 4 * 7 * 4
    assert build_model(Shared, budget_bytes=0).nbytes == 4 * 6


def test_a_factory_that_reads_values_is_built_on_the_cpu_and_says_so():
    class Rates(nn.Module):
        def __init__(self):
            super().__init__()
            self.rates = torch.linspace(0, 1, 4).tolist()   # a meta tensor has no values to read
            self.lin = nn.Linear(2, 2)
    built = build_model(Rates, budget_bytes=0)
    assert built.materialized and not built.module.lin.weight.is_meta
    assert "cannot be built on the meta device" in built.note
    with pytest.raises(ZeroDivisionError):   # what the factory raises is raised
        build_model(lambda: 1 / 0)


def test_budget_from_the_environment(monkeypatch):
    monkeypatch.setenv(BUDGET_ENV, "1.5G")
    assert default_budget() == int(1.5 * 2 ** 30)
    assert parse_size("512 MB") == 512 * 2 ** 20 and parse_size("2e9") == 2 * 10 ** 9
    monkeypatch.setenv(BUDGET_ENV, "lots")
    with pytest.raises(ModelSpecError, match=BUDGET_ENV):
        default_budget()
    monkeypatch.setenv(BUDGET_ENV, "71")
    assert not build_model(Net).materialized   # 16 float32 values and the 8-byte batch counter: 72 bytes
    monkeypatch.setenv(BUDGET_ENV, "72")
    assert build_model(Net).materialized
    monkeypatch.delenv(BUDGET_ENV)
    assert build_model(Net).materialized


_BIG = """
import resource, sys
import torch.nn as nn   # first: torch's own libraries map far more address space than they use (a CUDA build: GBs)
with open("/proc/self/status") as f:
    vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (vm + 2 * 2**30, vm + 2 * 2**30))   # 2 GB more than torch took
from explorer.core.model_build import build_model
budget = int(sys.argv[1])
try:   # 8 layers of 16384 x 16384 float32: 8.6 GB if allocated
    built = build_model(lambda: nn.Sequential(*[nn.Linear(16384, 16384) for _ in range(8)]), budget_bytes=budget)
except (MemoryError, RuntimeError) as e:
    print("ALLOCATION FAILED", type(e).__name__)
    sys.exit(3)
print(built.materialized, built.nbytes, built.module[0].weight.is_meta)
print(built.note)
"""


@pytest.mark.parametrize("budget", [2 ** 30, 2 ** 40])
def test_a_model_over_the_budget_is_never_allocated(budget):
    """Under an address-space limit 2 GB above what importing torch took: with a 1 GB budget the 8.6 GB model stays on meta; with a budget it fits
    in, the real build is tried and fails, which proves the limit would catch an allocation."""
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(_BIG), str(budget)], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    if budget == 2 ** 30:
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert lines[0] == f"False {8 * (16384 * 16384 + 16384) * 4} True"
        assert lines[1].startswith("values of the model side are not materialized: 8.6 GB")
    else:
        assert out.returncode == 3 and "ALLOCATION FAILED" in out.stdout, (out.stdout, out.stderr)
