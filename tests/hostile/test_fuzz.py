"""Fuzz the readers (issue 7): mutate the bytes of small valid files of every format and read them the way the
window does (open, list, rank, read every value, materialise on meta). Only ExplorerError may come out.

Brief in CI (200 examples per format group, well under 30 s); longer on demand:

    FUZZ_EXAMPLES=20000 python -m pytest tests/hostile/test_fuzz.py -p no:cacheprovider

A run over 10 s is a hang and fails the example (SIGALRM), as the harness would.
"""
from __future__ import annotations

import os
import shutil
import signal
import sys
import warnings

import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from tests.hostile.harness import exercise

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "200"))
HANG_SECONDS = 10


class FuzzHang(BaseException):
    """Raised by SIGALRM: an input took longer than a reader may."""


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """Small valid files of every format, written by torch and safetensors; folders for the index and DCP."""
    from collections import OrderedDict

    import torch
    from safetensors.torch import save_file

    from tests.hostile.corpus import (G, OD, Call, dcp_save, dumps, legacy_bytes, read_bytes, tensor,
                                      write_torch_zip)

    root = tmp_path_factory.mktemp("fuzz-bases")
    sd = OrderedDict([("fc.weight", torch.arange(6, dtype=torch.float32).reshape(2, 3)),
                      ("fc.bias", torch.ones(2)), ("n", torch.tensor(3))])
    files = {}
    files["zip"] = str(root / "base.pt")
    torch.save(sd, files["zip"])
    files["legacy"] = str(root / "legacy.pt")
    torch.save(sd, files["legacy"], _use_new_zipfile_serialization=False)
    files["safetensors"] = str(root / "base.safetensors")
    save_file(dict(sd), files["safetensors"])
    files["nested"] = str(root / "nested.ckpt")
    torch.save({"state_dict": sd, "epoch": 1, "optimizer_states": [{"state": {0: {"step": torch.tensor(1.0)}}}]},
               files["nested"])
    # a pickle with a foreign global and a hand-written tensor: mutations reach the safe unpickler's stand-ins
    files["foreign"] = str(root / "foreign.pt")
    write_torch_zip(files["foreign"], dumps(OD([("w", tensor("0", (2, 2))),
                                                ("cfg", Call(G("omegaconf", "DictConfig"), {"a": 1}))])),
                    {"0": bytes(16)})
    files["legacy-hand"] = str(root / "hand.legacy.pt")
    with open(files["legacy-hand"], "wb") as f:
        f.write(legacy_bytes(dumps(OD([("w", tensor("0", (2,), legacy=True))])), {"0": bytes(8)}))
    folder = root / "sharded"
    folder.mkdir()
    save_file({"fc.weight": sd["fc.weight"]}, str(folder / "a.safetensors"))
    save_file({"fc.bias": sd["fc.bias"]}, str(folder / "b.safetensors"))
    (folder / "model.safetensors.index.json").write_text(
        '{"metadata": {}, "weight_map": {"fc.weight": "a.safetensors", "fc.bias": "b.safetensors"}}')
    files["index"] = str(folder / "model.safetensors.index.json")
    dcp = root / "dcp"
    dcp_save(sd, str(dcp))
    files["dcp-metadata"] = str(dcp / ".metadata")
    return {k: (v, read_bytes(v)) for k, v in files.items()}


MUTATION = st.tuples(st.sampled_from(["flip", "set", "truncate", "insert", "delete", "duplicate", "zero"]),
                     st.integers(min_value=0, max_value=1 << 20), st.integers(min_value=0, max_value=255),
                     st.integers(min_value=1, max_value=64))


def mutate(data: bytes, mutations) -> bytes:
    buf = bytearray(data)
    for kind, pos, byte, length in mutations:
        if not buf:
            break
        pos %= len(buf)
        if kind == "flip":
            buf[pos] ^= 1 << (byte % 8)
        elif kind == "set":
            buf[pos] = byte
        elif kind == "truncate":
            del buf[pos:]
        elif kind == "insert":
            buf[pos:pos] = bytes([byte]) * length
        elif kind == "delete":
            del buf[pos:pos + length]
        elif kind == "duplicate":
            buf[pos:pos] = buf[pos:pos + length]
        elif kind == "zero":
            buf[pos:pos + length] = bytes(len(buf[pos:pos + length]))
    return bytes(buf)


# CPython 3.11's C unpickler frees a half-built bytearray with an uninitialised export count when a BYTEARRAY8 opcode
# claims more memory than exists, and -- when that memory is non-zero -- prints this through sys.excepthook. It depends
# on heap garbage, so it cannot be a strict xfail: the full harness reports it (input '*:bytearray8-2^62'), the issue
# 7 report proposes the guard, and the fuzz skips examples whose only output is exactly this message.
BYTEARRAY_BUG = "deallocated bytearray object has exported buffers"


def _check(path: str) -> None:
    from explorer.errors import ExplorerError

    def alarm(signum, frame):
        raise FuzzHang(f"reading took more than {HANG_SECONDS} s")

    printed: list = []  # what CPython printed through sys.excepthook (a second stderr line on the command line)
    old_hook = sys.excepthook
    sys.excepthook = lambda tp, value, tb: printed.append((tp, str(value)))
    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(HANG_SECONDS)
    try:
        exercise(path)
    except ExplorerError:
        pass
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
        sys.excepthook = old_hook
    if printed and all(tp is SystemError and v == BYTEARRAY_BUG for tp, v in printed):
        reject()  # the known CPython bug above, and nothing else
    assert not printed, f"the reader printed exceptions through sys.excepthook: {printed}"


def _target(tmp: str, base_path: str, name: str) -> str:
    """Where the mutated bytes go: beside a copy of the base's folder for an index or DCP metadata."""
    if name in ("index", "dcp-metadata"):
        folder = os.path.join(tmp, name)
        if not os.path.isdir(folder):
            shutil.copytree(os.path.dirname(base_path), folder)
        return os.path.join(folder, os.path.basename(base_path))
    return os.path.join(tmp, os.path.basename(base_path))


def _fuzz(bases, tmp, name, mutations):
    base_path, data = bases[name]
    path = _target(str(tmp), base_path, name)
    with open(path, "wb") as f:
        f.write(mutate(data, mutations))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning from a reader is a defect too
        _check(path if name not in ("index", "dcp-metadata") else os.path.dirname(path))


FUZZ_SETTINGS = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize="FUZZ_SEED" not in os.environ,
                         suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                                HealthCheck.data_too_large, HealthCheck.filter_too_much])


@pytest.mark.parametrize("group", [("zip", "nested", "foreign"), ("legacy", "legacy-hand"), ("safetensors",),
                                   ("index", "dcp-metadata")], ids=["zip", "legacy", "safetensors", "folders"])
def test_fuzz_readers(bases, tmp_path_factory, group):
    tmp = tmp_path_factory.mktemp("fuzz")

    @FUZZ_SETTINGS
    @given(name=st.sampled_from(group), mutations=st.lists(MUTATION, min_size=1, max_size=4))
    def run(name, mutations):
        _fuzz(bases, tmp, name, mutations)

    run()


def test_mutate_really_mutates():
    """The fuzz target would be vacuous if mutations were no-ops."""
    data = bytes(range(100))
    assert mutate(data, [("flip", 3, 0, 1)]) != data
    assert mutate(data, [("truncate", 10, 0, 1)]) == data[:10]
    assert len(mutate(data, [("insert", 5, 7, 4)])) == 104
