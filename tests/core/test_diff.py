"""Diff of two sides on pairs with known differences, against torch float64 references."""
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from explorer.core import chunks as C
from explorer.core.diff import compare_tensors, diff_sides
from explorer.core.diff_report import IDENTICAL_MEANS
from explorer.core.model_source import ModelSide
from explorer.core.records import CHANGED, DTYPE_DIFFERS, IDENTICAL, ONLY_A, ONLY_B, SHAPE_DIFFERS
from explorer.core.side import open_side
from explorer.errors import Cancelled, ExplorerError

ROOT = Path(__file__).resolve().parents[2]
KEY_SCHEMA = ["key", "status", "shape_a", "shape_b", "dtype_a", "dtype_b", "max_abs_diff", "mean_abs_diff", "rel_l2",
              "cosine", "differing", "nonfinite", "signed_zeros_differ", "finite"]


def ref_metrics(a: torch.Tensor, b: torch.Tensor) -> dict:
    a, b = a.double().reshape(-1), b.double().reshape(-1)
    d = b - a
    return {"max_abs_diff": float(d.abs().max()), "mean_abs_diff": float(d.abs().mean()),
            "rel_l2": float(d.norm() / a.norm()), "cosine": float(a @ b / (a.norm() * b.norm())),
            "differing": int((d != 0).sum())}


def assert_metrics(kd, ref, rel=1e-9):
    for name in ("max_abs_diff", "mean_abs_diff", "rel_l2", "cosine"):
        assert getattr(kd, name) == pytest.approx(ref[name], rel=rel, abs=1e-15), name
    assert kd.differing == ref["differing"]


def model():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10))
    with torch.no_grad():
        m[1].bias.normal_()
        m[1].running_mean.normal_()
    return m


@pytest.fixture
def pair(tmp_path):
    base = model().state_dict()
    pert = {k: v.clone() for k, v in base.items()}
    g = torch.Generator().manual_seed(1)
    pert["0.weight"] += 1e-3 * torch.randn(pert["0.weight"].shape, generator=g)
    pert["3.weight"] = torch.randn(12, 32, generator=g)        # a resized head
    pert["3.bias"] = torch.randn(12, generator=g)
    pert["1.renamed_mean"] = pert.pop("1.running_mean")         # a renamed key
    pert["1.bias"] = pert["1.bias"].half()                      # a dtype change
    pert["extra.scale"] = torch.ones(3)
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    torch.save({"state_dict": base, "epoch": 3}, a)
    torch.save(pert, b)
    return base, pert, a, b


def test_known_differences(pair):
    base, pert, a, b = pair
    seen = []
    rep = diff_sides(open_side(a), open_side(b), progress=lambda d, t: seen.append((d, t)))
    st = {k.key: k.status for k in rep.keys}
    assert st == {"0.weight": CHANGED, "0.bias": IDENTICAL, "1.weight": IDENTICAL, "1.bias": DTYPE_DIFFERS,
                  "1.running_mean": ONLY_A, "1.running_var": IDENTICAL, "1.num_batches_tracked": IDENTICAL,
                  "3.weight": SHAPE_DIFFERS, "3.bias": SHAPE_DIFFERS, "1.renamed_mean": ONLY_B,
                  "extra.scale": ONLY_B}
    # A's order, then B-only keys in B's order
    assert [k.key for k in rep.keys] == list(base) + ["1.renamed_mean", "extra.scale"]
    assert rep.summary == {IDENTICAL: 4, CHANGED: 1, ONLY_A: 1, ONLY_B: 2, SHAPE_DIFFERS: 2, DTYPE_DIFFERS: 1}
    assert_metrics(rep.by_key["0.weight"], ref_metrics(base["0.weight"], pert["0.weight"]))
    dt = rep.by_key["1.bias"]   # compared after casting: the half rounding shows
    assert_metrics(dt, ref_metrics(base["1.bias"], pert["1.bias"].float()))
    assert rep.by_key["3.weight"].shape_b == (12, 32) and rep.by_key["3.weight"].max_abs_diff is None
    assert rep.largest(3)[0].key in ("0.weight", "1.bias")
    assert rep.modules["0"].counts[CHANGED] == 1 and rep.modules["3"].counts[SHAPE_DIFFERS] == 2
    assert rep.modules[""].tensors == len(rep.keys)
    assert seen and seen[-1][0] == seen[-1][1]
    assert all(k.explanation for k in rep.keys)


def test_renamed_key_through_remap(pair):
    base, pert, a, b = pair
    rep = diff_sides(open_side(a), open_side(b), remap={"1.renamed_mean": "1.running_mean"})
    kd = rep.by_key["1.running_mean"]
    assert kd.status == IDENTICAL and kd.key_b == "1.renamed_mean"
    assert "1.renamed_mean" not in rep.by_key
    rep2 = diff_sides(open_side(a), open_side(b), remap=lambda k: k.replace("renamed_mean", "running_mean"))
    assert rep2.by_key["1.running_mean"].status == IDENTICAL
    with pytest.raises(ExplorerError):
        diff_sides(open_side(a), open_side(b), remap=lambda k: "same")


