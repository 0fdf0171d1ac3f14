"""Opening a file never runs or imports anything it names: hostile pickles do nothing but appear in ``references``.

Each payload would create a file if it ran. A control test proves the payloads are live (``torch.load`` with
``weights_only=False`` runs them), so the tests below would fail if our reader ran them too.
"""
from __future__ import annotations

import builtins
import importlib
import io
import os
import pickle
import subprocess
import sys
import warnings
import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from explorer.core.loaders import open_checkpoint
from explorer.core.safe_pickle.inert import Inert, placeholder
from explorer.errors import CorruptFileError

ROOT = Path(__file__).resolve().parents[2]
SYSTEM = f"{os.system.__module__}.system"   # "posix.system" on Linux


# ---- payloads: each, if it ran, would create ``target`` -----------------------------------------------------------

class OsSystem:
    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return os.system, (f"touch {self.target}",)


class Eval:
    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return builtins.eval, (f"__import__('pathlib').Path({self.target!r}).touch()",)


class Exec(Eval):
    def __reduce__(self):
        return builtins.exec, (f"with open({self.target!r}, 'w') as f: f.write('pwned')",)


class Popen(OsSystem):
    def __reduce__(self):
        return subprocess.Popen, (["touch", self.target],)


class _ImportOs:
    def __reduce__(self):
        return importlib.import_module, ("os",)


class _GetSystem:
    def __call__(self, *args):  # pickle checks that a reduce's callable is callable when it saves
        raise AssertionError("never called while saving")

    def __reduce__(self):
        return builtins.getattr, (_ImportOs(), "system")


class GetattrChain(OsSystem):
    """``getattr(import_module('os'), 'system')('touch ...')``: the callable itself is built by the pickle."""

    def __reduce__(self):
        return _GetSystem(), (f"touch {self.target}",)


PAYLOADS = [OsSystem, Eval, Exec, Popen, GetattrChain]
EXPECTED_REFERENCE = {OsSystem: SYSTEM, Eval: "builtins.eval", Exec: "builtins.exec",
                      Popen: "subprocess.Popen", GetattrChain: "builtins.getattr"}


def _hostile_checkpoint(payload, target):
    return {"state_dict": OrderedDict(w=torch.ones(2, 2), b=torch.zeros(2)), "evil": payload(target), "epoch": 1}


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("payload", PAYLOADS, ids=lambda p: p.__name__)
def test_hostile_pickle_does_nothing(tmp_path, payload, legacy):
    target = tmp_path / "pwned"
    path = tmp_path / "hostile.pt"
    torch.save(_hostile_checkpoint(payload, target), path, _use_new_zipfile_serialization=not legacy)
    ck = open_checkpoint(path)
    assert not target.exists()
    assert EXPECTED_REFERENCE[payload] in ck.references
    # the rest of the file is still there, and reads
    assert ck.default_state_dict == ("state_dict",)
    assert torch.equal(ck.read_key("w"), torch.ones(2, 2))
    assert ck.get(("epoch",)) == 1
    evil = ck.get(("evil",))
    assert isinstance(evil, Inert)
    ck.load_object("/", device="cpu")  # materializing the whole object runs nothing either
    assert not target.exists()
    if payload is GetattrChain:
        assert "importlib.import_module" in ck.references


@pytest.mark.parametrize("payload", [OsSystem, Exec, GetattrChain], ids=lambda p: p.__name__)
def test_control_payloads_are_live(tmp_path, payload):
    """torch.load(weights_only=False) on the same file does run the payload: the tests above can fail."""
    target = tmp_path / "pwned"
    path = tmp_path / "hostile.pt"
    torch.save(_hostile_checkpoint(payload, target), path)
    torch.load(path, weights_only=False)
    assert target.exists()


