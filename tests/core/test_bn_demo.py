"""The BatchNorm demo: every action checked against torch doing the same steps directly."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from explorer.core import bn_demo
from explorer.core.bn_demo import DEFAULT_SEQUENCE, BatchNormDemo, run_default_sequence
from explorer.core.bn_observe import (LEFT, RIGHT, VARIANTS, make_batch, make_model, observe,
                                      old_version_state_dict)
from explorer.core.bn_sentence import describe
from explorer.errors import DemoActionError
from explorer.core.atomic import atomic_write_text as write_text_atomic

ROOT = Path(__file__).resolve().parents[2]
VARIANT_NAMES = list(VARIANTS)


def run(*args, cwd=ROOT):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def buffers(model):
    bn = model.bn
    return bn.running_mean.clone(), bn.running_var.clone(), int(bn.num_batches_tracked)


def side_buffers(obs, name="bn"):
    s = obs.modules[name]
    return torch.tensor(s.running_mean), torch.tensor(s.running_var), s.num_batches_tracked


def pre_bn(model, x):
    """The input the BatchNorm sees, computed directly."""
    with torch.no_grad():
        return model.linear(x) if hasattr(model, "linear") else model.conv(x)


def batch_stats(h):
    dims = [0] if h.dim() == 2 else [0, 2, 3]
    return h.mean(dims), h.var(dims, unbiased=True)


def reference(variant, seed=0, offset=0):
    """An independent instance with the same initial weights as a demo side."""
    torch.manual_seed(seed + offset)
    return VARIANTS[variant].model_class()


@pytest.fixture(params=VARIANT_NAMES)
def demo(request):
    return BatchNormDemo(request.param, seed=0)


def assert_buffers(obs, expected_mean, expected_var, expected_nbt):
    rm, rv, nbt = side_buffers(obs)
    torch.testing.assert_close(rm, expected_mean.float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(rv, expected_var.float(), rtol=1e-5, atol=1e-6)
    assert nbt == expected_nbt


def test_seeded_models_and_batches_are_reproducible(demo):
    ref = reference(demo.variant.name)
    for k, v in ref.state_dict().items():
        assert torch.equal(v, demo.left.state_dict()[k]), k
    assert torch.equal(demo.x, make_batch(demo.variant, 0, 0))
    assert not torch.equal(make_batch(demo.variant, 0, 1), demo.x)


def test_eval_forward_leaves_statistics_unchanged(demo):
    """The article's example 2 is wrong: an eval-mode forward fills nothing."""
    step = demo.forward_eval()
    ref = reference(demo.variant.name).eval()
    with torch.no_grad():
        ref(demo.x)
    rm, rv, nbt = buffers(ref)
    assert torch.equal(rm, torch.zeros_like(rm)) and torch.equal(rv, torch.ones_like(rv)) and nbt == 0
    assert step.before[LEFT].modules["bn"].buffers() == step.after[LEFT].modules["bn"].buffers()
    assert_buffers(step.after[LEFT], rm, rv, 0)
    assert "kept running_mean, running_var and num_batches_tracked exactly as they were" in step.sentence
    assert "changed by" not in step.sentence.split("; the left eval")[0]


@pytest.mark.parametrize("momentum", [0.1, 0.3])
def test_train_forward_updates_with_momentum(demo, momentum):
    demo.forward_eval()  # leaves the model in eval mode: the train forward must switch it back
    demo.set_momentum(momentum)
    demo.forward_train()
    step = demo.forward_train(batch=1)
    ref = reference(demo.variant.name)
    mean = torch.zeros(ref.bn.num_features)
    var = torch.ones(ref.bn.num_features)
    for k in (0, 1):
        bm, bv = batch_stats(pre_bn(ref, make_batch(demo.variant, 0, k)))
        mean = (1 - momentum) * mean + momentum * bm
        var = (1 - momentum) * var + momentum * bv  # the unbiased batch variance
    assert_buffers(step.after[LEFT], mean, var, 2)
    # and torch itself agrees
    ref.bn.momentum = momentum
    ref.train()
    with torch.no_grad():
        ref(make_batch(demo.variant, 0, 0))
        ref(make_batch(demo.variant, 0, 1))
    assert_buffers(step.after[LEFT], ref.bn.running_mean, ref.bn.running_var, 2)
    assert "num_batches_tracked went from 1 to 2" in step.sentence


def test_momentum_none_is_a_cumulative_average(demo):
    demo.set_momentum(None)
    for k in (0, 1, 2):
        step = demo.forward_train(batch=k)
    ref = reference(demo.variant.name)
    stats = [batch_stats(pre_bn(ref, make_batch(demo.variant, 0, k))) for k in (0, 1, 2)]
    mean = torch.stack([m for m, _ in stats]).mean(0)
    var = torch.stack([v for _, v in stats]).mean(0)
    assert_buffers(step.after[LEFT], mean, var, 3)
    assert step.after[LEFT].modules["bn"].momentum is None


