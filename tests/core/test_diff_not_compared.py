"""Values that cannot be read are no difference: ``diff`` says "not compared" (exit 2), never "changed"."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from explorer.core.diff import diff_sides
from explorer.core.records import IDENTICAL, NOT_COMPARED
from explorer.core.side import open_side

ROOT = Path(__file__).resolve().parents[2]


def _cli(*args, env=None):
    import os
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


@pytest.fixture
def meta_pair(tmp_path):
    """b.pt holds w as a meta tensor (no data); torch itself cannot tell whether its values equal a.pt's."""
    a = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(3)}
    b = {"w": torch.empty(2, 3, device="meta"), "b": torch.ones(3)}
    torch.save(a, tmp_path / "a.pt")
    torch.save(b, tmp_path / "b.pt")
    with pytest.raises((NotImplementedError, RuntimeError)):      # the truth: torch has no answer either
        torch.equal(a["w"], torch.load(tmp_path / "b.pt", weights_only=True)["w"])
    return tmp_path / "a.pt", tmp_path / "b.pt"


def test_a_key_whose_values_cannot_be_read_is_not_compared_not_changed(meta_pair):
    report = diff_sides(open_side(str(meta_pair[0])), open_side(str(meta_pair[1])))
    status = {k.key: k.status for k in report.keys}
    assert status == {"w": NOT_COMPARED, "b": IDENTICAL}
    assert report.summary[NOT_COMPARED] == 1 and report.summary["changed"] == 0
    w = next(k for k in report.keys if k.key == "w")
    assert w.error and w.max_abs_diff is None and w.explanation.startswith("not compared: ")


def test_the_command_says_so_once_and_exits_2(meta_pair):
    run = _cli("diff", *meta_pair)
    assert run.returncode == 2, run.stderr
    assert "1 not compared" in run.stdout and "0 changed" in run.stdout
    assert "could not be read, so they were not compared" in run.stdout
    assert run.stderr.startswith("error: 1 key not compared") and run.stderr.count("\n") == 1   # exit 2: one line
    run = _cli("diff", *meta_pair, "--json")
    assert run.returncode == 2
    answer = json.loads(run.stdout)
    assert answer["summary"]["not_compared"] == 1
    assert [k["status"] for k in answer["keys"]] == ["not_compared", "identical"]


def test_identical_files_keep_their_summary_without_the_new_status(meta_pair):
    run = _cli("diff", meta_pair[0], meta_pair[0], "--json")
    assert run.returncode == 0 and "not_compared" not in json.loads(run.stdout)["summary"]


def test_a_model_not_materialized_is_one_reason_said_once(tmp_path):
    (tmp_path / "net.py").write_text("import torch.nn as nn\n\ndef build():\n"
                                     "    return nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64))\n")
    import torch.nn as nn
    torch.save(nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64)).state_dict(), tmp_path / "ck.pt")
    run = _cli("diff", f"{tmp_path / 'net.py'}:build", tmp_path / "ck.pt",
               env={"STATE_DICT_EXPLORER_MODEL_BUDGET": "1K"})
    assert run.returncode == 2, run.stderr
    assert "4 not compared" in run.stdout and "values of the model side are not materialized" in run.stdout
    assert run.stdout.count("not materialized") == 1              # the reason once, not once per key