def test_json_schema_exact(pair):
    _, _, a, b = pair
    out = diff_sides(open_side(a), open_side(b)).to_json()
    assert list(out) == ["a", "b", "summary", "nonfinite_changed", "numbers", "keys"]
    assert set(out["summary"]) == {"identical", "changed", "only_a", "only_b", "shape_differs", "dtype_differs"}
    assert all(list(k) == KEY_SCHEMA for k in out["keys"])
    json.dumps(out, allow_nan=False)


def test_identical_files_across_formats(tmp_path):
    from safetensors.torch import save_file
    sd = model().state_dict()
    torch.save(sd, tmp_path / "m.pt")
    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "m.safetensors")
    rep = diff_sides(open_side(tmp_path / "m.pt"), open_side(tmp_path / "m.safetensors"))
    assert rep.summary[IDENTICAL] == len(sd) == len(rep.keys)
    # a live model against its own checkpoint
    m = model()
    rep = diff_sides(ModelSide(m), open_side(tmp_path / "m.pt"))
    assert rep.summary[IDENTICAL] == len(sd)


def test_nan_means_bit_exact():
    x = torch.tensor([1.0, float("nan"), 2.0])
    y = x.clone()
    assert not torch.equal(x, y)   # torch's answer...
    sa, sb = ModelSide(nn.Module()), ModelSide(nn.Module())
    sa.model.register_buffer("w", x)
    sb.model.register_buffer("w", y)
    sa, sb = ModelSide(sa.model), ModelSide(sb.model)
    assert diff_sides(sa, sb).by_key["w"].status == IDENTICAL   # ...and ours: same bits
    assert "bit-exact" in IDENTICAL_MEANS
    # -0.0 vs +0.0: equal values, different bits -> changed with max |delta| 0
    m = compare_tensors(torch.tensor([0.0, 1.0]), torch.tensor([-0.0, 1.0]))
    assert m["max_abs_diff"] == 0 and m["differing"] == 0
    assert m["signed_zeros_differ"] == 1
    # NaN on one side only: the figures are NaN as IEEE arithmetic makes them; over the finite positions aside
    m = compare_tensors(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, float("nan"), 4.0]))
    assert m["nonfinite"] == 1 and math.isnan(m["max_abs_diff"]) and m["differing"] == 2
    assert m["finite"]["max_abs_diff"] == 1.0 and m["nan_appeared"] == 1
    m = compare_tensors(torch.tensor([float("inf"), 2.0]), torch.tensor([float("inf"), 2.0]))
    assert m["nonfinite"] == 0 and math.isnan(m["max_abs_diff"]) and m["finite"]["max_abs_diff"] == 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.int64, torch.bool, torch.complex64,
                                   torch.float8_e4m3fn])
def test_compare_dtypes(dtype):
    g = torch.Generator().manual_seed(4)
    if dtype == torch.bool:
        a = torch.rand(1000, generator=g) > 0.5
        b = a.clone()
        b[:10] = ~b[:10]
    elif dtype == torch.int64:
        a = torch.randint(-100, 100, (1000,), generator=g)
        b = a + (torch.rand(1000, generator=g) > 0.9).long()
    else:
        a = torch.randn(1000, generator=g, dtype=torch.complex64 if dtype.is_complex else torch.float32).to(dtype)
        b = (a.to(torch.complex64 if dtype.is_complex else torch.float32) * 1.01).to(dtype)
    m = compare_tensors(a, b)
    if dtype.is_complex:
        ra, rb = torch.view_as_real(a), torch.view_as_real(b)
    else:
        ra, rb = a.to(torch.float64), b.to(torch.float64)
    ref = ref_metrics(ra, rb)
    for name in ("max_abs_diff", "mean_abs_diff", "rel_l2", "cosine"):
        assert m[name] == pytest.approx(ref[name], rel=1e-9), name


def test_large_and_strided(tmp_path):
    """Several chunks, both threads, a transposed view saved as such, and a difference in the last chunk only."""
    n = 4 * C.CHUNK + 999
    g = torch.Generator().manual_seed(7)
    a = torch.randn(n, generator=g)
    b = a.clone()
    b[-5:] += 1.0
    w = torch.randn(700, 900, generator=g)
    torch.save({"big": a, "w": w.t()}, tmp_path / "a.pt")          # a non-contiguous view
    torch.save({"big": b, "w": w.t().contiguous()}, tmp_path / "b.pt")
    rep = diff_sides(open_side(tmp_path / "a.pt"), open_side(tmp_path / "b.pt"))
    assert rep.by_key["w"].status == IDENTICAL
    kd = rep.by_key["big"]
    assert kd.status == CHANGED
    assert_metrics(kd, ref_metrics(a, b), rel=1e-9)
    c = w.t().contiguous()
    c[3, 5] = 0.5 + c[3, 5]
    m = compare_tensors(w.t(), c)
    assert m["differing"] == 1 and m["max_abs_diff"] == pytest.approx(0.5)


