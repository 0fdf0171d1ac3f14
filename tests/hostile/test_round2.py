"""Issue 13, one test per class this branch fixes at its root (the harness runs the whole round-two corpus too):
small files that hang (3), small files that balloon (4), the Hugging Face cache layout (6), "internal error" where a
clear line belongs (7), and long keys quoted in messages (8). Truth comes from torch and safetensors themselves."""
from __future__ import annotations

import io
import json
import os
import pickle
import struct
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from explorer.core.loaders import open_checkpoint
from explorer.errors import CorruptFileError, UnsafePathError, shorten
from tests.hostile import corpus_round2 as r2
from tests.hostile.corpus import OD, PID, Call, G, Raw, dumps, legacy_bytes, safetensors_bytes, tensor, write_torch_zip
from tests.hostile.harness import ROOT


def _cli(argv, capsys):
    from explorer.cli import main
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _one_line_naming(err: str, path) -> str:
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "internal error" not in lines[0], err[:500]
    assert str(path) in lines[0] and len(lines[0]) < 1000, lines[0][:300]
    return lines[0]


# ---- class 3: small files that hang -----------------------------------------------------------------------------

def test_small_files_that_hang_are_answered_at_once(tmp_path, capsys):
    """A 64-level tuple DAG (hashing it: 2**64 steps) as a dict key, in a frozenset, in set(), in a persistent id,
    in a DCP .metadata; a safetensors key of 150,000 escaped quotes; an index of 10**5 shards; FIFOs and a device.
    Every one is answered in well under a second of work, and the valid ones exactly as torch/safetensors read
    them."""
    items = [("linear.weight", tensor("0", (5, 10)))]
    storages = {"0": bytes(200)}
    cases = {
        "key": dumps(OD(items + [(Raw(r2.dag()), 1)])),
        "frozenset": dumps(OD(items + [("x", Raw(b"(" + r2.dag() + b"\x91"))])),
        "set": dumps(OD(items + [("x", Call(G("builtins", "set"), Raw(b"](" + r2.dag() + b"e")))])),
        "pid": dumps(OD([("w", Call(G("torch._utils", "_rebuild_tensor_v2"),
                                   PID(("storage", G("torch", "FloatStorage"), Raw(r2.dag()), "cpu", 50)),
                                   0, (5, 10), (10, 1), False, OD([])))])),
    }
    for name, pkl in cases.items():
        for kind, path in (("zip", tmp_path / f"{name}.pt"), ("legacy", tmp_path / f"{name}.legacy.pt")):
            if kind == "zip":
                write_torch_zip(str(path), pkl, storages)
            else:
                path.write_bytes(legacy_bytes(pkl, storages))
            t = time.monotonic()
            with pytest.raises(CorruptFileError) as e:  # a zip resolves a storage id when a value is first read
                ck = open_checkpoint(path)
                for entry in ck.entries:
                    ck.read(entry.path)
            assert time.monotonic() - t < 2, (name, kind)
            assert str(path) in str(e.value) and len(str(e.value)) < 600
    # the DCP metadata
    import torch.distributed.checkpoint  # noqa: F401  (the base writer)
    folder = tmp_path / "dcp"
    from tests.hostile.corpus import dcp_save, encode
    dcp_save({"w": torch.zeros(3)}, str(folder))
    meta = (folder / ".metadata").read_bytes()
    out: list = []
    encode({"planner_data": {Raw(r2.dag()): 1}}, out)
    (folder / ".metadata").write_bytes(meta[:-1] + b"".join(out) + b"b.")
    t = time.monotonic()
    with pytest.raises(CorruptFileError):
        open_checkpoint(folder)
    assert time.monotonic() - t < 2
    # printing such a structure (a value nothing hashes) is bounded too
    t = time.monotonic()
    d = ()
    for _ in range(64):
        d = (d, d)
    assert len(shorten(d)) <= 160 and time.monotonic() - t < 1
    # 150,000 escaped quotes in a key: valid, read as the safetensors library reads it
    from safetensors import safe_open
    key = '"' * 150_000
    path = tmp_path / "quotes.safetensors"
    path.write_bytes(safetensors_bytes({key: {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}},
                                       struct.pack("<2f", 1.5, -2.0)))
    t = time.monotonic()
    ck = open_checkpoint(path)
    assert time.monotonic() - t < 2
    with safe_open(str(path), "pt") as f:
        assert [e.path for e in ck.entries] == [(k,) for k in f.keys()]
        assert torch.equal(ck.read((key,)), f.get_tensor(key))
    # an index of 10**5 shards: refused (they are missing) in about a second, not 10**10 steps
    folder = tmp_path / "many-shards"
    folder.mkdir()
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {f"k{i}": f"s-{i:06d}.safetensors" for i in range(100_000)}}))
    t = time.monotonic()
    with pytest.raises(CorruptFileError, match="missing"):
        open_checkpoint(folder)
    assert time.monotonic() - t < 5
    # FIFOs and devices, in a child with a time limit: open() on a FIFO would block this test forever
    fifo = tmp_path / "model.safetensors.index.json"
    os.mkfifo(fifo)
    os.symlink(fifo, tmp_path / "link.pt")
    code = textwrap.dedent(f"""
        import sys
        from explorer.core.loaders import open_checkpoint
        from explorer.errors import UnsupportedFormatError
        for p in {[str(fifo), str(tmp_path / "link.pt"), "/dev/urandom", "/dev/zero"]!r}:
            try:
                open_checkpoint(p)
            except UnsupportedFormatError as e:
                print(e)
    """)
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": ROOT})
    lines = r.stdout.splitlines()
    assert len(lines) == 4, r.stdout + r.stderr
    assert "FIFO" in lines[0] and "FIFO" in lines[1] and "character device" in lines[2], lines
    assert all("empty" not in ln for ln in lines)


