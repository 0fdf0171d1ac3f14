"""Issue 15 point 3: listing a file needs no torch. ``python main.py inspect`` of safetensors (one file, a sharded
folder, the sparse 70B layout of ``benchmarks/bench_scale.py``) and of torch.save zip files runs without importing
torch (1+ s), and answers byte for byte what it answers when torch is imported first; so does ``diff`` of such files
(values read and compared through numpy) as long as no figure needs a float sum (see ``core/float_sums``).
Commands run in subprocesses, as a user runs them; ``-X importtime`` lists every module the run imported."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[2]
# main.py run as it is, after ``import torch``: the same command with torch already in the process
TORCH_FIRST = "import runpy, sys, torch; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"


def _imported(stderr: str) -> tuple[set[str], str]:
    """(modules ``-X importtime`` says were imported, the rest of stderr)."""
    names, rest = set(), []
    for line in stderr.splitlines(keepends=True):
        if line.startswith("import time:"):
            names.add(line.rsplit("|", 1)[1].strip())
        else:
            rest.append(line)
    return names, "".join(rest)


def run(*args, torch_first: bool = False, package: str = "torch"):
    """(exit status, stdout, stderr without import times, the modules of ``package`` imported) of ``main.py ARGS``."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    head = ["-c", TORCH_FIRST] if torch_first else ["-X", "importtime"]
    r = subprocess.run([sys.executable, *head, str(ROOT / "main.py"), *map(str, args)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    names, err = _imported(r.stderr)
    if not torch_first:
        assert "explorer.cli" in names, r.stderr[-2000:]   # the import times were read
    return r.returncode, r.stdout, err, sorted(n for n in names if n == package or n.startswith(package + "."))


class _Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("notorch")
    torch.manual_seed(0)
    model = _Model()
    model.head[1].to(torch.bfloat16)
    sd = model.state_dict()
    out = {}
    mixed = {"f32": torch.randn(3, 4), "f16": torch.randn(5, dtype=torch.float16),
             "bf16": torch.randn(2, 3).to(torch.bfloat16), "e4m3": torch.randn(4, 2).to(torch.float8_e4m3fn),
             "e5m2": torch.randn(3).to(torch.float8_e5m2), "i64": torch.arange(6).reshape(2, 3),
             "flag": torch.tensor([True, False]), "layer.0.w": torch.randn(2, 2)}
    save_file(mixed, d / "mixed.safetensors", metadata={"format": "pt", "note": "x"})
    out["safetensors"] = d / "mixed.safetensors"
    shards = d / "sharded"
    shards.mkdir()
    items = list({k: v.contiguous() for k, v in sd.items()}.items())
    weight_map = {}
    for i, part in enumerate((items[:4], items[4:]), 1):
        name = f"model-{i:05d}-of-00002.safetensors"
        save_file(dict(part), shards / name, metadata={"format": "pt"})
        weight_map.update((k, name) for k, _ in part)
    (shards / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    out["sharded"] = shards
    spec = importlib.util.spec_from_file_location("bench_scale", ROOT / "benchmarks" / "bench_scale.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.make_checkpoint(str(d / "llama70b"), 4)   # real headers, holes for the data: a few MB of disk
    out["sparse70b"] = d / "llama70b"
    torch.save(sd, d / "sd.pt")
    out["torch-zip"] = d / "sd.pt"
    opt = torch.optim.Adam(model.conv.parameters())
    model.conv(torch.randn(1, 3, 5, 5)).sum().backward()
    opt.step()
    torch.save({"model": sd, "optimizer": opt.state_dict(), "epoch": 3, "array": np.arange(3), "dtype": torch.float16,
                "size": torch.Size([2, 3])}, d / "full.pt")
    out["torch-zip checkpoint"] = d / "full.pt"
    torch.save(model, d / "module.pt")
    out["pickled module"] = d / "module.pt"
    return out


@pytest.mark.parametrize("name", ["safetensors", "sharded", "sparse70b", "torch-zip", "torch-zip checkpoint",
                                  "pickled module"])
@pytest.mark.parametrize("mode", [[], ["--json"], ["--flat"]])
def test_inspect_imports_no_torch_and_answers_the_same(files, name, mode):
    rc, out, err, torch_modules = run("inspect", files[name], *mode)
    assert rc == 0 and err == "", err
    assert torch_modules == []
    if mode == ["--json"]:
        json.loads(out)
    rc2, out2, err2, _ = run("inspect", files[name], *mode, torch_first=True)
    assert (rc2, out2, err2) == (rc, out, err)


@pytest.mark.parametrize("name", ["safetensors", "sparse70b", "torch-zip"])
def test_inspect_imports_no_numpy_either(files, name):
    """Headers and pickles of tensors are read with the standard library alone (numpy: ~0.1 s to import); a pickle
    holding numpy values imports it to decode them."""
    rc, _, err, numpy_modules = run("inspect", files[name], package="numpy")
    assert rc == 0 and err == "" and numpy_modules == []
    rc, _, err, numpy_modules = run("inspect", files["torch-zip checkpoint"], package="numpy")
    assert rc == 0 and "numpy" in numpy_modules


def test_the_listing_is_complete_without_torch(files):
    """Not a trivially empty answer: every tensor of the 70B layout, every dtype of the mixed file."""
    rc, out, _, _ = run("inspect", files["sparse70b"], "--json")
    assert rc == 0 and len(json.loads(out)["entries"]) == 723
    rc, out, _, _ = run("inspect", files["safetensors"], "--json")
    got = {e["path"][0]: e["dtype"] for e in json.loads(out)["entries"]}
    assert got == {"f32": "float32", "f16": "float16", "bf16": "bfloat16", "e4m3": "float8_e4m3fn",
                   "e5m2": "float8_e5m2", "i64": "int64", "flag": "bool", "layer.0.w": "float32"}


@pytest.mark.parametrize("args", [["--help"], ["inspect", "--help"], ["inspect", "/no/such/file.safetensors"]])
def test_help_and_errors_import_no_torch(args):
    rc, out, err, torch_modules = run(*args)
    assert torch_modules == []
    if args[-1] == "--help":
        assert rc == 0 and "inspect" in out
    else:
        assert rc == 2 and err.startswith("error: /no/such/file.safetensors: no such file") and err.count("\n") == 1


def test_help_lists_every_command_as_before():
    """Commands not run are listed from their docstrings, without importing them: the same help as importing all."""
    from explorer import cli
    rc, out, _, _ = run("--help")
    assert rc == 0 and out == cli.build_parser().format_help()
    for name in cli.COMMANDS:
        assert f"    {name} " in out


@pytest.fixture(scope="module")
def twins(files) -> dict[str, Path]:
    """Files to diff against ``files``: the mixed safetensors with a key reshaped, one dropped and one added
    (values alike), and with bfloat16/float16/float32 values changed."""
    from safetensors.torch import load_file
    d = files["safetensors"].parent
    mixed = load_file(files["safetensors"])
    twin = dict(mixed, f32=mixed["f32"].reshape(4, 3), extra=torch.ones(2, dtype=torch.bfloat16))
    del twin["flag"]
    save_file(twin, d / "twin.safetensors")
    changed = dict(mixed, bf16=mixed["bf16"] * 2, f16=mixed["f16"] + 1, f32=mixed["f32"] - 0.5)
    save_file(changed, d / "changed.safetensors")
    return {"twin": d / "twin.safetensors", "changed": d / "changed.safetensors"}


def _path(files, twins, name) -> Path:
    return files[name] if name in files else twins[name]


@pytest.mark.parametrize("a,b", [("safetensors", "safetensors"), ("safetensors", "twin"),
                                 ("torch-zip", "sharded"), ("torch-zip", "torch-zip"),
                                 ("sharded", "torch-zip")])
@pytest.mark.parametrize("mode", [[], ["--json"]])
def test_diff_imports_no_torch_and_answers_the_same(files, twins, a, b, mode):
    """Identical values (bf16, fp16, fp8, ints, bool included), keys only on one side, shapes that differ: read,
    compared byte for byte and counted (NaN/Inf) through numpy."""
    pa, pb = _path(files, twins, a), _path(files, twins, b)
    rc, out, err, torch_modules = run("diff", pa, pb, *mode)
    assert rc in (0, 1) and err == "", err
    assert torch_modules == []
    if mode == ["--json"]:
        summary = json.loads(out)["summary"]
        assert summary["identical"] > 0
        assert (summary["only_a"], summary["only_b"], summary["shape_differs"]) == \
            ((1, 1, 1) if b == "twin" else (0, 0, 0))
    rc2, out2, err2, _ = run("diff", pa, pb, *mode, torch_first=True)
    assert (rc2, out2, err2) == (rc, out, err)


@pytest.mark.parametrize("mode", [[], ["--json"]])
def test_diff_of_changed_values_answers_the_same(files, twins, mode):
    """Changed bf16/fp16/fp32 values: read, compared and summed (max/mean |Δ|, relative L2, cosine) through numpy,
    with no torch, and the answer is the one a run with torch imported first gives."""
    rc, out, err, torch_modules = run("diff", files["safetensors"], twins["changed"], *mode)
    assert rc == 1 and err == "", err
    assert not torch_modules, sorted(torch_modules)[:5]
    rc2, out2, err2, _ = run("diff", files["safetensors"], twins["changed"], *mode, torch_first=True)
    assert (rc2, out2, err2) == (rc, out, err)
    if mode:
        changed = {k["key"] for k in json.loads(out)["keys"] if k["status"] == "changed"}
        assert changed == {"bf16", "f16", "f32"}


def test_a_command_that_needs_torch_imports_it():
    """The check above can fail: ``stats`` of a model's tensor builds the model, with torch."""
    rc, out, err, torch_modules = run("stats", "demo:MyBatchNormModel", "bn.running_var")
    assert rc == 0, err
    assert "torch" in torch_modules


STATS_KEYS = {"safetensors": ["f32", "f16", "bf16", "e4m3", "e5m2", "i64", "flag", "layer.0.w"],
              "torch-zip": ["conv.weight", "bn.running_mean", "bn.num_batches_tracked", "head.1.weight"],
              "torch-zip checkpoint": ["model/conv.weight", "optimizer/state/0/exp_avg", "model/head.1.bias"]}


@pytest.mark.parametrize("name", list(STATS_KEYS))
@pytest.mark.parametrize("mode", [[], ["--json"]])
def test_stats_imports_no_torch_and_answers_the_same(files, name, mode):
    """``stats`` of a checkpoint's tensor (float32/16, bfloat16, float8, int64, bool; by key and by entry path)
    reads and measures its values through numpy: no torch, and the answer a run with torch imported first gives,
    which equals what torch's own values say."""
    from explorer.core.loaders import open_checkpoint
    ck = open_checkpoint(files[name])
    for key in STATS_KEYS[name]:
        rc, out, err, torch_modules = run("stats", files[name], key, *mode)
        assert rc == 0 and err == "", err
        assert torch_modules == [], key
        rc2, out2, err2, _ = run("stats", files[name], key, *mode, torch_first=True)
        assert (rc2, out2, err2) == (rc, out, err), key
        if mode:
            got = json.loads(out)
            path = tuple(key.split("/")) if "/" in key else None
            t = ck.read(path) if path else ck.read_key(key)
            ref = t.double().numpy().ravel() if t.dtype != torch.bool else t.numpy().ravel().astype(np.float64)
            assert got["count"] == ref.size and got["min"] == ref.min() and got["max"] == ref.max(), key
            assert got["percentiles"]["50"] == pytest.approx(np.percentile(ref, 50), rel=1e-12), key
            assert got["histogram"]["counts"] == np.histogram(ref, bins=got["histogram"]["edges"])[0].tolist(), key


def test_module_versions_are_torchs_when_opened_before_torch(files):
    """A pickled module opened before torch is imported (the window lists it first) still hands torch the versions
    of torch's own classes (BatchNorm's 2) when it is simulated or read later."""
    code = ("import json, sys; from explorer.core.loaders import open_checkpoint; ck = open_checkpoint(sys.argv[1]); "
            "listed = len(ck.entries); assert 'torch' not in sys.modules; "
            "print(listed, json.dumps(ck.load_object(None)._metadata))")
    r = subprocess.run([sys.executable, "-c", code, str(files["pickled module"])], cwd=ROOT, capture_output=True,
                       text=True, timeout=300, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 0, r.stderr
    listed, metadata = r.stdout.split(" ", 1)
    expected = _Model().state_dict()._metadata
    assert int(listed) == len(_Model().state_dict()) and json.loads(metadata) == expected
    assert expected["bn"]["version"] == 2


# ---- the header checks, made on Python ints (no numpy) --------------------------------------------------------------

def _safetensors(path: Path, members: list[tuple[str, list, list]], spaced: bool, data: bytes) -> Path:
    """A header of ``(key, shape, data_offsets)`` F32 members in this order, compact (as the library writes it: the
    fast regex parse) or with spaces (the JSON parse)."""
    header = {k: {"dtype": "F32", "shape": shape, "data_offsets": offsets} for k, shape, offsets in members}
    body = json.dumps(header, separators=(", ", ": ") if spaced else (",", ":")).encode()
    path.write_bytes(len(body).to_bytes(8, "little") + body + data)
    return path


@pytest.mark.parametrize("spaced", [False, True])
def test_spans_out_of_file_order_are_read_as_the_library_reads_them(tmp_path, spaced):
    from safetensors.torch import load_file

    from explorer.core.loaders import open_checkpoint
    data = torch.arange(6, dtype=torch.float32).numpy().tobytes()
    path = _safetensors(tmp_path / "order.safetensors", [("a", [2], [16, 24]), ("b", [4], [0, 16])], spaced, data)
    ck = open_checkpoint(path)
    expected = load_file(path)
    assert [e.path[0] for e in ck.entries] == ["a", "b"]
    assert [e.location.offset for e in ck.entries] == [len(path.read_bytes()) - 24 + 16, len(path.read_bytes()) - 24]
    for key, value in expected.items():
        assert torch.equal(ck.read_key(key), value)


@pytest.mark.parametrize("spaced", [False, True])
@pytest.mark.parametrize("members,match", [
    ([("a", [2], [8, 16]), ("b", [3], [0, 12])], "overlap"),          # out of file order, overlapping
    ([("a", [2], [0, 8]), ("b", [2], [4, 12])], "overlap"),           # in order, overlapping
    ([("a", [2], [0, 8]), ("b", [2], [8, 12])], "needs 8 bytes"),     # a span that does not hold its elements
    ([("a", [2], [0, 8]), ("b", [2], [16, 24])], "truncated"),        # past the data section
    ([("a", [1], [2 ** 63, 2 ** 63 + 4])], "truncated"),              # beyond int64
])
def test_inconsistent_spans_are_refused(tmp_path, spaced, members, match):
    from explorer.core.loaders import open_checkpoint
    from explorer.errors import CorruptFileError
    path = _safetensors(tmp_path / "bad.safetensors", members, spaced, bytes(16))
    with pytest.raises(CorruptFileError, match=match):
        open_checkpoint(path)


@pytest.mark.parametrize("fmt", ["step_{}.pt", "step_{}.safetensors"])
def test_series_imports_no_torch_and_answers_the_same(tmp_path, monkeypatch, fmt):
    """``series`` measures a run (bf16, int64 and float32 keys, a NaN, a key added mid-run) through numpy views of the
    files: no torch, and the figures a run with torch imported first gives."""
    from tests.core.test_series import make_run
    make_run(tmp_path / "run", [100, 200, 300, 400], nan_at=300, added_at=200)
    if fmt.endswith(".safetensors"):
        for pt in sorted((tmp_path / "run").glob("*.pt")):
            save_file(torch.load(pt), str(pt.with_suffix(".safetensors")))
            pt.unlink()
    answers = []
    for first in (False, True):
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / f"cache-{first}"))   # measured both times
        rc, out, err, torch_modules = run("series", tmp_path / "run", "--json", torch_first=first)
        assert rc == 0, err
        answers.append(out)
        if not first:
            assert not torch_modules, sorted(torch_modules)[:5]
    assert answers[0] == answers[1]
    got = json.loads(answers[0])
    assert got["first_nonfinite"] == {"fc.weight": 2} and got["frozen"] == ["emb.weight"]
