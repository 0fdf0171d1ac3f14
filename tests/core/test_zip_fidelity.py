"""Issue 13, classes 1, 2 and the zip part of 4: the explorer reads the records torch reads.

Every archive here is built record by record (tests/hostile/corpus_zip.py) and compared with torch itself: which
``data.pkl`` torch's reader returns (``torch._C.PyTorchFileReader.get_record``: bytes, never unpickled) and what
``torch.load(weights_only=True)`` gives for harmless contents.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import zipfile

import pytest
import torch

from explorer.core.loaders import open_checkpoint
from explorer.core.loaders.zip_directory import ZipDirectory
from explorer.errors import CorruptFileError
from tests.hostile.corpus import OD, dumps, tensor
from tests.hostile.corpus_zip import (VERSION, Dir, RawRec, Rec, candidates, deflate_bomb, evil_pkl, floats,
                                      one_tensor_pkl, torch_reads, zip_bytes)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CASES = sorted(candidates(b"", b""))


def _write(tmp_path, name, blob) -> str:
    path = tmp_path / name
    path.write_bytes(blob)
    return str(path)


def _values(path) -> dict:
    ck = open_checkpoint(path)
    return {"/".join(e.path): ck.read(e.path).tolist() for e in ck.entries}


def _torch_values(path) -> dict:
    return {k: v.tolist() for k, v in torch.load(path, weights_only=True).items()}


def _our_data_pkl(path) -> bytes:
    with open(path, "rb") as f:
        d = ZipDirectory(f, os.path.getsize(path), path)
        e = d.find("data.pkl")
        start, _ = d.local_header(f, e)
        if e.method == 0:
            f.seek(start)
            return f.read(e.usize)
        return bytes(d.inflate(f, e, start, 1 << 20, "data.pkl"))


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("swap", [False, True])
def test_reads_the_data_pkl_torch_reads(tmp_path, case, swap):
    """Two harmless candidates holding different tensors: the explorer lists and reads what torch does."""
    p1, p2 = one_tensor_pkl("a"), one_tensor_pkl("b")
    if swap:
        p1, p2 = p2, p1
    path = _write(tmp_path, f"{case}.pt", candidates(p1, p2)[case])
    read = torch_reads(path)
    assert read in (p1, p2)
    assert _our_data_pkl(path) == read
    ours = _values(path)
    assert list(ours) == (["a"] if read == one_tensor_pkl("a") else ["b"])
    try:
        want = _torch_values(path)
    except RuntimeError as e:  # torch.load refuses records outside the archive's folder (get_all_records)
        assert case == "cd-first-entry-other-folder", e
        want = {"b" if read == one_tensor_pkl("b") else "a": [5.0, 6.0, 7.0, 8.0]}
    assert ours == want


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("evil_first", [False, True])
def test_hostile_candidate_listed_exactly_when_torch_reads_it(tmp_path, case, evil_first, cli):
    marker = str(tmp_path / "ran")
    evil, harmless = evil_pkl(marker), one_tensor_pkl("a")
    p1, p2 = (evil, harmless) if evil_first else (harmless, evil)
    path = _write(tmp_path, f"{case}.pt", candidates(p1, p2)[case])
    read = torch_reads(path)
    assert read in (evil, harmless)
    r = cli("inspect", path, "--json")
    assert r.returncode == 0, r.stderr
    refs = json.loads(r.stdout)["references"]
    assert ("posix.system" in refs) == (read == evil), (refs, read == evil)
    assert not os.path.exists(marker)
    # the naive reader's candidate differs from torch's: the listing says so
    assert any(x.startswith("(zip)") for x in refs), refs
    text = cli("inspect", path)
    assert text.returncode == 0 and "objects the file names" in text.stdout and "(zip)" in text.stdout


def test_duplicate_names_resolved_as_miniz_does(tmp_path):
    """Random archives with repeated (and case-folded) names: every lookup finds the record torch's reader finds."""
    rng = random.Random(13)
    names = ["archive/data.pkl", "archive/DATA.pkl", "archive/data/0", "archive/Data/0", "archive/b", "archive/z"]
    checked = 0
    for trial in range(60):
        recs = [Rec("archive/version", b"3\n")]
        recs += [Rec(rng.choice(names), f"payload {i}".encode()) for i in range(rng.randint(2, 30))]
        rng.shuffle(recs)
        path = _write(tmp_path, "r.pt", zip_bytes(recs))
        reader = torch._C.PyTorchFileReader(path)
        with open(path, "rb") as f:
            d = ZipDirectory(f, os.path.getsize(path), path)
            for rec in ("data.pkl", "data/0", "b", "z"):
                e = d.find(rec)
                assert (e is not None) == reader.has_record(rec)
                if e is None:
                    continue
                start, _ = d.local_header(f, e)
                f.seek(start)
                assert f.read(e.usize) == reader.get_record(rec), (trial, rec)
                checked += 1
    assert checked > 100


