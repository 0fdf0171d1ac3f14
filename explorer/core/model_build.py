"""Models that are never allocated: a model is built on the meta device first (shapes, dtypes, no storage) and built
for real on the CPU only when its parameters and buffers fit a memory budget. ``hf:DIR_OR_CONFIG_JSON[:CLASS]`` specs
build the model a transformers ``config.json`` describes, through the same route.

Only the values need a real build: the keys, shapes and dtypes of a meta model, the raise of ``load_state_dict`` and
its message, the missing and unexpected keys are those of the real model. A factory that creates tensors on the CPU
explicitly (``torch.zeros(..., device="cpu")``, ``register_buffer(torch.tensor(...))``) ignores the device context:
those tensors are real after the meta build; a factory that allocates huge CPU tensors regardless cannot be stopped.
"""
from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from ..errors import ModelSpecError
from .model_spec import HF_PREFIX, is_hf_spec

BUDGET_ENV = "STATE_DICT_EXPLORER_MODEL_BUDGET"
HF_INSTALL = 'pip install -e ".[hf]"'

_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?(?:[eE]\d+)?)\s*([KMGT]?)i?B?\s*\Z", re.I)
_UNITS = {"": 1, "K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}
_CLASS_NAME = re.compile(r"[A-Za-z_]\w*\Z")


@dataclass
class BuiltModel:
    """A model a factory built: ``materialized`` when its values are real (built on the CPU), else it lives on the meta
    device (except what its factory created on the CPU itself); ``nbytes`` of its parameters and buffers; ``note``
    says what the side lacks ("" when nothing)."""

    module: nn.Module
    materialized: bool
    nbytes: int
    note: str = ""


def physical_memory() -> int | None:
    """Bytes of RAM of this machine, None when the system does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def parse_size(text: str) -> int:
    """``"8G"``, ``"512 MB"``, ``"1.5GiB"``, ``"2e9"`` -> bytes (K/M/G/T are powers of 1024)."""
    m = _SIZE.match(text)
    if m is None:
        raise ModelSpecError(f"{BUDGET_ENV}={text!r}: a size is a number of bytes, optionally with K, M, G or T "
                             "(e.g. 8G)")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def default_budget() -> int:
    """The memory a model side may take when built for real: ``$STATE_DICT_EXPLORER_MODEL_BUDGET`` if set, else a
    quarter of physical RAM (4 GB when the system does not say how much it has)."""
    text = os.environ.get(BUDGET_ENV, "").strip()
    if text:
        return parse_size(text)
    ram = physical_memory()
    return ram // 4 if ram else 4 * 2 ** 30


def human_bytes(n: int) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def _tensors(model: nn.Module) -> list[torch.Tensor]:
    """Each parameter and buffer once (tied weights are one tensor), non-persistent buffers included: all of it is
    allocated by a real build."""
    seen: dict[int, torch.Tensor] = {}
    for t in (*model.parameters(), *model.buffers()):
        seen.setdefault(id(t), t)
    return list(seen.values())


def _nbytes(t: torch.Tensor) -> int:
    if nn.parameter.is_lazy(t):   # no shape until the first forward or a load
        return 0
    return t.numel() * t.element_size()


def model_nbytes(model: nn.Module) -> tuple[int, int, bool]:
    """(bytes of all parameters and buffers, bytes of those already real, whether any is on the meta device)."""
    total = real = 0
    any_meta = False
    for t in _tensors(model):
        n = _nbytes(t)
        total += n
        if t.is_meta:
            any_meta = True
        elif not nn.parameter.is_lazy(t):
            real += n
    return total, real, any_meta


def build_model(factory: Callable[[], nn.Module], *, budget_bytes: int | None = None) -> BuiltModel:
    """Call ``factory`` under ``torch.device("meta")``; when the parameters and buffers fit ``budget_bytes`` (default
    :func:`default_budget`), call it again without the device context to build the model for real, else keep the meta
    model. The random state is restored after the meta build, so the real build draws exactly what a single call of
    the factory draws; the meta build's warnings are shown only when its model is kept. A factory that returns a
    model with nothing on meta (an existing instance) gives that model. A factory that cannot run on the meta device
    (it reads a value: ``.item()``, ``.tolist()``, ``.to("cpu")``) is built for real, as before, and the note says
    why. What the factory raises is raised."""
    budget = default_budget() if budget_bytes is None else budget_bytes
    try:
        with warnings.catch_warnings(record=True) as caught, torch.random.fork_rng(devices=[]), torch.device("meta"):
            warnings.simplefilter("always")
            meta = factory()
    except (RuntimeError, NotImplementedError) as e:
        if "meta" not in str(e).lower():
            raise
        model = factory()
        return BuiltModel(model, True, model_nbytes(model)[0] if isinstance(model, nn.Module) else 0,
                          f"the model cannot be built on the meta device ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:160]}); it was built on the CPU without a size check")
    if not isinstance(meta, nn.Module):   # the caller says what the factory returned
        return BuiltModel(meta, False, 0)
    total, real, any_meta = model_nbytes(meta)
    if not any_meta:   # nothing followed the device context: the model is real already
        return BuiltModel(meta, True, total)
    if total <= budget:
        del meta
        model = factory()
        return BuiltModel(model, True, model_nbytes(model)[0] if isinstance(model, nn.Module) else total)
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    note = (f"values of the model side are not materialized: {human_bytes(total)} of parameters and buffers over "
            f"the {human_bytes(budget)} budget (--model-budget or {BUDGET_ENV} changes it)")
    if real:
        note += f"; {human_bytes(real)} of it the factory created on the CPU itself"
    return BuiltModel(meta, False, total, note)


# ---- hf: specs ------------------------------------------------------------------------------------------------------

def parse_hf_spec(spec: str) -> tuple[str, str | None]:
    """``hf:DIR_OR_CONFIG_JSON[:CLASS]`` -> (path of the config.json, CLASS or None). A ':' followed by a class name
    ends the path unless what is left is a drive letter (``hf:C:\\m``)."""
    if not is_hf_spec(spec):
        raise ModelSpecError(f"{spec!r}: an hf spec is hf:DIR_OR_CONFIG_JSON[:CLASS]")
    rest, cls = spec[len(HF_PREFIX):], None
    left, sep, right = rest.rpartition(":")
    if sep and left and _CLASS_NAME.match(right) and not (len(left) == 1 and left.isalpha()):
        rest, cls = left, right
    if not rest:
        raise ModelSpecError(f"{spec!r}: name a folder holding config.json or the config file: hf:DIR[:CLASS]")
    path = os.path.join(rest, "config.json") if os.path.isdir(rest) else rest
    if not os.path.isfile(path):
        raise ModelSpecError(f"{spec!r}: no such file {path!r} (an hf spec names a folder holding config.json or "
                             "the config file)")
    return path, cls


def _read_config(spec: str, path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ModelSpecError(f"{spec!r}: cannot read {path} as JSON ({type(e).__name__}: {e})") from None
    if not isinstance(config, dict):
        raise ModelSpecError(f"{spec!r}: {path} holds a {type(config).__name__}, not a transformers config object")
    return config


def _import_transformers(spec: str):
    try:
        import transformers
    except ImportError:
        raise ModelSpecError(f"{spec!r}: hf: specs need transformers; install it with {HF_INSTALL}") from None
    return transformers


def _remote_code_error(spec: str, what: str) -> ModelSpecError:
    return ModelSpecError(f"{spec!r}: {what} needs code from the model folder (auto_map / trust_remote_code); the "
                          "explorer never runs code from a folder: write a factory file that builds the model "
                          "(file.py:build) instead")


def hf_model_class(spec: str, config: dict, class_name: str | None):
    """(the transformers config object, the model class) a config.json and an optional class name describe."""
    transformers = _import_transformers(spec)
    from transformers import CONFIG_MAPPING
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise ModelSpecError(f"{spec!r}: config.json has no model_type")
    if model_type not in CONFIG_MAPPING:
        if "auto_map" in config:
            raise _remote_code_error(spec, f"model_type {model_type!r}")
        raise ModelSpecError(f"{spec!r}: transformers {transformers.__version__} does not know model_type "
                             f"{model_type!r}")
    archs = config.get("architectures") or []
    if class_name is None:
        if not archs or not isinstance(archs[0], str):
            raise ModelSpecError(f"{spec!r}: config.json names no architectures; name the class: "
                                 f"hf:DIR:{CONFIG_MAPPING[model_type].__name__.replace('Config', 'Model')}")
        class_name = archs[0]
    cls = getattr(transformers, class_name, None) if _CLASS_NAME.match(class_name) else None
    if cls is None:
        if isinstance(config.get("auto_map"), dict) and any(class_name in str(v) or class_name == k
                                                           for k, v in config["auto_map"].items()):
            raise _remote_code_error(spec, class_name)
        raise ModelSpecError(f"{spec!r}: transformers {transformers.__version__} has no model class {class_name!r}")
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise ModelSpecError(f"{spec!r}: transformers.{class_name} is not a model class (PreTrainedModel)")
    try:
        hf_config = CONFIG_MAPPING[model_type].from_dict(config)
    except Exception as e:  # transformers' own check of the config failed: say so, with its message
        raise ModelSpecError(f"{spec!r}: transformers refuses the config ({type(e).__name__}: "
                             f"{str(e).splitlines()[0][:200] if str(e) else ''})") from e
    return hf_config, cls


def build_hf(spec: str, *, budget_bytes: int | None = None) -> BuiltModel:
    """The model an ``hf:`` spec describes, through :func:`build_model` (so a 70B config builds on meta). Nothing of
    the folder but config.json is read, and no code from it runs."""
    path, class_name = parse_hf_spec(spec)
    hf_config, cls = hf_model_class(spec, _read_config(spec, path), class_name)

    try:
        return build_model(lambda: cls._from_config(hf_config), budget_bytes=budget_bytes)
    except Exception as e:  # transformers failed on this config: say so, with its message
        first = str(e).splitlines()[0][:200] if str(e) else ""
        raise ModelSpecError(f"{spec!r}: {cls.__name__}._from_config raised {type(e).__name__}: {first}") from e
