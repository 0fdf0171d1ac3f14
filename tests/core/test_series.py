"""A training run at a glance: generated runs saved with torch.save (and safetensors), figures checked against torch."""
import json
import math
import os

import pytest
import torch
from safetensors.torch import save_file

from explorer.core.series.discover import name_step, natural_key
from explorer.core.series.findings import STILL_MOVING
from explorer.core.series.run import open_series
from explorer.errors import Cancelled, ExplorerError


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def make_run(folder, steps, *, nan_at=None, added_at=None, name="step_{}.pt", lightning=False, seed=0):
    """A run: 'fc.weight' trains, 'emb.weight' is frozen, BatchNorm statistics settle (their change halves each
    checkpoint), a NaN appears in fc.weight at step ``nan_at``, 'head.bias' is added at step ``added_at``."""
    g = torch.Generator().manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    w = torch.randn(8, 4, generator=g)
    proj = torch.randn(3, 5, generator=g).to(torch.bfloat16)
    emb = torch.randn(6, 3, generator=g)
    mean, var = torch.zeros(4), torch.ones(4)
    saved = {}
    for n, step in enumerate(steps):
        w = w + 0.05 * torch.randn(8, 4, generator=g) + 0.02 * w
        proj = proj + (0.1 * torch.randn(3, 5, generator=g)).to(torch.bfloat16)
        mean = mean + (0.5 ** n) * torch.ones(4)
        var = var + (0.5 ** n) * 0.1
        sd = {"fc.weight": w.clone(), "emb.weight": emb.clone(), "bn.running_mean": mean.clone(),
              "bn.running_var": var.clone(), "bn.num_batches_tracked": torch.tensor(10 * step),
              "proj.weight": proj.clone()}
        if nan_at is not None and step >= nan_at:
            sd["fc.weight"][1, 2] = float("nan")
        if added_at is not None and step >= added_at:
            sd["head.bias"] = torch.randn(5, generator=g)
        obj = {"state_dict": sd, "global_step": step, "epoch": n} if lightning else sd
        path = folder / name.format(step, n=n)
        torch.save(obj, path)
        saved[step] = sd
    return saved