def test_real_torch_pickles_are_checked_fast_and_unchanged(tmp_path):
    """The check walks every pickle before it loads: a state dict of 30,000 tensors as torch.save writes it (mixed
    dtypes, nested in a checkpoint dict) lists exactly what torch.load reads, and the walk costs little."""
    from explorer.core.safe_pickle.hash_work import check_hash_work
    import zipfile
    sd = {f"layer{i}.weight": torch.zeros(2, 3) if i % 3 else torch.zeros(2, dtype=torch.int64)
          for i in range(30_000)}
    path = tmp_path / "big.pt"
    torch.save({"state_dict": sd, "epoch": 1}, path)
    with zipfile.ZipFile(path) as z:
        pkl = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    t = time.process_time()
    assert check_hash_work(pkl) == len(pkl)
    assert time.process_time() - t < 10   # CPU seconds, with a wide margin: the walk is checked in batches
    ck = open_checkpoint(path)
    theirs = torch.load(path, weights_only=True, mmap=True)["state_dict"]
    ours = ck.get(ck.resolve_entry("state_dict"))
    assert list(ours) == list(theirs)
    assert [tuple(ours[k].shape) for k in list(ours)[:5]] == [tuple(theirs[k].shape) for k in list(theirs)[:5]]


def _torch_pickle_pairs() -> tuple[bytes, list[bytes]]:
    """torch.save's own pickle of three tensors, cut into its header and its (key, tensor) pairs."""
    import zipfile
    buf = io.BytesIO()
    torch.save({"a": torch.zeros(2, 3), "b": torch.zeros(3), "c": torch.zeros(3, dtype=torch.float16)}, buf)
    with zipfile.ZipFile(buf) as z:
        pkl = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    head = pkl.index(b"(") + 1
    starts = [pkl.index(b"X\x01\x00\x00\x00" + k) for k in (b"a", b"b", b"c")]
    pairs = [pkl[s:e] for s, e in zip(starts, starts[1:] + [len(pkl) - 2])]
    assert pkl[-2:] == b"u."
    return pkl[:head], pairs


def test_hash_bomb_after_a_batch_checked_at_once_is_refused():
    """The walk checks the first pairs of a batch one by one, then the rest at once (its memo entries unseen): a
    tuple DAG built before, used as a key after such a batch, is still charged in full."""
    from explorer.core.safe_pickle.hash_work import check_hash_work
    head, pairs = _torch_pickle_pairs()
    first = head + b"X\x01\x00\x00\x00d" + r2.dag(r2.DAG_LEVELS) + b"".join(pairs) + b"u"
    benign = first + b"."
    assert check_hash_work(benign) == len(benign)
    bomb = first + b"(j" + struct.pack("<I", 40000 + r2.DAG_LEVELS) + b"K\x01u."
    with pytest.raises(pickle.UnpicklingError, match="hash"):
        check_hash_work(bomb)


