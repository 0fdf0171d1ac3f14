"""Simulating a load where nearly every checkpoint key is unexpected (the hostile corpus has 10**6 tiny tensors
against a small model): the report, its text and its JSON cost a bounded amount of Python work per key, and the bulk
paths give exactly what the per-key ones give.

The scaling test counts Python function calls (``sys.setprofile``), not seconds: deterministic on a busy machine.
Before the bulk paths, a simulation made ~25 Python calls per unexpected key (report, explanations, remap candidates,
text and JSON; ~40 s for 10**6 keys).
"""
from __future__ import annotations

import io
import json
from collections import OrderedDict

import pytest
import torch
import torch.nn as nn

from explorer.core.demo_models import MyBatchNormModel
from explorer.core.loaders import open_checkpoint
from explorer.core.records import UNEXPECTED
from explorer.commands.simulate import render_text
from explorer.core.simulate.explain import explain_unexpected
from explorer.core.simulate.report import KeyTable
from explorer.core.simulate.run import simulate_load
from tests.core.test_many_tensors import _python_calls as python_calls


# reading the file (checkpoint.py and the modules split from it): measured in test_many_tensors.py
_READERS = ("/core/checkpoint.py", "/core/entries.py", "/core/loaded.py", "/core/materialize.py", "/safe_pickle/", "/loaders/")


def _python_calls(fn) -> int:
    """Python function calls made by ``fn()``, but those of the checkpoint's reader (which makes a ``.safetensors``
    file's records when the state dict is first materialized)."""
    return python_calls(fn, exclude=_READERS)


def _flat(n: int) -> OrderedDict:
    t = torch.zeros(1)
    return OrderedDict((f"t{i}", t[0:1]) for i in range(n))


def _answer(model, sd, **kw) -> tuple[str, str]:
    rep = simulate_load(model, sd, **kw)
    buf = io.StringIO()
    render_text(rep, buf)
    return buf.getvalue(), rep.dumps()


@pytest.mark.parametrize("ext", ["pt", "safetensors"])
def test_unexpected_keys_python_work_per_key(tmp_path, ext):
    """``simulate`` of a checkpoint file + text + JSON: 20,000 more unexpected keys cost about one Python call each
    -- torch's own (the generator that writes them into its error message) -- not ~25 as before."""
    from safetensors.torch import save_file
    model = MyBatchNormModel()
    paths = []
    for n in (2_000, 22_000):
        sd = OrderedDict((f"t{i}", torch.zeros(1)) for i in range(n))
        path = str(tmp_path / f"many-{n}.{ext}")
        save_file(sd, path) if ext == "safetensors" else torch.save(sd, path)
        paths.append(path)
    small, large = (open_checkpoint(p) for p in paths)
    _answer(model, small)  # imports, caches
    extra = _python_calls(lambda: _answer(model, large)) - _python_calls(lambda: _answer(model, small))
    assert extra / 20_000 <= 1.5, f"{extra / 20_000:.2f} Python calls per unexpected key"


class _Odd(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2, track_running_stats=False))
        self.gone = None
        self.register_buffer("scratch", torch.zeros(1), persistent=False)
        self.lin = nn.Linear(2, 2)
        self.lin.register_parameter("bias", None)


@pytest.mark.parametrize("strict", [True, False])
def test_bulk_answers_equal_per_key_reports(strict):
    """The unexpected keys' lines and JSON written in bulk are those of their reports made one by one, and each
    report's explanation is ``explain_unexpected``'s."""
    model = _Odd()
    sd = OrderedDict()
    for i in range(300):
        sd[f"x{i}"] = torch.zeros(1)
        sd[f"enc.0.w{i}"] = torch.zeros(1)
        sd[f"enc.{i + 5}.weight"] = torch.zeros(1)
        sd[f"gone.{i}.bias"] = torch.zeros(1)
    for k in ("scratch", "lin.bias", "enc.1.running_mean", "enc.1.num_batches_tracked", "enc.0._extra_state",
              "bn.running_var", "wei\u00e9ght", 'q"uote'):
        sd[k] = torch.zeros(1)
    sd["p.running_mean"] = nn.Parameter(torch.zeros(1))
    sd.update(model.state_dict())
    text, js = _answer(model, sd, strict=strict)
    rep = simulate_load(model, sd, strict=strict)
    assert isinstance(rep.keys, KeyTable)
    assert json.loads(js) == rep.to_json() and js == json.dumps(rep.to_json())
    msg = rep.error_message or ""
    for k in rep.unexpected_keys:     # every report made one at a time
        r = rep.keys[k]
        assert r.status == UNEXPECTED and r.explanation == explain_unexpected(k, model, msg)
    buf = io.StringIO()
    render_text(rep, buf)
    assert buf.getvalue() == text
    assert rep.dumps() == js
    assert rep.keys["p.running_mean"].kind == "parameter" and rep.keys["bn.running_var"].kind == "buffer"
    assert rep.keys["enc.0._extra_state"].kind == "extra_state"


