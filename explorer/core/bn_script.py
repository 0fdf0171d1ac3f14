"""The torch-only script a demo session exports: it replays the steps and asserts the same buffer values."""
from __future__ import annotations

import inspect

import torch

from ..errors import DemoActionError
from .bn_observe import RIGHT, SIDES, DemoAction, Step

_SCRIPT_HEAD = '''\
"""BatchNorm demo exported by State-Dict Explorer: replays {n} step(s) with torch only and checks every buffer.

Variant {variant!r}, seed {seed}, recorded with torch {torch_version}. Run: python THIS_FILE.py
Each step prints one JSON line with the observed buffers and asserts they match what the explorer recorded.
"""
import copy
import io
import json
from collections import OrderedDict

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

{model_source}

SEED = {seed}
INPUT_SHAPE = {shape}
torch.set_num_threads(1)  # as the explorer ran it, so the float sums match bit for bit


def make_model(seed):
    torch.manual_seed(seed)
    return {model_class}()


def batch(k):
    g = torch.Generator().manual_seed(SEED + 100 + k)
    return torch.randn(INPUT_SHAPE, generator=g) * (1.0 + 0.5 * k) + 0.5 * k


def bn_modules(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _BatchNorm)]


def round_trip(sd):
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def old_version(model, metadata):
    """The state dict without num_batches_tracked; metadata: 'old' (BN version 1), 'none' (no _metadata), 'current'."""
    sd = model.state_dict()
    prefixes = {{n + "." if n else "" for n, _ in bn_modules(model)}}
    out = OrderedDict((k, v.clone()) for k, v in sd.items()
                      if not (k.endswith("num_batches_tracked") and k[:-len("num_batches_tracked")] in prefixes))
    if metadata != "none":
        out._metadata = copy.deepcopy(sd._metadata)
        if metadata == "old":
            for n, _ in bn_modules(model):
                out._metadata[n]["version"] = 1
    return out


def load(model, ckpt, strict):
    try:
        result = model.load_state_dict(ckpt, strict=strict)
        print("  load_state_dict:", result)
    except RuntimeError as e:
        print("  load_state_dict raised:", " ".join(str(e).split()))


def check(step, side, model, expected):
    got = {{}}
    for n, m in bn_modules(model):
        got[n] = {{"running_mean": m.running_mean.tolist(), "running_var": m.running_var.tolist(),
                  "num_batches_tracked": int(m.num_batches_tracked)}}
    print(json.dumps({{"step": step, "side": side, "buffers": got}}))
    for n, want in expected.items():
        for key in ("running_mean", "running_var"):
            assert torch.allclose(torch.tensor(got[n][key]), torch.tensor(want[key]), rtol=1e-5, atol=1e-6), \\
                f"step {{step}} {{side}} {{n}}.{{key}}: {{got[n][key]}} != {{want[key]}}"
        assert got[n]["num_batches_tracked"] == want["num_batches_tracked"], (step, side, n)


left = make_model(SEED + {left_off})
right = None
'''


def _script_action(step: Step, demo) -> list[str]:
    p = step.params
    a = step.action
    if a in (DemoAction.FORWARD_TRAIN, DemoAction.FORWARD_EVAL, DemoAction.FORWARD):
        lines = []
        if a == DemoAction.FORWARD_TRAIN:
            lines.append(f"{p['side']}.train()")
        elif a == DemoAction.FORWARD_EVAL:
            lines.append(f"{p['side']}.eval()")
        lines += ["with torch.no_grad():", f"    {p['side']}(batch({p['batch']}))"]
        return lines
    if a == DemoAction.MODEL_TRAIN:
        return [f"{p['side']}.train()"]
    if a == DemoAction.MODEL_EVAL:
        return [f"{p['side']}.eval()"]
    if a == DemoAction.FREEZE_BN:
        return [f"for _, bn in bn_modules({p['side']}):", "    bn.eval()"]
    if a == DemoAction.SET_MOMENTUM:
        return [f"for _, bn in bn_modules({p['side']}):", f"    bn.momentum = {p['momentum']!r}"]
    if a == DemoAction.SET_TRACK_RUNNING_STATS:
        return [f"for _, bn in bn_modules({p['side']}):", f"    bn.track_running_stats = {p['enabled']!r}"]
    lines = [f"right = make_model(SEED + {demo.RIGHT_SEED_OFFSET})"] if RIGHT in step.created else []
    if a == DemoAction.SAVE_AND_LOAD:
        return lines + [f"load({p['target']}, round_trip({p['source']}.state_dict()), strict={p['strict']!r})"]
    if a == DemoAction.LOAD_DEFAULT:
        return lines + [f"load({p['target']}, round_trip(make_model(SEED + {demo.DEFAULT_SEED_OFFSET}).state_dict()),"
                        f" strict={p['strict']!r})"]
    if a == DemoAction.LOAD_OLD_CHECKPOINT:
        return lines + [f"load({p['target']}, round_trip(old_version({p['source']}, {p['metadata']!r})), "
                        f"strict={p['strict']!r})"]
    raise DemoActionError(f"no script for action {a!r}")


def build_script(demo) -> str:
    cls = demo.variant.model_class
    src = inspect.getsource(cls)
    head = _SCRIPT_HEAD.format(n=len(demo.history), variant=demo.variant.name, seed=demo.seed,
                               torch_version=torch.__version__, model_source=src.rstrip(),
                               shape=demo.variant.input_shape, model_class=cls.__name__,
                               left_off=demo.LEFT_SEED_OFFSET)
    body = []
    for i, step in enumerate(demo.history, 1):
        body.append("")
        body.append(f"# step {i}: {step.label}")
        body.append(f"# explorer: {step.sentence}")
        body.append(f"print({f'step {i}: {step.label}'!r})")
        body.extend(_script_action(step, demo))
        for side in SIDES:
            obs = step.after.get(side)
            if obs is not None:
                expected = {n: s.buffers() for n, s in obs.modules.items()}
                body.append(f"check({i}, {side!r}, {side}, {expected!r})")
    body.append("")
    body.append('print("all steps reproduced")')
    return head + "\n".join(body) + "\n"