def test_clean_archive_has_no_notes(tmp_path):
    path = str(tmp_path / "m.pt")
    torch.save({"w": torch.arange(4.0)}, path)
    assert open_checkpoint(path).references == []


# ---- class 2: deflated storages ------------------------------------------------------------------------------------

def _deflate_archive(src: str, dst: str) -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename))


@pytest.fixture
def deflated(tmp_path):
    g = torch.Generator().manual_seed(3)
    sd = {"w": torch.randn(64, 32, generator=g) + 2.45, "b": torch.arange(10, dtype=torch.int64),
          "h": torch.randn(7, generator=g).half()}
    plain, packed = str(tmp_path / "plain.pt"), str(tmp_path / "deflated.pt")
    torch.save(sd, plain)
    _deflate_archive(plain, packed)
    with zipfile.ZipFile(packed) as z:
        assert all(i.compress_type == zipfile.ZIP_DEFLATED for i in z.infolist())
    return plain, packed


def test_deflated_storages_read_as_torch_reads_them(deflated, cli):
    plain, packed = deflated
    ours = open_checkpoint(packed)
    want = torch.load(packed, weights_only=True)
    for key, value in want.items():
        got = ours.read((key,))
        assert got.dtype == value.dtype and torch.equal(got, value), key
    for key in ("w", "h"):
        r = cli("stats", packed, key, "--json")
        assert r.returncode == 0, r.stderr
        stats = json.loads(r.stdout)
        t = want[key].double()
        assert stats["mean"] == pytest.approx(t.mean().item(), rel=1e-6)
        assert stats["min"] == t.min().item() and stats["max"] == t.max().item()