def test_stride_that_is_a_hash_bomb_is_refused(tmp_path):
    """A file's ``_rebuild_tensor_v2`` keeps one tuple per distinct stride (it hashes it): a stride that is a tuple
    DAG is charged before the pickle loads, and the file is refused clearly instead of hanging."""
    from explorer.core.safe_pickle.hash_work import check_hash_work
    pkl = (b"\x80\x02}q\x00(X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\nq\x01((X\x07\x00\x00\x00storage"
           b"q\x02ctorch\nFloatStorage\nq\x03X\x01\x00\x00\x000q\x04X\x03\x00\x00\x00cpuq\x05K\x01tq\x06QK\x00K\x01"
           b"\x85" + r2.dag(r2.DAG_LEVELS) + b"\x89ccollections\nOrderedDict\n)RtRu.")
    with pytest.raises(pickle.UnpicklingError, match="hash"):
        check_hash_work(pkl)
    path = tmp_path / "stride.pt"
    write_torch_zip(str(path), pkl, {"0": bytes(4)})
    with pytest.raises(CorruptFileError, match="hash"):
        open_checkpoint(str(path))


# ---- class 4: small files that take gigabytes ----------------------------------------------------------------

def _peak_growth_mb(code: str) -> tuple[float, str]:
    """Run ``code`` in a child; its peak RSS growth (MB) above its RSS once torch and explorer are imported."""
    script = textwrap.dedent("""
        import resource, sys
        import torch
        import explorer.core.loaders, explorer.core.loaders.dcp, explorer.core.loaders.safetensors_reader
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out = ""
        try:
    """) + textwrap.indent(textwrap.dedent(code), "    ") + textwrap.dedent("""
        except Exception as e:
            out = f"{type(e).__name__}: {e}"
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)
        print(out)
    """)
    r = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": ROOT})
    lines = r.stdout.splitlines()
    assert len(lines) >= 1, r.stderr[-2000:]
    return float(lines[0]), "\n".join(lines[1:])


def test_small_files_that_balloon_stay_small(tmp_path):
    """A DCP bytes item that inflates to 96 MB, a 16 KB DCP checkpoint declaring a 2.4 GB tensor, a 6 MB safetensors
    header of empty lists (json would make ~190 MB of lists): each is answered with memory far below what it
    claims -- peak RSS growth measured in a child process."""
    folder = tmp_path / "bytes-item"
    r2.dcp_bytes_item(str(folder), 96 << 20)
    grow, out = _peak_growth_mb(f"""
        from explorer.core.loaders import open_checkpoint
        ck = open_checkpoint({str(folder)!r})
        out = repr(ck.get(ck.resolve_entry("extra"))["a"])[:200]
    """)
    assert grow < 40 and "not read" in out, (grow, out)
    folder = tmp_path / "whole"
    r2.dcp_whole_tensor(str(folder), 600_000_000)
    size = sum(os.path.getsize(folder / f) for f in os.listdir(folder))
    assert size < 64 << 10
    grow, out = _peak_growth_mb(f"""
        from explorer.core.loaders import open_checkpoint
        ck = open_checkpoint({str(folder)!r})
        ck.read(("w",))
    """)
    assert grow < 64 and "CorruptFileError" in out and "needs 2,400,000,000 bytes" in out, (grow, out)
    path = tmp_path / "lists.safetensors"
    path.write_bytes(r2.empty_lists_header(6 << 20))
    grow, out = _peak_growth_mb(f"""
        from explorer.core.loaders import open_checkpoint
        open_checkpoint({str(path)!r})
    """)
    assert grow < 40 and "CorruptFileError" in out and "lists and objects" in out, (grow, out)