def test_cancel():
    a = torch.randn(5 * C.CHUNK)
    sa = ModelSide(nn.Module())
    sa.model.register_buffer("w", a)
    sb = ModelSide(nn.Module())
    sb.model.register_buffer("w", a + 1)
    sa, sb = ModelSide(sa.model), ModelSide(sb.model)
    with pytest.raises(Cancelled):
        diff_sides(sa, sb, should_stop=lambda: True)
    calls = []
    with pytest.raises(Cancelled):
        compare_tensors(a, a + 1, should_stop=lambda: calls.append(1) or len(calls) > 1)


def test_zero_norms():
    m = compare_tensors(torch.zeros(4), torch.zeros(4))
    assert m["rel_l2"] == 0 and m["cosine"] is None
    m = compare_tensors(torch.zeros(4), torch.ones(4))
    assert m["rel_l2"] is None and m["cosine"] is None and m["max_abs_diff"] == 1


# ---- command line ----------------------------------------------------------------------------------------------------
def test_cli_diff_formats(pair, tmp_path, cli):
    from safetensors.torch import save_file
    base, pert, a, b = pair
    r = cli.sub("diff", a, b, "--json")   # once as a real process
    assert r.returncode == 1, r.stderr    # as diff/cmp: 1 when the files differ
    out = json.loads(r.stdout)
    assert out["a"] == str(a) and out["summary"]["changed"] == 1 and out["summary"]["shape_differs"] == 2
    assert [k["key"] for k in out["keys"]][-2:] == ["1.renamed_mean", "extra.scale"]
    r = cli("diff", a, b)
    assert r.returncode == 1, r.stderr
    assert "bit-exact" in r.stdout and "0.weight" in r.stdout and "shape_differs" in r.stdout
    # sharded folder vs nested .pt: identical
    shard = tmp_path / "sharded"
    shard.mkdir()
    keys = list(base)
    half = len(keys) // 2
    files = {"model-00001-of-00002.safetensors": keys[:half], "model-00002-of-00002.safetensors": keys[half:]}
    wm = {}
    for name, ks in files.items():
        save_file({k: base[k].contiguous() for k in ks}, shard / name)
        wm.update({k: name for k in ks})
    (shard / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wm}))
    r = cli("diff", shard, a, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["summary"]["identical"] == len(base)
    r = cli("diff", a, tmp_path / "missing.pt")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1


def test_cli_diff_model_spec(tmp_path, cli):
    from explorer.core.model_source import resolve_spec
    m = resolve_spec("demo:MyBatchNormModel")
    torch.save(m.state_dict(), tmp_path / "m.pt")
    r = cli("diff", "demo:MyBatchNormModel", tmp_path / "m.pt", "--json")
    out = json.loads(r.stdout)
    assert r.returncode == (0 if out["summary"]["identical"] == len(out["keys"]) else 1), r.stderr
    assert out["summary"]["only_a"] == 0 and out["summary"]["only_b"] == 0
    assert out["summary"]["identical"] + out["summary"]["changed"] == len(m.state_dict())
    for k in out["keys"]:
        if k["status"] == "changed":   # a freshly built model differs only where init is random
            assert k["rel_l2"] is None or isinstance(k["rel_l2"], float)


def test_text_lists_the_first_keys_of_each_status_and_counts_the_rest(tmp_path, cli):
    """A diff of very different files stays readable: the first LISTED keys of each status, then one line with how
    many more; --all lists every one, --json always has every key."""
    from explorer.commands.diff import LISTED
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    torch.save({f"x{i}": torch.zeros(1) for i in range(LISTED + 7)} | {"same": torch.ones(2)}, a)
    torch.save({f"y{i}": torch.zeros(1) for i in range(3)} | {"same": torch.ones(2)}, b)
    r = cli("diff", str(a), str(b))
    assert r.returncode == 1
    lines = r.stdout.splitlines()
    assert sum(1 for ln in lines if ln.strip().startswith("only_a")) == LISTED
    assert sum(1 for ln in lines if ln.strip().startswith("only_b")) == 3
    assert "… and 7 more only_a keys (--all lists them, --json gives every key)" in r.stdout
    assert "more only_b" not in r.stdout
    r = cli("diff", str(a), str(b), "--all")
    assert sum(1 for ln in r.stdout.splitlines() if ln.strip().startswith("only_a")) == LISTED + 7
    assert "more only_a" not in r.stdout
    j = json.loads(cli("diff", str(a), str(b), "--json").stdout)
    assert len(j["keys"]) == LISTED + 7 + 1 + 3 and j["summary"]["only_a"] == LISTED + 7
