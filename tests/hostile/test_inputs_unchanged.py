"""Nothing lost (issue 7): reading, listing, reading values, diff and simulate never write to their inputs.

Every file and folder of a corpus is fingerprinted (content hash, size, mtime, mode; a folder by its listing) before
and after; any difference fails. The CLI's runs over the whole corpus are checked the same way by the harness
(``test_hostile.test_inputs_unchanged``).
"""
from __future__ import annotations

import fnmatch
import hashlib
import os

import pytest

from tests.hostile import corpus as corpus_mod
from tests.hostile.harness import exercise
from tests.hostile.test_hostile import IN_PROCESS_SKIP, KNOWN


def fingerprint(root: str) -> dict:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        out[dirpath] = ("dir", tuple(sorted(dirnames + filenames)), os.stat(dirpath).st_mode)
        for name in filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if os.path.islink(p) or not os.path.isfile(p):
                out[p] = ("other", st.st_mode)
                continue
            h = hashlib.sha256()
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            out[p] = (h.hexdigest(), st.st_size, st.st_mtime_ns, st.st_mode)
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("unchanged")
    inputs = corpus_mod.build(str(root / "c"), quick=True)
    yield str(root / "c"), inputs
    for dirpath, dirnames, _ in os.walk(root):
        for d in dirnames:
            os.chmod(os.path.join(dirpath, d), 0o755)


def _skip(inp) -> bool:
    return inp.name in IN_PROCESS_SKIP or any(fnmatch.fnmatchcase(inp.name, k[0]) for k in KNOWN)


def test_fingerprint_sees_a_write(tmp_path):
    """The check would be vacuous if a write could slip past the fingerprint (same size, same content length)."""
    p = tmp_path / "f.bin"
    p.write_bytes(b"abcd")
    before = fingerprint(str(tmp_path))
    with open(p, "r+b") as f:
        f.write(b"x")
    assert fingerprint(str(tmp_path)) != before


def test_read_diff_simulate_write_nothing(corpus):
    from explorer.core.diff import diff_sides
    from explorer.core.model_source import ModelSide
    from explorer.core.side import open_side
    from explorer.core.simulate.run import simulate_load
    from explorer.errors import ExplorerError
    root, inputs = corpus
    base = os.path.join(root, "base", "base.pt")
    before = fingerprint(root)
    model = ModelSide.from_spec("demo:MyBatchNormModel")
    ran = 0
    for inp in inputs:
        if _skip(inp) or inp.category == "many-tensors":
            continue
        for step in ("read", "diff", "simulate"):
            try:
                if step == "read":
                    exercise(inp.path)
                elif step == "diff":
                    diff_sides(open_side(inp.path), open_side(base))
                else:
                    simulate_load(model, open_side(inp.path))
                ran += 1
            except ExplorerError:
                pass
    after = fingerprint(root)
    changed = sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))
    assert ran > 100
    assert not changed, f"inputs changed: {changed[:20]}"


def test_values_read_are_private_copies(corpus):
    """A tensor read from a file is a copy-on-write mapping: writing into it never reaches the file."""
    root, inputs = corpus
    base = os.path.join(root, "base", "base.pt")
    st = os.path.join(root, "base", "base.safetensors")
    before = fingerprint(os.path.join(root, "base"))
    from explorer.core.loaders import open_checkpoint
    for path in (base, st, os.path.join(root, "base", "legacy.pt")):
        ck = open_checkpoint(path)
        for e in ck.entries:
            t = ck.read(e.path)
            if t.is_floating_point():
                t.fill_(123.0)
    assert fingerprint(os.path.join(root, "base")) == before