def test_momentum_zero_changes_only_the_counter_and_the_sentence_says_so(demo):
    """Same action, different tensors, different sentence: it is generated, not canned."""
    demo.set_momentum(0.0)
    step = demo.forward_train()
    assert_buffers(step.after[LEFT], torch.zeros(demo.left.bn.num_features), torch.ones(demo.left.bn.num_features), 1)
    assert "running_mean and running_var did not change" in step.sentence
    assert "num_batches_tracked went from 0 to 1" in step.sentence


def test_loading_copies_statistics_then_they_diverge(demo):
    demo.forward_train()
    demo.forward_train(batch=1)
    step = demo.save_and_load()
    assert step.created == (RIGHT,)
    assert step.before[RIGHT].modules["bn"].num_batches_tracked == 0  # the fresh right, observed before the load
    for k, v in demo.left.state_dict().items():
        assert torch.equal(v, demo.right.state_dict()[k]), k
    assert step.after[RIGHT].modules["bn"].buffers() == step.after[LEFT].modules["bn"].buffers()
    assert step.load.error is None and not step.load.missing_keys and not step.load.unexpected_keys
    assert "left and right running_mean and running_var are now identical" in step.sentence
    # torch directly
    src, dst = reference(demo.variant.name), reference(demo.variant.name, offset=1)
    src.train()
    with torch.no_grad():
        src(make_batch(demo.variant, 0, 0))
        src(make_batch(demo.variant, 0, 1))
    dst.load_state_dict(src.state_dict())
    assert_buffers(step.after[RIGHT], *buffers(dst))

    left_before = step.after[LEFT].modules["bn"].buffers()
    step = demo.forward_train(side=RIGHT, batch=2)
    assert step.after[LEFT].modules["bn"].buffers() == left_before
    assert step.after[RIGHT].modules["bn"].running_mean != step.after[LEFT].modules["bn"].running_mean
    assert "now differ by up to" in step.sentence
    dst.train()
    with torch.no_grad():
        dst(make_batch(demo.variant, 0, 2))
    assert_buffers(step.after[RIGHT], *buffers(dst))


def test_frozen_bn_then_parent_train_updates_statistics(demo):
    demo.forward_train()
    frozen = demo.freeze_bn()
    assert frozen.after[LEFT].modules["bn"].training is False and frozen.after[LEFT].training is True
    still = demo.forward(batch=1)
    assert still.after[LEFT].modules["bn"].buffers() == frozen.after[LEFT].modules["bn"].buffers()
    trap = demo.model_train()
    assert trap.after[LEFT].modules["bn"].training is True
    assert "left bn is now in train mode" in trap.sentence.lower()
    moved = demo.forward(batch=1)
    assert "num_batches_tracked went from 1 to 2" in moved.sentence

    ref = reference(demo.variant.name)
    ref.train()
    with torch.no_grad():
        ref(demo.x)
        ref.bn.eval()
        ref(make_batch(demo.variant, 0, 1))
        assert int(ref.bn.num_batches_tracked) == 1
        ref.train()
        ref(make_batch(demo.variant, 0, 1))
    assert_buffers(moved.after[LEFT], *buffers(ref))
    m = 0.1
    old_mean, old_var, _ = side_buffers(still.after[LEFT])
    bm, bv = batch_stats(pre_bn(ref, make_batch(demo.variant, 0, 1)))
    assert_buffers(moved.after[LEFT], (1 - m) * old_mean + m * bm, (1 - m) * old_var + m * bv, 2)


def test_track_running_stats_off_stops_updates_but_eval_still_uses_them(demo):
    demo.forward_train()
    demo.set_track_running_stats(False)
    step = demo.forward_train(batch=2)
    assert step.before[LEFT].modules["bn"].buffers() == step.after[LEFT].modules["bn"].buffers()
    # eval mode still normalises with the (stale) running statistics: check against F.batch_norm with them
    bn = demo.left.bn
    h = pre_bn(demo.left, demo.x)
    with torch.no_grad():
        expected = F.batch_norm(h, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
        if hasattr(demo.left, "head"):
            expected = demo.left.head(expected.relu().mean(dim=(2, 3)))
    torch.testing.assert_close(torch.tensor(step.after[LEFT].output_eval), expected.reshape(expected.shape[0], -1))
    toggled = demo.toggle_track_running_stats()
    assert toggled.params["enabled"] is True and "went from False to True" in toggled.sentence


def test_never_trained_checkpoint_resets_statistics(demo):
    demo.forward_train()
    demo.save_and_load()
    demo.forward_train(side=RIGHT, batch=1)
    step = demo.load_default(target=RIGHT)
    n = demo.left.bn.num_features
    assert_buffers(step.after[RIGHT], torch.zeros(n), torch.ones(n), 0)
    assert "went from 2 to 0 (the checkpoint's value)" in step.sentence
    fresh = reference(demo.variant.name, offset=2)
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, demo.right.state_dict()[k]), k