def test_dcp_bytes_item_that_inflates_past_what_it_declares_is_refused(tmp_path, capsys):
    """A DCP value whose embedded zip declares 1,000 bytes but inflates to 96 MB: read with the explorer's own zip
    reader, the inflation stops one chunk past the declared size; the folder is refused in one clear line, in small
    memory (torch's reader would inflate it whole)."""
    folder = tmp_path / "lying-item"
    r2.dcp_bytes_item(str(folder), 96 << 20, declared=1000)
    grow, out = _peak_growth_mb(f"""
        from explorer.core.loaders import open_checkpoint
        open_checkpoint({str(folder)!r})
    """)
    assert grow < 40 and "CorruptFileError" in out and "more than the 1,000 bytes" in out, (grow, out)
    rc, _, err = _cli(["inspect", folder], capsys)
    assert rc == 2 and err.count("\n") == 1 and "zip bomb" in err and str(folder) in err, err


# ---- class 6: a Hugging Face cache snapshot ------------------------------------------------------------------

def test_hf_cache_snapshot_opens_like_safetensors_reads_it(tmp_path, capsys):
    """models--org--m/snapshots/REV/ holds an index and shards that are symlinks into ../../blobs/: it opens (folder
    and index), with the values the safetensors library reads from the blobs, in inspect, stats, diff and simulate;
    an index naming ../../blobs/<sha> directly is still refused."""
    from safetensors.torch import load_file, save_file
    src = tmp_path / "src"
    src.mkdir()
    g = torch.Generator().manual_seed(0)
    a = {"linear.weight": torch.randn(5, 10, generator=g), "linear.bias": torch.randn(5, generator=g)}
    b = {"bn.weight": torch.randn(5, generator=g), "bn.bias": torch.randn(5, generator=g),
         "bn.running_mean": torch.randn(5, generator=g), "bn.running_var": torch.rand(5, generator=g),
         "bn.num_batches_tracked": torch.tensor(3)}
    save_file(a, src / "model-00001-of-00002.safetensors")
    save_file(b, src / "model-00002-of-00002.safetensors")
    wm = {**{k: "model-00001-of-00002.safetensors" for k in a}, **{k: "model-00002-of-00002.safetensors" for k in b}}
    (src / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))
    snap = r2.hf_snapshot(str(tmp_path / "cache"), str(src))
    assert all(os.path.islink(os.path.join(snap, n)) for n in os.listdir(snap))
    truth = {**load_file(os.path.realpath(os.path.join(snap, "model-00001-of-00002.safetensors"))),
             **load_file(os.path.realpath(os.path.join(snap, "model-00002-of-00002.safetensors")))}
    for path in (snap, os.path.join(snap, "model.safetensors.index.json")):
        ck = open_checkpoint(path)
        assert {e.path[0] for e in ck.entries} == set(truth)
        for k, v in truth.items():
            assert torch.equal(ck.read((k,)), v)
    for argv in (["inspect", snap], ["stats", snap, "linear.weight"], ["diff", snap, src],
                 ["simulate", "--model", "demo:MyBatchNormModel", "--checkpoint", snap]):
        rc, out, err = _cli(argv, capsys)
        assert rc in ((0, 1) if argv[0] == "simulate" else (0,)) and not err, (argv, rc, err)
    index = os.path.join(snap, "model.safetensors.index.json")
    blob = os.readlink(os.path.join(snap, "model-00001-of-00002.safetensors"))
    os.remove(index)
    with open(index, "w") as f:
        json.dump({"weight_map": {**wm, "linear.weight": blob}}, f)
    with pytest.raises(UnsafePathError, match=r"'\.\./\.\./blobs/"):
        open_checkpoint(snap)


# ---- class 7: one clear line, never "internal error" --------------------------------------------------------------