def series_json(cli, *paths):
    r = cli("series", *paths, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_figures_match_torch_and_order_is_numeric(tmp_path):
    steps = [200, 1000, 400, 30]
    saved = make_run(tmp_path / "run", steps)
    with open_series([tmp_path / "run"]) as s:
        assert [m.step for m in s.members] == [30, 200, 400, 1000]   # lexically: 1000, 200, 30, 400
        result = s.measure()
    order = [30, 200, 400, 1000]
    t = result.track("fc.weight")
    for i, step in enumerate(order):
        x = saved[step]["fc.weight"]
        assert t.norm[i] == pytest.approx(float(torch.linalg.vector_norm(x)), rel=1e-6)
        if i:
            prev, first = saved[order[i - 1]]["fc.weight"], saved[order[0]]["fc.weight"]
            rel = torch.linalg.vector_norm(x - prev) / torch.linalg.vector_norm(prev)
            assert t.rel_change_prev[i] == pytest.approx(float(rel), rel=1e-5)
            rel_first = torch.linalg.vector_norm(x - first) / torch.linalg.vector_norm(first)
            assert t.rel_change_first[i] == pytest.approx(float(rel_first), rel=1e-5)
            assert t.frac_changed[i] == float((x != prev).sum()) / x.numel()
    assert t.rel_change_prev[0] is None and t.rel_change_first[0] == 0.0
    mean = result.track("bn.running_mean").mean
    assert mean == pytest.approx([float(saved[s]["bn.running_mean"].double().mean()) for s in order])
    half = result.track("proj.weight")   # bfloat16: figures of its values (widened to float32)
    for i, step in enumerate(order):
        x = saved[step]["proj.weight"].float()
        assert half.norm[i] == pytest.approx(float(torch.linalg.vector_norm(x)), rel=1e-6)
        if i:
            prev = saved[order[i - 1]]["proj.weight"].float()
            assert half.rel_change_prev[i] == pytest.approx(float(torch.linalg.vector_norm(x - prev)
                                                                  / torch.linalg.vector_norm(prev)), rel=1e-5)
    assert half.dtype == ["bfloat16"] * 4
    ints = result.track("bn.num_batches_tracked")
    assert ints.norm == [10.0 * s for s in order] and ints.mean is None


def test_frozen_nan_added_key_and_settling_statistics(tmp_path, cli):
    steps = [100, 200, 300, 400, 500, 600, 700, 800, 900]
    saved = make_run(tmp_path / "run", steps, nan_at=500, added_at=300)
    out = series_json(cli, tmp_path / "run")
    assert [c["step"] for c in out["checkpoints"]] == steps
    assert out["frozen"] == ["emb.weight"]
    assert out["first_nonfinite"] == {"fc.weight": 4}
    keys = {k["key"]: k for k in out["keys"]}
    assert keys["fc.weight"]["nonfinite"] == [0, 0, 0, 0, 1, 1, 1, 1, 1]
    assert keys["fc.weight"]["norm"][4] == "nan"
    x, p = saved[600]["fc.weight"], saved[500]["fc.weight"]   # NaN at the same place on both: not a change
    changed = ((x != p) & ~(x.isnan() & p.isnan())).sum()
    assert keys["fc.weight"]["frac_changed"][5] == float(changed) / x.numel() < 1
    assert keys["head.bias"]["present"] == [False, False] + [True] * 7
    assert keys["head.bias"]["norm"][:2] == [None, None] and keys["head.bias"]["rel_change_first"][2] == 0.0
    kinds = {f["kind"]: f for f in out["findings"]}
    assert kinds["nonfinite"]["checkpoints"] == [4] and kinds["nonfinite"]["keys"] == ["fc.weight"]
    assert kinds["appears"]["keys"] == ["head.bias"] and kinds["appears"]["checkpoints"] == [2]
    # the statistics' change halves each checkpoint: settled at the end (below STILL_MOVING), not at the start
    last = keys["bn.running_mean"]["rel_change_prev"][-1]
    assert last < STILL_MOVING < keys["bn.running_mean"]["rel_change_prev"][1]
    assert "still_moving" not in kinds
    # the norms that grow fastest are the floating tensors', named from torch's own norms; the integer counter
    # bn.num_batches_tracked (×9 here, the largest growth) is no drift and is not named
    def ratio(key):
        held = [saved[s][key] for s in steps if key in saved[s] and saved[s][key].isfinite().all()]
        return float(held[-1].double().norm() / held[0].double().norm())
    floats = [k for k in saved[steps[-1]] if saved[steps[-1]][k].is_floating_point() and "running" not in k]
    # a growth that prints as "×1" (under 1.005) is no finding
    expected = sorted((k for k in floats if float(f"{ratio(k):.3g}") > 1), key=ratio, reverse=True)
    assert ratio("bn.num_batches_tracked") > max(ratio(k) for k in expected)
    assert kinds["fastest_growth"]["keys"] == expected[:5]
    text = cli("series", tmp_path / "run")
    assert text.returncode == 0
    assert "emb.weight" in text.stdout and "NaN/Inf first appear at checkpoint 4" in text.stdout


def test_statistics_still_moving_are_named(tmp_path, cli):
    folder = tmp_path / "run"
    folder.mkdir()
    for i in range(3):
        torch.save({"bn.running_var": torch.full((4,), 1.0 + i), "w": torch.ones(2)}, folder / f"e{i}.pt")
    out = series_json(cli, folder)
    kinds = {f["kind"]: f for f in out["findings"]}
    assert kinds["still_moving"]["keys"] == ["bn.running_var"]
    assert out["running_stats"]["bn.running_var"]["mean"] == [1.0, 2.0, 3.0]
    assert out["frozen"] == ["w"]


def test_lightning_global_step_orders_over_the_name(tmp_path, cli):
    saved = make_run(tmp_path / "run", [50, 7, 120], lightning=True, name="epoch={n}.ckpt")
    # names say epoch 0, 1, 2; the files say global_step 50, 7, 120: the files win
    out = series_json(cli, tmp_path / "run")
    assert [c["step"] for c in out["checkpoints"]] == [7, 50, 120]
    assert [os.path.basename(c["path"]) for c in out["checkpoints"]] == ["epoch=1.ckpt", "epoch=0.ckpt", "epoch=2.ckpt"]
    assert out["checkpoints"][0]["step_source"] == "global_step in the file"
    norms = {k["key"]: k["norm"] for k in out["keys"]}["fc.weight"]
    assert norms == pytest.approx([float(torch.linalg.vector_norm(saved[s]["fc.weight"])) for s in (7, 50, 120)])


def test_names_lightning_style_and_trainer_folders(tmp_path):
    assert name_step("epoch=3-step=1200.ckpt") == 1200
    assert name_step("checkpoint-500") == 500
    assert name_step("model_7.pt") == 7
    assert sorted(["step_1000", "step_200"], key=natural_key) == ["step_200", "step_1000"]
    run = tmp_path / "run"
    for step in (1500, 500):   # Trainer folders: the model file among optimizer.pt, trainer_state.json...
        d = run / f"checkpoint-{step}"
        d.mkdir(parents=True)
        save_file({"w": torch.full((3,), float(step))}, str(d / "model.safetensors"), metadata={"format": "pt"})
        torch.save({"state": {}}, d / "optimizer.pt")
        (d / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    with open_series([run]) as s:
        assert [m.step for m in s.members] == [500, 1500]
        assert s.members[0].step_source == "global_step in trainer_state.json"
        assert s.members[0].path.endswith(os.path.join("checkpoint-500", "model.safetensors"))
        r = s.measure()
    assert r.track("w").norm == pytest.approx([500 * math.sqrt(3), 1500 * math.sqrt(3)])
    assert r.track("w").rel_change_prev[1] == pytest.approx(2.0)


def test_safetensors_metadata_step(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    for name, step in (("a.safetensors", 30), ("b.safetensors", 10)):
        save_file({"w": torch.randn(4)}, str(folder / name), metadata={"step": str(step)})
    with open_series([folder]) as s:
        assert [(os.path.basename(m.path), m.step) for m in s.members] == [("b.safetensors", 10), ("a.safetensors", 30)]


def test_cache_is_used_and_never_stale(tmp_path):
    make_run(tmp_path / "run", [1, 2, 3])
    with open_series([tmp_path / "run"]) as s:
        first = s.measure()
    with open_series([tmp_path / "run"]) as s:
        again = s.measure()
    assert not first.cached and again.cached
    assert again.to_json() == json.loads(json.dumps(first.to_json()))
    path = tmp_path / "run" / "step_3.pt"
    torch.save({"fc.weight": torch.zeros(8, 4)}, path)   # the file changes: the figures are measured again
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10**9))
    with open_series([tmp_path / "run"]) as s:
        changed = s.measure()
    assert not changed.cached and changed.track("fc.weight").norm[2] == 0.0


def test_cancel_and_progress(tmp_path):
    make_run(tmp_path / "run", [1, 2, 3])
    seen = []
    with open_series([tmp_path / "run"]) as s:
        s.measure(use_cache=False, progress=lambda done, total: seen.append((done, total)))
        with pytest.raises(Cancelled):
            s.measure(use_cache=False, should_stop=lambda: True)
    assert seen[0][0] == 0 and seen[-1][0] == seen[-1][1] > 0
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_histogram_on_demand(tmp_path):
    saved = make_run(tmp_path / "run", [1, 2])
    with open_series([tmp_path / "run"]) as s:
        edges, counts = s.histogram("fc.weight", 1, bins=16, value_range=(-4.0, 4.0))
    x = saved[2]["fc.weight"]
    assert counts.tolist() == torch.histc(x, bins=16, min=-4, max=4).to(torch.int64).tolist()
    assert len(edges) == 17 and int(counts.sum()) == x.numel()


def test_bad_input_is_one_line_naming_the_path(tmp_path, cli):
    r = cli("series", tmp_path / "nothing")
    assert r.returncode == 2 and str(tmp_path / "nothing") in r.stderr and r.stderr.count("\n") == 1
    (tmp_path / "empty").mkdir()
    r = cli("series", tmp_path / "empty")
    assert r.returncode == 2 and "holds no checkpoint" in r.stderr
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.pt").write_bytes(b"not a checkpoint at all")
    r = cli("series", tmp_path / "bad")
    assert r.returncode == 2 and "x.pt" in r.stderr
    with pytest.raises(ExplorerError):
        open_series([tmp_path / "bad"])


def test_control_characters_in_keys_are_escaped(tmp_path, cli):
    folder = tmp_path / "run"
    folder.mkdir()
    for i in range(2):
        torch.save({"evil\x1b[2J.weight": torch.ones(2) * i}, folder / f"s{i}.pt")
    r = cli("series", folder)
    assert r.returncode == 0 and "\x1b" not in r.stdout and "evil\\x1b[2J.weight" in r.stdout


def test_key_that_vanishes_and_one_checkpoint(tmp_path, cli):
    folder = tmp_path / "run"
    folder.mkdir()
    torch.save({"a": torch.ones(2), "old": torch.ones(3)}, folder / "it_1.pt")
    torch.save({"a": torch.ones(2) * 2, "old": torch.ones(3)}, folder / "it_2.pt")
    torch.save({"a": torch.ones(2) * 3}, folder / "it_3.pt")
    out = series_json(cli, folder)
    kinds = {f["kind"]: f for f in out["findings"]}
    assert kinds["vanishes"]["keys"] == ["old"] and kinds["vanishes"]["checkpoints"] == [1]
    assert out["frozen"] == ["old"]
    assert {k["key"]: k["rel_change_prev"] for k in out["keys"]}["old"] == [None, 0.0, None]
    one = series_json(cli, folder / "it_2.pt")   # one checkpoint: figures, nothing to compare
    assert one["frozen"] == [] and one["keys"][0]["norm"] == [pytest.approx(2 * math.sqrt(2))]


def test_fraction_changed_counts_subnormal_and_signed_zero_differences(tmp_path):
    """The fraction of elements changed is torch's ``x != prev``: a change in the last bit of a subnormal counts, and
    -0.0 -> +0.0 does not (they compare equal)."""
    run = tmp_path / "run"
    run.mkdir()
    tiny = torch.finfo(torch.float32).smallest_normal / 4          # subnormal
    a = torch.tensor([tiny, tiny * 2, -0.0, 1.0, 3.0] * 1000)
    b = a.clone()
    b[0::5] = tiny + torch.finfo(torch.float32).smallest_normal * 2 ** -23   # one ulp of a subnormal
    b[2::5] = 0.0
    torch.save({"w": a}, run / "step_1.pt")
    torch.save({"w": b}, run / "step_2.pt")
    with open_series([run]) as s:
        t = s.measure().track("w")
    assert float((b != a).sum()) == 1000
    assert t.frac_changed[1] == float((b != a).sum()) / a.numel()


def _reference(xs: list):
    """The figures of one key straight from torch: ``xs[i]`` its tensor at checkpoint i (None: absent)."""
    out = {"norm": [], "prev": [], "first": [], "frac": [], "nonfinite": []}
    first = prev = None
    for x in xs:
        if x is None:
            for v in out.values():
                v.append(None)
            prev = None
            continue
        w = x.double()
        out["norm"].append(float(torch.linalg.vector_norm(w)))
        out["nonfinite"].append(int((~torch.isfinite(x)).sum()))
        if prev is not None and prev.shape == x.shape:
            if prev.dtype == x.dtype and torch.equal(x, prev):
                out["prev"].append(0.0)
            else:
                out["prev"].append(float(torch.linalg.vector_norm(w - prev.double()) / torch.linalg.vector_norm(
                    prev.double())))
            out["frac"].append(float(((x != prev) & ~(x.isnan() & prev.isnan())).sum()) / x.numel())
        else:
            out["prev"].append(None)
            out["frac"].append(None)
        if first is None:
            out["first"].append(0.0)
        elif first.shape == x.shape:
            out["first"].append(float(torch.linalg.vector_norm(w - first.double()) / torch.linalg.vector_norm(
                first.double())))
        else:
            out["first"].append(None)
        first = x if first is None else first
        prev = x
    return out


def test_chunk_major_windows_match_torch(tmp_path, monkeypatch):
    """Checkpoints measured a window at a time, chunk by chunk (tiny chunks and windows here, so a tensor spans
    many of each): a chunk left unchanged reuses its figures, a frozen stretch, a NaN, a key absent for a
    checkpoint, a shape change, a dtype change and a non-contiguous tensor all give torch's figures."""
    from explorer.core.series import measure
    monkeypatch.setattr(measure, "CHUNK", 64)
    monkeypatch.setattr(measure, "WINDOW", 3)
    g = torch.Generator().manual_seed(3)
    run = tmp_path / "run"
    run.mkdir()
    w = torch.randn(40, 16, generator=g)
    seen = []
    for step in range(20):
        if step in (4, 5, 6):
            pass                                   # frozen stretch
        elif step % 3 == 0:
            w = w.clone()
            w[step % 40, :] += 1.0                 # one chunk of ten changes
        else:
            w = w + 0.01 * torch.randn(w.shape, generator=g)
        x = w
        if step == 8:
            x = w.clone()
            x[3, 3] = float("nan")
        if step == 12:
            x = torch.randn(16, 40, generator=g)   # another shape
        if step >= 15:
            x = w.double()                          # another dtype
        if step == 17:
            x = w.t().contiguous().t()              # same values, column-major: not contiguous
            assert not x.is_contiguous()
        sd = {} if step == 10 else {"w": x}       # absent at step 10
        torch.save(sd, run / f"step_{step}.pt")
        seen.append(sd.get("w"))
    with open_series([run]) as s:
        t = s.measure(use_cache=False).track("w")
    ref = _reference(seen)
    assert t.present == [x is not None for x in seen]
    assert t.nonfinite == ref["nonfinite"]
    assert t.frac_changed == ref["frac"]
    for mine, theirs in ((t.norm, ref["norm"]), (t.rel_change_prev, ref["prev"]), (t.rel_change_first, ref["first"])):
        assert [v is None for v in mine] == [v is None for v in theirs]
        for a, b in zip(mine, theirs):
            if b is not None:
                assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-5)
    assert t.rel_change_prev[5] == 0.0 and t.frac_changed[5] == 0.0 and t.norm[5] == t.norm[4]


def test_a_growth_that_prints_as_one_is_no_finding(tmp_path, cli):
    """Norms that grow by 0.05 % (printed "×1") are not named among those that grow fastest; one that doubles is."""
    (tmp_path / "run").mkdir()
    base = {"still.weight": torch.ones(100), "grows.weight": torch.ones(100)}
    torch.save(base, tmp_path / "run" / "step_1.pt")
    torch.save({"still.weight": torch.ones(100) * 1.0005, "grows.weight": torch.ones(100) * 2},
               tmp_path / "run" / "step_2.pt")
    out = series_json(cli, tmp_path / "run")
    growth = {f["kind"]: f for f in out["findings"]}["fastest_growth"]
    assert growth["keys"] == ["grows.weight"], growth