OLD_CASES = [  # (metadata, strict) -> raises?, missing keys reported
    ("old", True, False, []),
    ("old", False, False, []),
    ("none", True, False, []),
    ("none", False, False, []),
    ("current", True, True, []),
    ("current", False, False, ["bn.num_batches_tracked"]),
]


@pytest.mark.parametrize("metadata,strict,raises,missing", OLD_CASES)
def test_old_version_checkpoint(demo, metadata, strict, raises, missing):
    demo.forward_train()
    demo.forward_train(batch=1)
    demo.forward_train(batch=2)                   # left: num_batches_tracked 3
    demo.save_and_load()
    demo.load_default(target=RIGHT)
    demo.forward_train(side=RIGHT, batch=1)       # right: num_batches_tracked 1, other statistics
    step = demo.load_old_checkpoint(metadata=metadata, strict=strict)
    assert "bn.num_batches_tracked" not in step.load.checkpoint_keys
    assert (step.load.checkpoint_metadata is None) == (metadata == "none")
    assert bool(step.load.error) == raises
    assert list(step.load.missing_keys) == missing

    # torch directly, on independent instances in the same state
    left = reference(demo.variant.name)
    left.train()
    with torch.no_grad():
        for k in (0, 1, 2):
            left(make_batch(demo.variant, 0, k))
    right = reference(demo.variant.name, offset=2)
    right.train()
    with torch.no_grad():
        right(make_batch(demo.variant, 0, 1))
    sd = left.state_dict()
    ckpt = type(sd)((k, v) for k, v in sd.items() if k != "bn.num_batches_tracked")
    if metadata != "none":
        import copy
        ckpt._metadata = copy.deepcopy(sd._metadata)
        if metadata == "old":
            ckpt._metadata["bn"]["version"] = 1
    if raises:
        with pytest.raises(RuntimeError, match="Missing key"):
            right.load_state_dict(ckpt, strict=strict)
    else:
        r = right.load_state_dict(ckpt, strict=strict)
        assert list(r.missing_keys) == missing
    assert_buffers(step.after[RIGHT], *buffers(right))
    # what that means: the statistics are copied (even when it raised), num_batches_tracked is the target's own
    assert_buffers(step.after[RIGHT], left.bn.running_mean, left.bn.running_var, 1)
    assert "num_batches_tracked stayed 1, although the checkpoint has no num_batches_tracked" in step.sentence
    assert "but num_batches_tracked is bn 3 on the left and 1 on the right" in step.sentence
    assert ("raised RuntimeError" in step.sentence) == raises


def test_old_version_state_dict_shape():
    m = make_model(VARIANTS["linear"], 0)
    for meta in ("old", "none", "current"):
        sd = old_version_state_dict(m, meta)
        assert "bn.num_batches_tracked" not in sd and "bn.running_mean" in sd
        got = getattr(sd, "_metadata", None)
        if meta == "none":
            assert got is None
        else:
            assert got["bn"]["version"] == (1 if meta == "old" else 2)


def test_observing_changes_nothing(demo):
    demo.forward_train()
    before = {k: v.clone() for k, v in demo.left.state_dict().items()}
    modes = [m.training for m in demo.left.modules()]
    a = observe(demo.left, demo.x)
    b = observe(demo.left, demo.x)
    assert a == b
    for k, v in demo.left.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert [m.training for m in demo.left.modules()] == modes


def test_undo_redo_restores_the_models(demo):
    demo.forward_train()
    demo.freeze_bn()
    demo.set_momentum(None)
    demo.save_and_load()
    demo.forward_train(side=RIGHT, batch=1)
    after = [s.after for s in demo.steps]
    demo.go_to(1)
    assert demo.right is None and demo.left.bn.training is False and demo.left.training is True
    assert observe(demo.left, demo.x) == after[1][LEFT]
    demo.go_to(-1)
    assert observe(demo.left, demo.x) == demo.current()[LEFT]
    assert int(demo.left.bn.num_batches_tracked) == 0
    demo.redo()
    demo.redo()
    demo.redo()
    assert demo.position == 2 and demo.left.bn.momentum is None
    demo.go_to(4)
    assert observe(demo.right, demo.x) == after[4][RIGHT]
    # an action after going back drops what was ahead, and runs on the restored state
    demo.go_to(2)
    step = demo.forward(batch=1)  # bn still frozen at step 2
    assert len(demo.steps) == 4 and demo.position == 3
    assert step.before[LEFT].modules["bn"].buffers() == step.after[LEFT].modules["bn"].buffers()
    with pytest.raises(DemoActionError):
        demo.go_to(10)