def test_hostile_inspect_cli(tmp_path):
    target = tmp_path / "pwned"
    path = tmp_path / "hostile.ckpt"
    torch.save(_hostile_checkpoint(OsSystem, target), path)
    r = subprocess.run([sys.executable, "main.py", "inspect", str(path)], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert SYSTEM in r.stdout and "never imported or run" in r.stdout
    assert not target.exists()


# ---- raw pickles: opcodes no torch.save would write --------------------------------------------------------------

def _zip_with_pickle(path, data: bytes) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", data)
        z.writestr("archive/version", "3\n")


def _legacy_with_pickle(path, data: bytes) -> None:
    """A legacy-format file whose object pickle is ``data``."""
    buf = io.BytesIO()
    pickle.dump(0x1950A86A20F9469CFC6C, buf, protocol=2)
    pickle.dump(1001, buf, protocol=2)
    pickle.dump({"protocol_version": 1001, "little_endian": True}, buf, protocol=2)
    buf.write(data)
    pickle.dump([], buf, protocol=2)
    Path(path).write_bytes(buf.getvalue())


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _str(s: str) -> bytes:
    b = s.encode()
    return b"X" + len(b).to_bytes(4, "little") + b


def _manual_chain(target) -> bytes:
    """getattr(__import__('os'), 'system')('touch target') spelled in opcodes, inside a dict."""
    imp = _global("builtins", "__import__") + _str("os") + b"\x85R"         # __import__('os')
    get = _global("builtins", "getattr") + b"(" + imp + _str("system") + b"tR"  # getattr(os, 'system')
    call = get + _str(f"touch {target}") + b"\x85R"                          # system('touch ...')
    return b"\x80\x02}" + _str("x") + call + b"s."


@pytest.mark.parametrize("container", ["zip", "legacy"])
def test_opcode_level_getattr_chain(tmp_path, container):
    target = tmp_path / "pwned"
    data = _manual_chain(target)
    path = tmp_path / "raw.pt"
    (_zip_with_pickle if container == "zip" else _legacy_with_pickle)(path, data)
    ck = open_checkpoint(path)
    assert not target.exists()
    assert {"builtins.__import__", "builtins.getattr"} <= set(ck.references)
    # the control: Python's own unpickler does run it
    pickle.loads(data)
    assert target.exists()


def test_build_on_placeholder_class_changes_nothing(tmp_path):
    """BUILD applied to a global itself (not an instance) must not rewrite our classes for later files."""
    fake = _global("zz_fake_mod", "Thing")
    state = b"N}(" + _str("_global") + _str(SYSTEM) + _str("state_dict") + b"Nu\x86"  # (None, {slot state})
    data = b"\x80\x02}(" + _str("a") + fake + state + b"b" + _str("t") + _global("zz_fake_mod", "Thing") + \
        b")\x81u."
    path = tmp_path / "build.pt"
    _zip_with_pickle(path, data)
    ck = open_checkpoint(path)
    cls = placeholder("zz_fake_mod", "Thing")
    assert cls._global == "zz_fake_mod.Thing"
    assert callable(cls.state_dict)
    assert ck.get(("t",)).global_name == "zz_fake_mod.Thing"
    assert "zz_fake_mod" not in sys.modules


@pytest.mark.parametrize("module,name", [("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
                                         ("torch", "FloatStorage"), ("_codecs", "encode"),
                                         ("numpy.core.multiarray", "scalar")])
def test_build_on_stand_ins_changes_nothing(tmp_path, module, name):
    data = b"\x80\x02}(" + _str("a") + _global(module, name) + b"}" + _str("__call__") + _str("x") + b"sb" + b"u."
    path = tmp_path / "build.pt"
    _zip_with_pickle(path, data)
    open_checkpoint(path)
    # later files still read correctly
    good = tmp_path / "good.pt"
    torch.save({"w": torch.arange(4.0)}, good)
    assert torch.equal(open_checkpoint(good).read_key("w"), torch.arange(4.0))


def test_build_on_real_class_fails_cleanly(tmp_path):
    """OrderedDict is handed out as itself (the C unpickler calls it per tensor); BUILD on it cannot change it."""
    data = b"\x80\x02}(" + _str("a") + _global("collections", "OrderedDict") + b"}" + _str("__repr__") + \
        _global("os", "system") + b"sbu."
    path = tmp_path / "build.pt"
    _zip_with_pickle(path, data)
    with pytest.raises(CorruptFileError, match="could not be parsed"):
        open_checkpoint(path)
    assert OrderedDict.__repr__ is not os.system and "system" not in repr(OrderedDict(a=1))


def test_named_modules_are_never_imported(tmp_path):
    for mod in ("zz_never_imported_mod", "this", "antigravity"):  # ``this`` prints, ``antigravity`` opens a browser
        assert mod not in sys.modules
    payload = b"\x80\x02}(" + _str("a") + _global("zz_never_imported_mod.sub", "Model") + b")\x81" + \
        _str("b") + _global("this", "s") + _str("c") + _global("antigravity", "fly") + b")R" + b"u."
    path = tmp_path / "imports.pt"
    _zip_with_pickle(path, payload)
    ck = open_checkpoint(path)
    assert ck.references == ["zz_never_imported_mod.sub.Model", "this.s", "antigravity.fly"]
    for mod in ("zz_never_imported_mod", "zz_never_imported_mod.sub", "this", "antigravity"):
        assert mod not in sys.modules


def test_storage_ids_are_data_only(tmp_path):
    """A persistent id that is not a storage tuple is refused when used, never interpreted as code."""
    data = b"\x80\x02}(" + _str("w") + _global("torch._utils", "_rebuild_tensor_v2") + b"(" + \
        _global("os", "system") + b"\x85Q" + b"K\x00K\x02\x85K\x01\x85\x89" + _global("collections", "OrderedDict") + \
        b")RtR" + b"u."
    path = tmp_path / "pid.pt"
    _zip_with_pickle(path, data)
    try:
        ck = open_checkpoint(path)
        assert "os.system" in ck.references
        with pytest.raises(CorruptFileError, match="persistent id"):
            ck.read_key("w")
        return
    except CorruptFileError:
        pass
    else:
        pytest.fail("a storage id naming os.system opened as if it were a storage")


def test_hostile_value_in_dcp_folder(tmp_path):
    import torch.distributed.checkpoint as dcp
    target = tmp_path / "pwned"
    folder = tmp_path / "dcp"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({"w": torch.ones(3), "evil": OsSystem(target)}, checkpoint_id=str(folder), no_dist=True)
    assert not target.exists()
    ck = open_checkpoint(folder)
    assert not target.exists()
    assert SYSTEM in ck.references
    assert torch.equal(ck.read(("w",)), torch.ones(3))


def test_recursion_bomb_is_refused(tmp_path):
    deep = b"\x80\x02" + b"]" * 5000 + b"a" * 4999 + b"."
    path = tmp_path / "deep.pt"
    _zip_with_pickle(path, b"\x80\x02}(" + _str("x") + deep[2:-1] + b"u.")
    with pytest.raises(CorruptFileError, match="nesting"):
        open_checkpoint(path)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_corrupted_bytes_only_raise_explorer_errors(tmp_path, legacy):
    """Random damage to the pickle part of a file: it opens, or fails with our error; never anything else."""
    import random
    from explorer.errors import ExplorerError
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    src = tmp_path / "src.pt"
    torch.save({"model": model, "sd": model.state_dict(), "step": 3}, src, _use_new_zipfile_serialization=not legacy)
    data = src.read_bytes()
    rng = random.Random(7)
    path = tmp_path / "damaged.pt"
    opened = 0
    for _ in range(50):
        b = bytearray(data)
        for _ in range(rng.randint(1, 6)):
            b[rng.randrange(min(len(b), 2000))] = rng.randrange(256)
        path.write_bytes(bytes(b))
        try:
            ck = open_checkpoint(path)
            for e in ck.entries:
                try:
                    ck.read(e.path)
                except ExplorerError:
                    pass
            opened += 1
        except ExplorerError:
            pass
    assert opened < 50  # the damage did reach the parser


# ---- denial-of-service shapes: each must end quickly with our error (or open), never hang or crash -----------------

def test_shared_reference_dag_is_walked_once(tmp_path):
    """64 levels, each a list holding the level below twice: 2**64 paths, 64 containers."""
    body = b"]q\x000"  # level 0: an empty list, memo 0, popped
    for i in range(1, 65):  # level i: a list of level i-1 twice (BINGET from the memo), memo i; all but the last popped
        body += b"](h" + bytes([i - 1]) + b"h" + bytes([i - 1]) + b"eq" + bytes([i]) + (b"0" if i < 64 else b"")
    data = b"\x80\x02}(" + _str("laughs") + body + b"u."
    path = tmp_path / "laughs.pt"
    _zip_with_pickle(path, data)
    ck = open_checkpoint(path)
    assert ck.entries == [] and ck.default_state_dict is None
    obj = ck.load_object("/", device="meta")
    top = obj["laughs"]
    assert top[0] is top[1]  # the sharing is kept, not expanded


def _tensor_pickle(shape: bytes, stride: bytes) -> bytes:
    """{'w': _rebuild_tensor_v2(('storage', FloatStorage, '0', 'cpu', 4), 0, shape, stride, False, OrderedDict())}"""
    pid = b"(" + _str("storage") + _global("torch", "FloatStorage") + _str("0") + _str("cpu") + b"K\x04tQ"
    return (b"\x80\x02}(" + _str("w") + _global("torch._utils", "_rebuild_tensor_v2") + b"(" + pid + b"K\x00" +
            shape + stride + b"\x89" + _global("collections", "OrderedDict") + b")RtR" + b"u.")


@pytest.mark.parametrize("shape,stride,match", [
    (b"(\x8a\x06\x00\x00\x00\x00\x00\x01\x8a\x06\x00\x00\x00\x00\x00\x01t", b"K\x01K\x01\x86", "elements"),
    (b"K\x02\x85", b"X\x01\x00\x00\x00a\x85", "impossible shape|stride"),
])
def test_impossible_tensor_metadata(tmp_path, shape, stride, match):
    path = tmp_path / "t.pt"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", _tensor_pickle(shape, stride))
        z.writestr("archive/data/0", b"\0" * 16)
    with pytest.raises(CorruptFileError, match=match):
        ck = open_checkpoint(path)
        ck.load_object(None, device="meta")
        ck.read_key("w")


@pytest.mark.parametrize("entry,match", [
    ('{"a":{"dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,0]}}', "needs|invalid"),
    ('{"a":{"dtype":["F32"],"shape":[1],"data_offsets":[0,4]}}', "unknown dtype"),
])
def test_hostile_safetensors_headers(tmp_path, entry, match):
    body = entry.encode()
    path = tmp_path / "h.safetensors"
    path.write_bytes(len(body).to_bytes(8, "little") + body + b"\0" * 4)
    with pytest.raises(CorruptFileError, match=match):
        open_checkpoint(path)


def test_hostile_shard_indexes(tmp_path):
    import json
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(2)}, tmp_path / "ok.safetensors")
    cases = {
        "nul.index.json": {"weight_map": {"w": "ok\u0000.safetensors"}},
        "self.index.json": {"weight_map": {"w": "self.index.json"}},
        "a.index.json": {"weight_map": {"w": "b.index.json"}},
        "b.index.json": {"weight_map": {"w": "a.index.json"}},
        "folder.index.json": {"weight_map": {"w": "."}},
    }
    for name, index in cases.items():
        (tmp_path / name).write_text(json.dumps(index))
    (tmp_path / "deep.index.json").write_text("[" * 100_000 + "]" * 100_000)
    for name in list(cases) + ["deep.index.json"]:
        with pytest.raises(CorruptFileError) as info:
            open_checkpoint(tmp_path / name)
        assert name in str(info.value)


