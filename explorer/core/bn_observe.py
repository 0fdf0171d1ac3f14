"""The BatchNorm demo's models and what is observed of them: variants, BatchNorm buffers, the output of a fixed input
in train and in eval mode, snapshots for going back and forth, loads, and the :class:`Step` records of the log."""
from __future__ import annotations

import contextlib
import copy
import io
from collections import OrderedDict
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from .demo_models import ConvBatchNormModel, MyBatchNormModel

LEFT, RIGHT = "left", "right"
SIDES = (LEFT, RIGHT)


class DemoAction(StrEnum):
    """The demo's actions: method names of :class:`explorer.core.bn_demo.BatchNormDemo` and ``Step.action``."""
    FORWARD_TRAIN = "forward_train"
    FORWARD_EVAL = "forward_eval"
    FORWARD = "forward"
    MODEL_TRAIN = "model_train"
    MODEL_EVAL = "model_eval"
    FREEZE_BN = "freeze_bn"
    SET_MOMENTUM = "set_momentum"
    SET_TRACK_RUNNING_STATS = "set_track_running_stats"
    TOGGLE_TRACK_RUNNING_STATS = "toggle_track_running_stats"
    SAVE_AND_LOAD = "save_and_load"
    LOAD_DEFAULT = "load_default"
    LOAD_OLD_CHECKPOINT = "load_old_checkpoint"


BATCH_SIZE = 8


@dataclass(frozen=True)
class Variant:
    name: str
    model_class: type
    input_shape: tuple[int, ...]


VARIANTS: dict[str, Variant] = {
    "linear": Variant("linear", MyBatchNormModel, (BATCH_SIZE, 10)),
    "conv": Variant("conv", ConvBatchNormModel, (BATCH_SIZE, 3, 6, 6)),
}


def make_batch(variant: Variant, seed: int, k: int) -> torch.Tensor:
    """Batch ``k`` of the demo: batch 0 is the fixed input every observation uses; batch k > 0 is drawn from a
    shifted, wider distribution (another data set) so statistics visibly move."""
    g = torch.Generator().manual_seed(seed + 100 + k)
    return torch.randn(variant.input_shape, generator=g) * (1.0 + 0.5 * k) + 0.5 * k