def test_clear_lines_instead_of_internal_errors(tmp_path, capsys):
    """Lone surrogates in keys and global names print; a shape [0, 2**64], 2**62 elements, a DCP offset 'twelve'
    are one line naming the file; a ``_metadata`` that is a placeholder or nested 10**5 deep does not break
    simulate (only what torch could use of it is kept)."""
    storages = {"0": bytes(200), "1": bytes(20)}
    path = tmp_path / "surrogate.pt"
    write_torch_zip(str(path), dumps(OD([("linear.weight", tensor("0", (5, 10))), ("lone\ud800", tensor("1", (5,))),
                                         ("x", Call(G("evil\udfff", "run"), 1))])), storages)
    rc, out, err = _cli(["inspect", path], capsys)
    assert rc == 0 and not err and "lone\\ud800" in out and "evil\\udfff.run" in out
    out.encode("utf-8")  # strict: what a UTF-8 terminal gets
    path = tmp_path / "surrogate.safetensors"
    path.write_bytes(safetensors_bytes(None, bytes(8), raw_header=json.dumps(
        {"lone\ud800": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()))
    rc, out, err = _cli(["stats", path, "lone\\ud800"], capsys)
    assert rc == 0 and not err
    bad = {
        "shape.pt": (5, (0, 2 ** 64)),
        "size.pt": (2 ** 62, (2 ** 31, 2 ** 31)),
    }
    for name, (numel, shape) in bad.items():
        path = tmp_path / name
        rec = Call(G("torch._utils", "_rebuild_tensor_v2"),
                   PID(("storage", G("torch", "FloatStorage"), "0", "cpu", 50)), 0, shape, (1, 1), False, OD([]))
        write_torch_zip(str(path), dumps(OD([("w", rec)])), storages)
        rc, out, err = _cli(["inspect", path], capsys)
        assert rc == 2
        _one_line_naming(err, path)
    for name, edit in (("offset", lambda md: [setattr(i, "offset", "twelve") for i in md.storage_data.values()]),
                       ("size", lambda md: setattr(md.state_dict_metadata["w"], "size", torch.Size([2 ** 31] * 2)))):
        folder = tmp_path / f"dcp-{name}"
        from tests.hostile.corpus import dcp_save
        dcp_save({"w": torch.zeros(3)}, str(folder))
        md = pickle.loads((folder / ".metadata").read_bytes())  # our own file
        edit(md)
        (folder / ".metadata").write_bytes(pickle.dumps(md))
        for cmd in (["inspect", folder], ["stats", folder, "w"]):
            rc, out, err = _cli(cmd, capsys)
            assert rc == 2, (name, cmd, out, err)
            assert "twelve" in _one_line_naming(err, folder) or name == "size"
    # _metadata: a placeholder, or dicts nested 10**5 deep
    from explorer.core.demo_models import MyBatchNormModel
    sd = MyBatchNormModel().state_dict()
    for name, meta in (("inert", Call(G("evil", "Meta"), 1)),
                       ("deep", Raw(b"}" + b"(X\x01\x00\x00\x00a}" * 100_000 + b"u" * 100_000))):
        from tests.hostile.corpus import Build
        items = [(k, tensor(str(i), tuple(v.shape), "int64" if v.dtype == torch.int64 else "float32"))
                 for i, (k, v) in enumerate(sd.items())]
        path = tmp_path / f"meta-{name}.pt"
        write_torch_zip(str(path), dumps(Build(OD(items), {"_metadata": meta})),
                        {str(i): v.numpy().tobytes() for i, (k, v) in enumerate(sd.items())})
        ck = open_checkpoint(path)
        meta_seen = getattr(ck.get(ck.resolve_entry(None)), "_metadata", None)
        assert meta_seen is None or all(type(v) is dict for v in meta_seen.values())
        rc, out, err = _cli(["simulate", "--model", "demo:MyBatchNormModel", "--checkpoint", path], capsys)
        assert rc in (0, 1) and "internal error" not in err and "Traceback" not in err, err[:300]


# ---- class 8: long keys in messages -------------------------------------------------------------------------------

def test_messages_cut_long_keys(tmp_path, capsys):
    """An error that quotes an 8 KB key from the file is one short line that still says the key's length."""
    path = tmp_path / "long.safetensors"
    path.write_bytes(safetensors_bytes({"k" * 8192: {"dtype": "Q9", "shape": [1], "data_offsets": [0, 4]}}, bytes(4)))
    rc, out, err = _cli(["inspect", path], capsys)
    line = _one_line_naming(err, path)
    assert rc == 2 and len(line) < 400 and "8,192 characters" in line, line
    assert shorten("a\x1b[2J\rb\ud800") == "'a\\x1b[2J\\rb\\ud800'"
    assert len(shorten("x" * 10 ** 6)) < 130 and len(shorten(list(range(10 ** 6)))) < 130
    assert shorten(10 ** 5000).startswith("<int of")