_MEMO_BOMB_CHILD = r"""
import resource, sys, threading, time, zipfile
sys.path.insert(0, sys.argv[1])
from explorer.core.loaders import open_checkpoint
from explorer.errors import ExplorerError
threads = int(sys.argv[3])
stop = threading.Event()
for _ in range(threads):          # the window: a GUI thread and workers besides the one that loads
    threading.Thread(target=stop.wait, daemon=True).start()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.monotonic()
try:
    open_checkpoint(sys.argv[2])
    outcome = "opened"
except ExplorerError as e:
    outcome = "error: " + str(e)
grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024
print(f"{grew} {time.monotonic() - t0:.2f} {outcome}")
"""


@pytest.mark.parametrize("threads", [0, 2])
def test_memo_bomb_stays_small_with_other_threads_running(tmp_path, threads):
    """A 9-byte pickle whose LONG_BINPUT names memo index 2**27 makes CPython's C unpickler allocate and zero 2 GB.
    The address space is capped while a pickle loads -- also in a process with other threads (the window), where
    the cap leaves them another GB. The child runs under a hard limit, so a regression cannot take the machine."""
    import struct
    path = tmp_path / "bomb.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("bomb/data.pkl", b"\x80\x02Nr" + struct.pack("<I", 2 ** 27) + b".")
        z.writestr("bomb/version", "3\n")
    root = str(Path(__file__).resolve().parents[2])

    def limit():  # 6 GB of address space above the interpreter's start: the 2 GB memo fits without the cap
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (6 << 30, resource.RLIM_INFINITY))
    out = subprocess.run([sys.executable, "-c", _MEMO_BOMB_CHILD, root, str(path), str(threads)],
                         capture_output=True, text=True, timeout=120, preexec_fn=limit)
    assert out.returncode == 0, out.stderr[-2000:]
    grew_mb, seconds, outcome = out.stdout.split(" ", 2)
    assert outcome.startswith("error: ") and str(path) in outcome, outcome
    assert int(grew_mb) < 300, f"peak RSS grew by {grew_mb} MB"


def test_a_pickle_parsed_off_the_main_thread_leaves_room_for_the_others():
    """The window parses in Qt pool threads, which ``threading.active_count()`` does not count: a parse there
    must take the cap with headroom for the GUI thread (and the lock), as with any other thread running."""
    import _thread
    import threading

    from explorer.core.safe_pickle.limits import memo_cap
    seen = []
    done = threading.Event()

    def foreign():      # a thread Python's threading module knows nothing of, like Qt's
        cap = memo_cap(1000)
        with cap:
            seen.append(cap._locked)
        done.set()
    _thread.start_new_thread(foreign, ())
    assert done.wait(10)
    assert seen == [True]     # (the main thread alone: test_memo_bomb_stays_small_with_other_threads_running[0])