def make_model(variant: Variant, seed: int) -> nn.Module:
    """A fresh instance whose initial weights depend only on ``seed``; the global RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return variant.model_class()


@contextlib.contextmanager
def single_thread():
    """The demo's tensors are tiny: torch's intra-op thread pool only adds latency (9 ms instead of 0.1 ms per
    batch_norm on a busy 2-core machine). Run on one thread and give the setting back."""
    n = torch.get_num_threads()
    if n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def bn_modules(model: nn.Module) -> list[tuple[str, _BatchNorm]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _BatchNorm)]


# --- observations ----------------------------------------------------------------------------------------------------

def _floats(t: torch.Tensor | None) -> tuple[float, ...] | None:
    return None if t is None else tuple(float(v) for v in t.detach().reshape(-1).tolist())


@dataclass(frozen=True)
class BNState:
    """What one BatchNorm module holds and how it is set, as observed."""
    running_mean: tuple[float, ...] | None
    running_var: tuple[float, ...] | None
    num_batches_tracked: int | None
    training: bool
    momentum: float | None
    track_running_stats: bool

    @classmethod
    def of(cls, m: _BatchNorm) -> "BNState":
        nbt = m.num_batches_tracked
        return cls(_floats(m.running_mean), _floats(m.running_var), None if nbt is None else int(nbt),
                   bool(m.training), m.momentum, bool(m.track_running_stats))

    def buffers(self) -> dict[str, Any]:
        return {"running_mean": _list(self.running_mean), "running_var": _list(self.running_var),
                "num_batches_tracked": self.num_batches_tracked}

    def to_json(self) -> dict[str, Any]:
        return {**self.buffers(), "training": self.training, "momentum": self.momentum,
                "track_running_stats": self.track_running_stats}


def _list(v):
    return None if v is None else list(v)


@dataclass(frozen=True)
class SideObservation:
    """One side as observed: its BatchNorm modules, the parent's mode, and the outputs of the fixed input (batch 0)
    with the whole model in train mode and in eval mode -- each computed on a deep copy."""
    modules: dict[str, BNState]
    training: bool
    output_train: tuple[tuple[float, ...], ...]
    output_eval: tuple[tuple[float, ...], ...]

    def to_json(self) -> dict[str, Any]:
        return {"training": self.training, "modules": {n: s.to_json() for n, s in self.modules.items()},
                "output_train": [list(r) for r in self.output_train],
                "output_eval": [list(r) for r in self.output_eval]}


def observe(model: nn.Module, x: torch.Tensor) -> SideObservation:
    modules = {n: BNState.of(m) for n, m in bn_modules(model)}
    with torch.no_grad(), single_thread():
        train_copy = copy.deepcopy(model).train()
        out_train = train_copy(x)
        eval_copy = copy.deepcopy(model).eval()
        out_eval = eval_copy(x)
    rows = lambda t: tuple(tuple(float(v) for v in r) for r in t.reshape(t.shape[0], -1).tolist())  # noqa: E731
    return SideObservation(modules, bool(model.training), rows(out_train), rows(out_eval))


# --- snapshots (for going back and forth) ----------------------------------------------------------------------------

@dataclass(frozen=True)
class SideSnapshot:
    """Everything needed to rebuild a side: its state dict (cloned, with ``_metadata``) and what a state dict does not
    hold: each module's mode, and each BatchNorm's momentum and track_running_stats."""
    state_dict: OrderedDict
    training: dict[str, bool]
    bn_config: dict[str, tuple[float | None, bool]]

    @classmethod
    def of(cls, model: nn.Module) -> "SideSnapshot":
        sd = model.state_dict()
        cloned = OrderedDict((k, v.detach().clone()) for k, v in sd.items())
        cloned._metadata = copy.deepcopy(getattr(sd, "_metadata", None))  # type: ignore[attr-defined]
        return cls(cloned, {n: m.training for n, m in model.named_modules()},
                   {n: (m.momentum, m.track_running_stats) for n, m in bn_modules(model)})

    def restore(self, variant: Variant) -> nn.Module:
        model = make_model(variant, 0)
        model.load_state_dict(self.state_dict, strict=True)
        for n, m in model.named_modules():
            m.training = self.training[n]
        for n, m in bn_modules(model):
            m.momentum, m.track_running_stats = self.bn_config[n]
        return model


@dataclass(frozen=True)
class SessionSnapshot:
    left: SideSnapshot
    right: SideSnapshot | None


# --- steps -----------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LoadResult:
    """What ``load_state_dict`` answered: the missing/unexpected keys it returned, or the error it raised."""
    strict: bool
    missing_keys: tuple[str, ...] = ()
    unexpected_keys: tuple[str, ...] = ()
    error: str | None = None
    checkpoint_keys: tuple[str, ...] = ()
    checkpoint_metadata: dict | None = None

    def to_json(self) -> dict[str, Any]:
        return {"strict": self.strict, "missing_keys": list(self.missing_keys),
                "unexpected_keys": list(self.unexpected_keys), "error": self.error,
                "checkpoint_keys": list(self.checkpoint_keys),
                "checkpoint_metadata": None if self.checkpoint_metadata is None
                else {k: dict(v) for k, v in self.checkpoint_metadata.items()}}


@dataclass(frozen=True)
class Step:
    """One action and what it did, as observed."""
    action: str
    params: dict[str, Any]
    before: dict[str, SideObservation | None]
    after: dict[str, SideObservation | None]
    sentence: str
    load: LoadResult | None = None
    checkpoint: dict[str, BNState] | None = field(default=None, repr=False)
    created: tuple[str, ...] = ()
    snapshot: SessionSnapshot | None = field(default=None, repr=False, compare=False)

    @property
    def label(self) -> str:
        args = ", ".join(f"{k}={_fmt_param(v)}" for k, v in self.params.items())
        return f"{ACTION_LABELS.get(self.action, self.action)} [{args}]"

    def to_json(self) -> dict[str, Any]:
        side = lambda o: None if o is None else o.to_json()  # noqa: E731
        return {"action": self.action, "params": dict(self.params), "label": self.label, "sentence": self.sentence,
                "created": list(self.created),
                "load": None if self.load is None else self.load.to_json(),
                "before": {s: side(self.before.get(s)) for s in SIDES},
                "after": {s: side(self.after.get(s)) for s in SIDES}}


def _fmt_param(v) -> str:
    return "None" if v is None else str(v)


ACTION_LABELS = {
    DemoAction.FORWARD_TRAIN: "forward in train mode",
    DemoAction.FORWARD_EVAL: "forward in eval mode",
    DemoAction.FORWARD: "forward as the modules are set",
    DemoAction.MODEL_TRAIN: "model.train()",
    DemoAction.MODEL_EVAL: "model.eval()",
    DemoAction.FREEZE_BN: "freeze BatchNorm (eval on BN modules only)",
    DemoAction.SET_MOMENTUM: "set momentum",
    DemoAction.SET_TRACK_RUNNING_STATS: "set track_running_stats",
    DemoAction.SAVE_AND_LOAD: "save a state dict, load it into the other side",
    DemoAction.LOAD_DEFAULT: "load a never-trained checkpoint",
    DemoAction.LOAD_OLD_CHECKPOINT: "load an old-version checkpoint without num_batches_tracked",
}


def round_trip(sd: OrderedDict) -> OrderedDict:
    """What saving to a file and loading it back gives (``_metadata`` survives on an OrderedDict)."""
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def old_version_state_dict(model: nn.Module, metadata: str) -> OrderedDict:
    """``model``'s state dict as a pre-0.4.1 torch saved it: no ``num_batches_tracked``. See
    :meth:`BatchNormDemo.load_old_checkpoint` for ``metadata``."""
    sd = model.state_dict()
    names = {f"{n}." if n else "" for n, _ in bn_modules(model)}
    out = OrderedDict((k, v.detach().clone()) for k, v in sd.items()
                      if not (k.endswith("num_batches_tracked") and k[:-len("num_batches_tracked")] in names))
    if metadata != "none":
        meta = copy.deepcopy(sd._metadata)  # type: ignore[attr-defined]
        if metadata == "old":
            for n, _ in bn_modules(model):
                meta[n]["version"] = 1
        out._metadata = meta  # type: ignore[attr-defined]
    return out


def load_state(model: nn.Module, ckpt: OrderedDict, strict: bool) -> tuple[LoadResult, dict[str, BNState]]:
    """``model.load_state_dict(ckpt, strict=strict)`` and what it was given: (the result, the checkpoint's BatchNorm
    buffers per module)."""
    meta = getattr(ckpt, "_metadata", None)
    info = dict(strict=bool(strict), checkpoint_keys=tuple(ckpt),
                checkpoint_metadata=None if meta is None else copy.deepcopy(dict(meta)))
    ckpt_stats = {}
    for name, bn in bn_modules(model):
        p = f"{name}." if name else ""
        rm, rv, nbt = ckpt.get(p + "running_mean"), ckpt.get(p + "running_var"), ckpt.get(p + "num_batches_tracked")
        ckpt_stats[name] = BNState(_floats(rm), _floats(rv), None if nbt is None else int(nbt), bn.training,
                                   bn.momentum, bn.track_running_stats)
    try:
        r = model.load_state_dict(ckpt, strict=strict)
    except RuntimeError as e:
        return LoadResult(error=str(e), **info), ckpt_stats
    return LoadResult(missing_keys=tuple(r.missing_keys), unexpected_keys=tuple(r.unexpected_keys),
                      **info), ckpt_stats