def test_deflated_diff_against_torch_and_stored(deflated, cli):
    """``diff`` of the deflated archive against the stored one: every key identical, as torch.load sees them."""
    plain, packed = deflated
    a, b = torch.load(packed, weights_only=True), torch.load(plain, weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    r = cli("diff", packed, plain, "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)["summary"]
    assert summary["identical"] == len(a) and summary["changed"] == 0, summary


def test_deflated_storage_whose_size_disagrees_is_refused(tmp_path, cli):
    sd = dumps(OD([("w", tensor("0", (4,)))]))
    path = _write(tmp_path, "m.pt", zip_bytes([Rec("archive/data.pkl", sd),
                                               Rec("archive/data/0", floats(1, 2, 3, 4, 5), 8), VERSION]))
    with pytest.raises(RuntimeError):  # torch refuses it too
        torch.load(path, weights_only=True)
    r = cli("stats", path, "w")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "compressed" in r.stderr and path in r.stderr


@pytest.mark.parametrize("floats_held", [3, 5])
def test_stored_storage_whose_size_disagrees_is_refused(tmp_path, cli, floats_held):
    """torch.load reads a stored record only when it holds exactly the storage's bytes (longer or shorter)."""
    sd = dumps(OD([("w", tensor("0", (4,)))]))
    path = _write(tmp_path, "m.pt", zip_bytes([Rec("archive/data.pkl", sd),
                                               Rec("archive/data/0", floats(*range(floats_held))), VERSION]))
    with pytest.raises(RuntimeError, match="does not match expected size"):
        torch.load(path, weights_only=True)
    r = cli("stats", path, "w")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert f"holds {4 * floats_held:,} bytes" in r.stderr and "torch refuses it too" in r.stderr and path in r.stderr


def test_deflated_storage_that_inflates_past_its_size_stops(tmp_path, cli):
    sd = dumps(OD([("w", tensor("0", (4,)))]))
    path = _write(tmp_path, "m.pt", zip_bytes([Rec("archive/data.pkl", sd),
                                               RawRec("archive/data/0", deflate_bomb(b"", 64 << 20, b""), 16),
                                               VERSION]))
    r = cli("stats", path, "w")
    assert r.returncode == 2 and "more than the 16 bytes" in r.stderr, r.stderr


# ---- class 4: a deflated data.pkl that inflates to hundreds of MB -----------------------------------------------------

_MEASURE = """
import contextlib, io, json, resource, sys
from explorer.cli import main
main(["inspect", sys.argv[1]])          # every reader imported, a first run done: the baseline
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = []
for path in sys.argv[2:]:
    for args in (["inspect", path], ["inspect", path, "--json"], ["stats", path, "w"], ["diff", path, path]):
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = main(args)
        out.append([args, rc, err.getvalue()])
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"grew_mb": (peak - base) / 1024, "runs": out}))
"""


def _measure(reference: str, paths: list[str]) -> dict:
    """Every command on ``paths`` in one fresh process; its peak RSS growth over a run on ``reference``."""
    p = subprocess.run([sys.executable, "-c", _MEASURE, reference, *paths], cwd=ROOT, capture_output=True, text=True,
                       timeout=120, env={**os.environ, "PYTHONPATH": ROOT})
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout.splitlines()[-1])


@pytest.fixture(scope="module")
def bombs(tmp_path_factory):
    root = tmp_path_factory.mktemp("bombs")
    pkl = dumps(OD([("w", tensor("0", (4,)))]))
    stream = deflate_bomb(pkl[:-1], 300 << 20, b".")
    out = {}
    for tag, usize in (("declared", len(pkl) + (300 << 20)), ("understated", len(pkl) + 10)):
        path = root / f"{tag}.pt"
        path.write_bytes(zip_bytes([RawRec("archive/data.pkl", stream, usize),
                                    Rec("archive/data/0", floats(1, 2, 3, 4)), VERSION]))
        out[tag] = str(path)
    return out


def test_data_pkl_bomb_is_refused_in_small_memory(bombs, tmp_path):
    """A ~300 KB archive whose data.pkl inflates to 300 MB (declared as such, or as 10 bytes): every command fails
    with one clear line, and the process never grows by more than a few MB."""
    reference = str(tmp_path / "ref.pt")
    torch.save({"w": torch.zeros(4)}, reference)
    paths = [bombs["declared"], bombs["understated"]]
    assert all(os.path.getsize(p) < 1 << 20 for p in paths)
    got = _measure(reference, paths)
    for args, rc, err in got["runs"]:
        assert rc == 2, (args, err)
        assert err.count("\n") == 1 and args[1] in err and ("bomb" in err or "more than" in err), err
    assert got["grew_mb"] < 32, got["grew_mb"]


def test_data_pkl_deflated_within_limits_reads(tmp_path):
    pkl = one_tensor_pkl("a")
    path = _write(tmp_path, "m.pt", zip_bytes([Rec("archive/data.pkl", pkl, 8), Rec("archive/data/0",
                                                                                   floats(1, 2, 3, 4)), VERSION]))
    assert _values(path) == _torch_values(path) == {"a": [1.0, 2.0, 3.0, 4.0]}


def test_directory_damage_is_a_clean_error(tmp_path):
    blob = zip_bytes([Rec("archive/data.pkl", one_tensor_pkl("a")), Rec("archive/data/0", floats(1, 2, 3, 4)),
                      VERSION], [Dir(0, offset=7), Dir(1), Dir(2)])
    path = _write(tmp_path, "m.pt", blob)
    with pytest.raises(RuntimeError):
        torch._C.PyTorchFileReader(path).get_record("data.pkl")
    with pytest.raises(CorruptFileError, match="local header"):
        open_checkpoint(path)


def test_archive_embedded_in_a_larger_file(tmp_path):
    """``read_archive`` on an archive lying at an offset of another file (as a DCP chunk does): stored and deflated
    storages read their own bytes."""
    from explorer.core.bytesource import read_record
    from explorer.core.loaders.torch_zip import read_archive
    pkl = dumps(OD([("s", tensor("0", (4,))), ("d", tensor("1", (3,)))]))
    blob = zip_bytes([Rec("archive/data.pkl", pkl), Rec("archive/data/0", floats(1, 2, 3, 4)),
                      Rec("archive/data/1", floats(7, 8, 9), 8), VERSION])
    path = tmp_path / "big.bin"
    path.write_bytes(b"\xff" * 1000 + blob + b"\xee" * 50)
    import io
    root, refs = read_archive(io.BytesIO(blob), len(blob), f"{path}@1000", file=str(path), base_offset=1000)
    assert refs == []
    assert read_record(root["s"]).tolist() == [1, 2, 3, 4] and read_record(root["d"]).tolist() == [7, 8, 9]
    with pytest.raises(CorruptFileError, match="compressed"):
        root["d"].storage.source.region(root["d"].storage)