def test_export_script_replays_and_asserts_the_same_values(tmp_path):
    demo = run_default_sequence("linear")
    path = tmp_path / "replay.py"
    demo.save_script(path)
    r = run(str(path), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    by_step = {(d["step"], d["side"]): d["buffers"] for d in lines}
    assert len({s for s, _ in by_step}) == len(DEFAULT_SEQUENCE)
    for i, step in enumerate(demo.history, 1):
        for side, obs in step.after.items():
            if obs is None:
                assert (i, side) not in by_step
                continue
            got = by_step[(i, side)]["bn"]
            want = obs.modules["bn"].buffers()
            assert got["num_batches_tracked"] == want["num_batches_tracked"]
            assert got["running_mean"] == pytest.approx(want["running_mean"], rel=1e-6, abs=1e-7)
            assert got["running_var"] == pytest.approx(want["running_var"], rel=1e-6, abs=1e-7)
    assert "load_state_dict raised: Error(s) in loading state_dict" in r.stdout
    assert r.stdout.rstrip().endswith("all steps reproduced")


def test_export_script_fails_when_a_recorded_value_is_wrong(tmp_path):
    """The script's checks can fail: tamper with one recorded num_batches_tracked."""
    demo = BatchNormDemo("conv")
    demo.forward_train()
    text = demo.export_script()
    assert "'num_batches_tracked': 1}" in text
    path = tmp_path / "bad.py"
    path.write_text(text.replace("'num_batches_tracked': 1}", "'num_batches_tracked': 2}"))
    r = run(str(path), cwd=tmp_path)
    assert r.returncode != 0 and "AssertionError" in r.stderr


def test_export_script_is_written_atomically(tmp_path, monkeypatch):
    target = tmp_path / "out.py"
    target.write_text("old")
    write_text_atomic(target, "new")
    assert target.read_text() == "new"

    def boom(src, dst):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        write_text_atomic(target, "newer")
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.py"]


def test_errors_are_explorer_errors(demo):
    with pytest.raises(DemoActionError, match="no right instance"):
        demo.forward_train(side=RIGHT)
    with pytest.raises(DemoActionError, match="momentum"):
        demo.set_momentum(1.5)
    with pytest.raises(DemoActionError, match="unknown demo action"):
        demo.apply("drop_table")
    with pytest.raises(DemoActionError, match="variant"):
        BatchNormDemo("mlp")
    assert demo.steps == []


def test_describe_reports_only_what_differs():
    demo = BatchNormDemo("linear")
    obs = demo.observe()
    assert describe(obs, obs, ()) == "Nothing observed changed."
    text = describe(obs, obs, (LEFT,))
    assert text.startswith("Left bn kept running_mean, running_var and num_batches_tracked exactly")


def test_cli_json_matches_the_session():
    r = run("main.py", "demo", "batchnorm", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["variant"] == "linear" and len(out["steps"]) == len(DEFAULT_SEQUENCE)
    assert [s["action"] for s in out["steps"]] == [a for a, _ in DEFAULT_SEQUENCE]
    first = out["steps"][0]
    assert first["action"] == "forward_eval"
    assert first["before"]["left"]["modules"]["bn"] == {**first["after"]["left"]["modules"]["bn"], "training": True}
    assert first["after"]["left"]["modules"]["bn"]["running_mean"] == [0.0] * 5
    assert first["after"]["left"]["modules"]["bn"]["num_batches_tracked"] == 0
    demo = run_default_sequence("linear")
    assert out["steps"] == json.loads(json.dumps([s.to_json() for s in demo.history]))
    assert all(s["sentence"] for s in out["steps"])


def test_cli_text_and_conv_variant():
    r = run("main.py", "demo", "batchnorm", "--variant", "conv")
    assert r.returncode == 0, r.stderr
    assert "ConvBatchNormModel" in r.stdout
    assert r.stdout.count("\nstep ") == len(DEFAULT_SEQUENCE)
    assert "num_batches_tracked  1  (was 0)" in r.stdout
    bad = run("main.py", "demo", "batchnorm", "--variant", "mlp")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_a_failing_action_leaves_no_half_done_state(demo, monkeypatch):
    demo.forward_train()
    snapshot = {k: v.clone() for k, v in demo.left.state_dict().items()}

    def broken_load(*a, **k):
        demo.left.bn.running_mean.add_(1.0)  # torch changed something, then failed unexpectedly
        raise KeyboardInterrupt
    monkeypatch.setattr(bn_demo, "load_state", broken_load)
    with pytest.raises(KeyboardInterrupt):
        demo.save_and_load()
    assert demo.right is None and len(demo.steps) == 1
    for k, v in demo.left.state_dict().items():
        assert torch.equal(v, snapshot[k]), k