def test_text_lists_the_first_keys_of_each_status(tmp_path, capsys):
    """``simulate`` (text) lists 100 keys per status and counts the rest; torch's error message, which names every
    unexpected key on one line, is cut at a key. ``--all`` prints what ``render_text`` prints with no limit."""
    from explorer.cli import main
    path = tmp_path / "many.pt"
    torch.save(OrderedDict((f"extra{i}", torch.zeros(1)) for i in range(1_000)), path)
    argv = ["simulate", "--model", "demo:MyBatchNormModel", "--checkpoint", str(path)]
    assert main(argv) == 1
    cut = capsys.readouterr().out
    assert main(argv + ["--all"]) == 1
    whole = capsys.readouterr().out
    from explorer.core.model_source import ModelSide
    rep = simulate_load(ModelSide.from_spec("demo:MyBatchNormModel"), open_checkpoint(str(path)))
    buf = io.StringIO()
    render_text(rep, buf)
    assert whole == buf.getvalue()
    listed = [line.split()[0] for line in cut.splitlines() if line.strip().endswith(UNEXPECTED)]
    assert listed == [f"extra{i}" for i in range(100)]
    assert "   … and 900 more unexpected keys (--all lists them, --json gives every key)\n" in cut
    # every missing key is still listed (6 < 100), and the summary counts every unexpected key
    def missing(text):
        return [line.split()[0] for line in text.splitlines() if line.split()[1:2] == ["missing"]]
    assert missing(cut) == missing(whole) and len(missing(cut)) == 6
    assert "1000 unexpected key(s)" in cut
    (message_line,) = [line for line in cut.splitlines() if "Unexpected key(s) in state_dict" in line]
    assert len(message_line) < 1_100
    shown = message_line.count('"extra')
    assert message_line.endswith(f", … and {1_000 - shown:,} more (--all prints the whole message)")
    (whole_line,) = [line for line in whole.splitlines() if "Unexpected key(s) in state_dict" in line]
    assert whole_line.count('"extra') == 1_000 and whole_line.startswith(message_line.split(", …")[0])


def test_a_flat_checkpoint_is_simulated_without_a_record_per_tensor(tmp_path):
    """A safetensors file holds no pickled module: simulating a load never makes its 10**6 tensor records to look
    for one (they cost ~2.5 s), and the answer is the same as that of the state dict safetensors loads (torch's)."""
    from safetensors.torch import load_file, save_file
    sd = OrderedDict((f"t{i}", torch.zeros(1)) for i in range(500))
    sd["bn.weight"] = torch.ones(3)
    path = str(tmp_path / "flat.safetensors")
    save_file(sd, path)
    ck = open_checkpoint(path)
    model = MyBatchNormModel()
    from_file = _answer(model, ck, strict=False)
    assert ck.is_flat and ck._root is None        # no record made per tensor
    in_memory = _answer(model, load_file(path), strict=False)    # what safetensors hands torch, in its order

    def without_label(answer):
        text, js = answer
        doc = json.loads(js)
        return [line for line in text.splitlines() if not line.startswith("checkpoint:")], \
            {k: v for k, v in doc.items() if v != path and "checkpoint" not in k}
    assert "WOULD RAISE RuntimeError" in from_file[0] and "size mismatch for bn.weight" in from_file[0]
    assert without_label(from_file) == without_label(in_memory)
