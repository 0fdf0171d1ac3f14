"""The window's jobs and policies, without a display: which row is shown first, where statistics run, a simulation
with a remap applied, the compute process called with a function object."""
from __future__ import annotations

import torch
import torch.nn as nn

from explorer.core.model_source import ModelSide
from explorer.core.remap.rules import Remap
from explorer.session import compare as C
from explorer.session import jobs
from explorer.session.compute_process import ComputeProcess
from explorer.session.detail_compute import compute_detail, compute_detail_isolated


def _save(tmp_path, name, sd):
    path = tmp_path / name
    torch.save(sd, path)
    return str(path)


def _comparison(tmp_path, a, b):
    return C.Comparison(C.load_side_data(_save(tmp_path, "a.pt", a)), C.load_side_data(_save(tmp_path, "b.pt", b)))


def test_auto_select_picks_the_most_telling_problem(tmp_path):
    comp = _comparison(tmp_path, {"a": torch.ones(2), "s": torch.ones(2), "o": torch.ones(1)},
                       {"a": torch.ones(2), "s": torch.ones(3)})
    assert jobs.auto_select_key(comp) == "s"          # a shape that differs before a key only on one side
    same = _comparison(tmp_path, {"a": torch.ones(2)}, {"a": torch.ones(2)})
    assert jobs.auto_select_key(same) is None


def test_when_the_load_raises_the_keys_that_make_it_raise_come_first(tmp_path):
    model = C.side_data(ModelSide(nn.Linear(2, 2), "Linear"), "Linear")
    ck = C.load_side_data(_save(tmp_path, "ck.pt", {"weight": torch.ones(2, 2), "extra": torch.ones(1)}))
    comp = C.Comparison(model, ck)
    report, note = jobs.simulate(model, ck, None, True, False)
    assert report.raises and note == ""
    comp.apply_simulation(report)
    assert jobs.auto_select_key(comp) == "bias"       # missing (raising) before unexpected and changed


def test_statistics_of_small_tensors_stay_in_this_process():
    small, big = C.Row("s", C_info((4, 4))), C.Row("b", C_info((1000, 1000)))
    assert jobs.elements(small) == 16 and jobs.elements(big) == 1_000_000
    assert jobs.detail_job(small) is compute_detail and jobs.detail_job(big) is compute_detail_isolated
    assert jobs.elements(C.Row("odd", C_info(("x",)))) == 1 << 62


def C_info(shape):
    from explorer.core.records import TensorInfo
    return TensorInfo(path=("k",), shape=shape, dtype="float32", nbytes=0)


def test_a_remap_applied_before_simulating(tmp_path):
    model = C.side_data(ModelSide(nn.Linear(2, 2), "Linear"), "Linear")
    ck = C.load_side_data(_save(tmp_path, "ck.pt", {"module.weight": torch.ones(2, 2), "module.bias": torch.ones(2)}))
    report, _ = jobs.simulate(model, ck, Remap("strip_prefix", old="module."), True, False)
    assert not report.raises and not report.missing_keys and not report.unexpected_keys


def test_two_checkpoints_simulate_with_the_left_as_a_model_and_say_so(tmp_path):
    a = C.load_side_data(_save(tmp_path, "a.pt", {"w": torch.zeros(2)}))
    b = C.load_side_data(_save(tmp_path, "b.pt", {"w": torch.ones(2)}))
    report, note = jobs.simulate(a, b, None, True, False)
    assert not report.raises and "not a model" in note


def _twice(x, *, progress=None, should_stop=None):
    return 2 * x


def test_the_compute_process_runs_a_function_object():
    eng = ComputeProcess(nice=0)
    try:
        assert eng.call(_twice, 21) == 42
    finally:
        eng.shutdown()
