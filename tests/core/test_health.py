"""A fresh BatchNorm's buffers are what torch builds (zeros, ones, 0): said in ``info``, never flagged as a problem;
real all-zero weights stay flagged."""
import json

import torch
import torch.nn as nn

from explorer.core.side import open_side
from explorer.core.health import (ALL_ZEROS, CONSTANT, FRESH_BN_BIAS, FRESH_BN_COUNT, FRESH_BN_MEAN, FRESH_BN_VAR,
                                  FRESH_BN_WEIGHT, explain_flags, health_scan)
from explorer.core.stats import tensor_stats, with_context


def _model():
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    with torch.no_grad():
        m[3].weight.zero_()                     # a real all-zero weight
    return m


def test_fresh_batchnorm_is_told_not_flagged(tmp_path, cli):
    m = _model()
    bn = m[1]
    # what torch itself builds for a fresh BatchNorm
    assert torch.equal(bn.running_mean, torch.zeros(4)) and torch.equal(bn.running_var, torch.ones(4))
    assert int(bn.num_batches_tracked) == 0
    path = tmp_path / "fresh.pt"
    torch.save(m.state_dict(), path)
    flags = health_scan(open_side(path))
    for key in ("1.running_mean", "1.running_var", "1.num_batches_tracked", "1.weight", "1.bias"):
        assert flags[key] == [], key
        raw = tensor_stats(m.state_dict()[key]).flags   # without the key's context: flagged
        assert raw in ([ALL_ZEROS], [CONSTANT]), (key, raw)
    assert flags["3.weight"] == [ALL_ZEROS]            # a real all-zero weight stays flagged
    want = {"1.running_mean": FRESH_BN_MEAN, "1.running_var": FRESH_BN_VAR, "1.num_batches_tracked": FRESH_BN_COUNT,
            "1.weight": FRESH_BN_WEIGHT, "1.bias": FRESH_BN_BIAS}
    for key, info in want.items():
        r = cli("stats", path, key, "--json")
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["flags"] == [] and out["info"] == [info], key
    r = cli("stats", path, "1.running_mean")
    assert "flags    none" in r.stdout and "info     fresh BatchNorm running_mean (zeros)" in r.stdout
    assert json.loads(cli("stats", path, "3.weight", "--json").stdout)["flags"] == [ALL_ZEROS]
    # nested under an entry path: the siblings are found there too
    torch.save({"model": m.state_dict()}, tmp_path / "nested.pt")
    out = json.loads(cli("stats", tmp_path / "nested.pt", "model/1.running_mean", "--json").stdout)
    assert out["flags"] == [] and out["info"] == [FRESH_BN_MEAN]


def test_trained_or_lone_buffers_keep_their_flags(tmp_path):
    m = _model()
    m.train()
    m(torch.randn(8, 3, 3, 3))                              # one training step: torch moves the running stats
    assert not torch.equal(m[1].running_mean, torch.zeros(4))
    with torch.no_grad():
        m[1].weight.zero_()                                 # an all-zero norm weight is a real problem
    torch.save(m.state_dict(), tmp_path / "t.pt")
    flags = health_scan(open_side(tmp_path / "t.pt"))
    assert flags["1.running_mean"] == [] and flags["1.weight"] == [ALL_ZEROS]
    # a "running_mean" with no running_var beside it, or a running_var of twos: not a BatchNorm's fresh state
    assert explain_flags("stats.running_mean", [ALL_ZEROS], ["stats.num_batches_tracked"]) == ([ALL_ZEROS], [])
    assert explain_flags("bn.running_var", [CONSTANT], ["bn.running_mean"], 2.0) == ([CONSTANT], [])
    assert explain_flags("bn.running_mean", [ALL_ZEROS], ["other.running_var"]) == ([ALL_ZEROS], [])
    s = tensor_stats(torch.zeros(3))
    assert with_context(s, "fc.weight", ["fc.running_var"]) is s and s.flags == [ALL_ZEROS]
