"""The hostile and broken input corpus of issue 7, generated at test time into a folder (tiny files, no binaries
committed).

``build(root, quick=False)`` writes every input under ``root`` and returns a list of :class:`Input` records saying
what each one is and what a correct answer looks like:

- ``expect="ok"``: the input is valid (or a valid checkpoint with a hostile object inside); every command must succeed
  and, where ``entries`` is given, list exactly those tensors (path, shape, dtype) in file order;
- ``expect="error"``: the input is broken or hostile; every command must fail cleanly (exit 2, one line);
- ``expect="either"``: a clean error or a result (e.g. a byte flipped inside tensor data changes a value, nothing
  else).

Hostile payloads try to create a file under ``root/markers`` (or delete ``root/canary/alive``); the harness checks
that nothing ever appears there. ``webbrowser`` payloads run ``$BROWSER``: the harness points it at
``root/browser.sh``, which writes a marker.

Pickles are written opcode by opcode (:func:`dumps`), so a payload never needs the object it names to exist.
Run ``python -m tests.hostile.corpus DIR [--quick]`` to generate a corpus and look at it.
"""
from __future__ import annotations

import io
import json
import os
import random
import shutil
import struct
import sys
import warnings
import zipfile
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any

# ---- a tiny pickle writer ---------------------------------------------------------------------------------------


class G:
    """A global ``module.name`` (GLOBAL opcode; STACK_GLOBAL when a name cannot be written on one line)."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name


class Call:
    """``fn(*args)`` (REDUCE)."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, tuple(args)


class PID:
    """A persistent id (BINPERSID): torch's ``('storage', StorageType, key, location, numel[, view])``."""

    def __init__(self, pid):
        self.pid = pid


class Build:
    """``obj`` then BUILD with ``state`` (``__setstate__`` or ``__dict__`` update)."""

    def __init__(self, obj, state):
        self.obj, self.state = obj, state


class Raw:
    """Opcodes written verbatim."""

    def __init__(self, data: bytes):
        self.data = data


class OD:
    """``collections.OrderedDict`` with items, as torch pickles a state dict."""

    def __init__(self, items):
        self.items = list(items.items()) if isinstance(items, dict) else list(items)


def encode(obj: Any, out: list) -> None:
    w = out.append
    if obj is None:
        w(b"N")
    elif obj is True:
        w(b"\x88")
    elif obj is False:
        w(b"\x89")
    elif isinstance(obj, int):
        if 0 <= obj < 256:
            w(b"K" + bytes([obj]))
        elif -2 ** 31 <= obj < 2 ** 31:
            w(b"J" + struct.pack("<i", obj))
        else:
            n = (obj.bit_length() + 8) // 8
            data = obj.to_bytes(n, "little", signed=True)
            w((b"\x8a" + bytes([n]) if n < 256 else b"\x8b" + struct.pack("<i", n)) + data)
    elif isinstance(obj, float):
        w(b"G" + struct.pack(">d", obj))
    elif isinstance(obj, str):
        data = obj.encode("utf-8", "surrogatepass")
        w(b"X" + struct.pack("<I", len(data)) + data)
    elif isinstance(obj, bytes):
        w(b"B" + struct.pack("<I", len(obj)) + obj)
    elif isinstance(obj, tuple):
        if not obj:
            w(b")")
        else:
            w(b"(")
            for v in obj:
                encode(v, out)
            w(b"t")
    elif isinstance(obj, list):
        w(b"]")
        if obj:
            w(b"(")
            for v in obj:
                encode(v, out)
            w(b"e")
    elif isinstance(obj, OD):
        encode(Call(G("collections", "OrderedDict")), out)
        if obj.items:
            w(b"(")
            for k, v in obj.items:
                encode(k, out)
                encode(v, out)
            w(b"u")
    elif isinstance(obj, dict):
        w(b"}")
        if obj:
            w(b"(")
            for k, v in obj.items():
                encode(k, out)
                encode(v, out)
            w(b"u")
    elif isinstance(obj, G):
        if "\n" in obj.module + obj.name or not obj.module.isascii() or not obj.name.isascii():
            encode(obj.module, out)
            encode(obj.name, out)
            w(b"\x93")
        else:
            w(b"c" + obj.module.encode() + b"\n" + obj.name.encode() + b"\n")
    elif isinstance(obj, Call):
        encode(obj.fn, out)
        encode(obj.args, out)
        w(b"R")
    elif isinstance(obj, PID):
        encode(obj.pid, out)
        w(b"Q")
    elif isinstance(obj, Build):
        encode(obj.obj, out)
        encode(obj.state, out)
        w(b"b")
    elif isinstance(obj, Raw):
        w(obj.data)
    else:  # pragma: no cover - a corpus bug
        raise TypeError(f"cannot encode {type(obj).__name__}")


def dumps(obj: Any) -> bytes:
    out: list = [b"\x80\x02"]
    encode(obj, out)
    out.append(b".")
    return b"".join(out)


# torch's pickled forms
STORAGE = {"float32": "FloatStorage", "float64": "DoubleStorage", "int64": "LongStorage", "float16": "HalfStorage",
           "uint8": "ByteStorage", "int32": "IntStorage", "bool": "BoolStorage"}
ITEM = {"float32": 4, "float64": 8, "int64": 8, "float16": 2, "uint8": 1, "int32": 4, "bool": 1}


def tensor(key: str, shape, dtype="float32", numel=None, offset=0, stride=None, legacy=False):
    """``torch._utils._rebuild_tensor_v2`` over storage ``key`` (typed storage, as torch.save writes)."""
    shape = tuple(shape)
    if stride is None:
        acc, st = 1, []
        for s in reversed(shape):
            st.append(acc)
            acc *= max(s, 1)
        stride = tuple(reversed(st))
    n = 1
    for s in shape:
        n *= s
    pid = ("storage", G("torch", STORAGE[dtype]), key, "cpu", n if numel is None else numel)
    if legacy:
        pid = pid + (None,)
    return Call(G("torch._utils", "_rebuild_tensor_v2"), PID(pid), offset, tuple(shape), tuple(stride), False,
                OD([]))


def write_torch_zip(path: str, pkl: bytes, storages: dict[str, bytes] | None = None) -> None:
    """A torch.save-style zip (torch's own writer): ``<archive>/data.pkl`` first, then ``data/<key>`` records."""
    import torch
    os.makedirs(os.path.dirname(path), exist_ok=True)
    w = torch._C.PyTorchFileWriter(path)
    w.write_record("data.pkl", pkl, len(pkl))
    for key, data in (storages or {}).items():
        w.write_record(f"data/{key}", data, len(data))
    w.write_end_of_file()


def legacy_bytes(root_pkl: bytes, storages: dict[str, bytes] | None = None, keys=None,
                 itemsize: dict[str, int] | None = None) -> bytes:
    """The legacy (pre-1.6) torch.save layout: magic, protocol, sys_info, root, storage keys, then each storage."""
    storages = storages or {}
    parts = [dumps(0x1950A86A20F9469CFC6C), dumps(1001),
             dumps({"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 8}}),
             root_pkl, dumps(list(storages) if keys is None else keys)]
    for key, data in storages.items():
        size = (itemsize or {}).get(key, 4)
        parts.append(struct.pack("<q", len(data) // size) + data)
    return b"".join(parts)


def read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def safetensors_bytes(header: Any, data: bytes = b"", *, length: int | None = None, raw_header: bytes | None = None):
    text = raw_header if raw_header is not None else json.dumps(header).encode()
    n = len(text) if length is None else length
    return struct.pack("<Q", n) + text + data


# ---- inputs -----------------------------------------------------------------------------------------------------

# the demo model's state dict (demo:MyBatchNormModel): simulate has something real to compare against
BASE_SD = [("linear.weight", (5, 10), "float32"), ("linear.bias", (5,), "float32"), ("bn.weight", (5,), "float32"),
           ("bn.bias", (5,), "float32"), ("bn.running_mean", (5,), "float32"), ("bn.running_var", (5,), "float32"),
           ("bn.num_batches_tracked", (), "int64")]
STATS_KEY = "linear.weight"


@dataclass
class Input:
    name: str
    category: str
    path: str
    expect: str = "either"        # "ok" | "error" | "either"
    entries: list | None = None   # expected inspect --json entries: [[path...], [shape...], dtype] in file order
    refs: list | None = None      # globals the references list must name (hostile objects shown as information)
    key: str = STATS_KEY          # the key ``stats`` is asked for
    quick: bool = False
    nobody: bool = False          # run as an unprivileged user (permission-denied inputs; tests run as root)
    quick_ops: list | None = None  # in quick mode, only these ops (e.g. a known hang: one run, not six)
    bad_error: str | None = None   # an error line containing this is misleading (e.g. a leaked RecursionError)
    note: str = ""
    tensors: int = 0               # tensors the file really holds, where there are very many (memory may grow with them)

    def to_json(self) -> dict:
        return asdict(self)


def _entries(sd, prefix=()):
    return [[list(prefix) + [k], list(shape), dtype] for k, shape, dtype in sd]


class Corpus:
    def __init__(self, root: str, quick: bool):
        self.root = os.path.abspath(root)
        self.quick = quick
        self.inputs: list[Input] = []
        self.markers = os.path.join(self.root, "markers")
        self.canary = os.path.join(self.root, "canary", "alive")
        self.rng = random.Random(7)
        self._names: set[str] = set()
        for d in ("markers", "canary", "files", "base", "scratch"):
            os.makedirs(os.path.join(self.root, d), exist_ok=True)
        with open(self.canary, "w") as f:
            f.write("a hostile payload that deletes this file ran\n")
        self.browser = os.path.join(self.root, "browser.sh")
        with open(self.browser, "w") as f:
            f.write(f"#!/bin/sh\ntouch '{self.markers}/webbrowser-ran'\n")
        os.chmod(self.browser, 0o755)

    # paths
    def p(self, *parts) -> str:
        return os.path.join(self.root, "files", *parts)

    def marker(self, name: str) -> str:
        return os.path.join(self.markers, name)

    def add(self, name, category, path, *, sample=True, **kw) -> Input | None:
        """Register an input. In quick mode only ``quick=True`` inputs are kept (``sample`` is ignored then)."""
        assert name not in self._names, name
        self._names.add(name)
        inp = Input(name, category, path, **kw)
        if self.quick and not inp.quick:
            return None
        self.inputs.append(inp)
        return inp

    def write(self, path: str, data: bytes) -> str:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        return path


# ---- valid bases --------------------------------------------------------------------------------------------------

def _base_tensors():
    import torch
    g = torch.Generator().manual_seed(0)
    sd = OrderedDict()
    for k, shape, dtype in BASE_SD:
        if dtype == "int64":
            sd[k] = torch.tensor(3, dtype=torch.int64)
        else:
            sd[k] = torch.randn(shape, generator=g)
    return sd


def _bases(c: Corpus) -> dict[str, str]:
    """Valid files of every format, written by torch / safetensors themselves."""
    import torch
    from safetensors.torch import save_file
    sd = _base_tensors()
    b = {}
    b["zip"] = os.path.join(c.root, "base", "base.pt")
    torch.save(sd, b["zip"])
    b["legacy"] = os.path.join(c.root, "base", "legacy.pt")
    torch.save(sd, b["legacy"], _use_new_zipfile_serialization=False)
    b["safetensors"] = os.path.join(c.root, "base", "base.safetensors")
    save_file(dict(sd), b["safetensors"])
    b["ckpt"] = os.path.join(c.root, "base", "lightning.ckpt")
    opt = {"state": {0: {"step": torch.tensor(1.0), "exp_avg": torch.zeros(5, 10)}}, "param_groups": [{"lr": 0.1}]}
    torch.save({"epoch": 3, "state_dict": sd, "optimizer_states": [opt], "hyper_parameters": {"lr": 0.1}}, b["ckpt"])
    # sharded safetensors with an index
    folder = os.path.join(c.root, "base", "sharded")
    os.makedirs(folder)
    keys = list(sd)
    shards = {"model-00001-of-00002.safetensors": keys[:3], "model-00002-of-00002.safetensors": keys[3:]}
    wm = {}
    for name, ks in shards.items():
        save_file({k: sd[k] for k in ks}, os.path.join(folder, name))
        wm.update({k: name for k in ks})
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": 0}, "weight_map": wm}, f)
    b["sharded"] = folder
    # sharded .bin with an index
    folder = os.path.join(c.root, "base", "sharded_bin")
    os.makedirs(folder)
    wm = {}
    for i, ks in enumerate(shards.values()):
        name = f"pytorch_model-0000{i + 1}-of-00002.bin"
        torch.save({k: sd[k] for k in ks}, os.path.join(folder, name))
        wm.update({k: name for k in ks})
    with open(os.path.join(folder, "pytorch_model.bin.index.json"), "w") as f:
        json.dump({"weight_map": wm}, f)
    b["sharded_bin"] = folder
    # torch.distributed.checkpoint
    b["dcp"] = os.path.join(c.root, "base", "dcp")
    dcp_save(sd, b["dcp"])
    return b


def dcp_save(sd, folder: str) -> None:
    import torch.distributed.checkpoint as dcp
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "torch.distributed is disabled ... assuming single process"
        dcp.save(dict(sd), checkpoint_id=folder)


BASE_ENTRIES = _entries(BASE_SD)


def _valid(c: Corpus, b: dict) -> None:
    cat = "valid"
    c.add("valid-zip", cat, b["zip"], expect="ok", entries=BASE_ENTRIES, quick=True)
    c.add("valid-legacy", cat, b["legacy"], expect="ok", entries=BASE_ENTRIES, quick=True)
    c.add("valid-safetensors", cat, b["safetensors"], expect="ok", entries=st_entries(b["safetensors"]), quick=True)
    c.add("valid-lightning-ckpt", cat, b["ckpt"], expect="ok", quick=True)
    c.add("valid-sharded-folder", cat, b["sharded"], expect="ok", quick=True)
    c.add("valid-sharded-index", cat, os.path.join(b["sharded"], "model.safetensors.index.json"), expect="ok")
    c.add("valid-sharded-bin-folder", cat, b["sharded_bin"], expect="ok")
    # the DCP reader may not exist yet: "either" (an unsupported-format error is clean); its corruptions check it
    c.add("valid-dcp", cat, b["dcp"], expect="either", quick=True)


# ---- hostile pickles ----------------------------------------------------------------------------------------------

def _payloads(c: Corpus) -> list[tuple[str, Any, str, bool]]:
    """(name, pickled object, a global the references must name, quick) -- each would write a marker if run."""
    def m(name):
        return c.marker(name)

    def touch(name):
        return f"touch '{m(name)}'"

    def pywrite(name):
        return f"open({m(name)!r}, 'w').close()"

    script = os.path.join(c.root, "files", "hostile_script.py")
    c.write(script, f"open({m('runpy-run_path')!r}, 'w').close()\n".encode())
    inner = dumps(Call(G("os", "system"), touch("inner-pickle")))
    getattr_os = Call(G("builtins", "getattr"), Call(G("builtins", "__import__"), "os"), "system")
    imp_os = Call(G("builtins", "getattr"), Call(G("importlib", "import_module"), "os"), "system")
    p = [
        ("os.system", Call(G("os", "system"), touch("os.system")), "os.system", True),
        ("posix.system", Call(G("posix", "system"), touch("posix.system")), "posix.system", True),
        ("nt.system", Call(G("nt", "system"), touch("nt.system")), "nt.system", False),
        ("os.popen", Call(G("os", "popen"), touch("os.popen")), "os.popen", False),
        ("os.execv", Call(G("os", "execv"), "/bin/sh", ("sh", "-c", touch("os.execv"))), "os.execv", False),
        ("os.remove-canary", Call(G("os", "remove"), c.canary), "os.remove", False),
        ("shutil.rmtree-canary", Call(G("shutil", "rmtree"), os.path.dirname(c.canary)), "shutil.rmtree", False),
        ("builtins.eval", Call(G("builtins", "eval"), pywrite("builtins.eval")), "builtins.eval", True),
        ("builtins.exec", Call(G("builtins", "exec"), pywrite("builtins.exec")), "builtins.exec", True),
        # protocol <= 2 pickles name Python 2 modules; the unpickler maps __builtin__ to builtins (fix_imports)
        ("__builtin__.eval", Call(G("__builtin__", "eval"), pywrite("__builtin__.eval")), "builtins.eval", False),
        ("builtins.open", Call(G("builtins", "open"), m("builtins.open"), "w"), "builtins.open", False),
        ("builtins.compile-exec", Call(G("builtins", "exec"), Call(G("builtins", "compile"), pywrite("compile"),
                                                                 "<x>", "exec")), "builtins.compile", False),
        ("getattr-__import__", Call(getattr_os, touch("getattr-import")), "builtins.getattr", True),
        ("subprocess.Popen", Call(G("subprocess", "Popen"), ["touch", m("subprocess.Popen")]), "subprocess.Popen",
         True),
        ("subprocess.call", Call(G("subprocess", "call"), touch("subprocess.call")), "subprocess.call", False),
        ("subprocess.check_output", Call(G("subprocess", "check_output"), ["sh", "-c", touch("check_output")]),
         "subprocess.check_output", False),
        ("subprocess.run", Call(G("subprocess", "run"), ["touch", m("subprocess.run")]), "subprocess.run", False),
        ("importlib.import_module", Call(imp_os, touch("importlib")), "importlib.import_module", True),
        ("importlib-__import__", Call(G("importlib", "__import__"), "antigravity"), "importlib.__import__", False),
        ("runpy.run_path", Call(G("runpy", "run_path"), script), "runpy.run_path", True),
        ("runpy._run_code", Call(G("runpy", "_run_code"), pywrite("runpy._run_code"), {}), "runpy._run_code", False),
        ("runpy.run_module", Call(G("runpy", "run_module"), "antigravity"), "runpy.run_module", False),
        ("webbrowser.open", Call(G("webbrowser", "open"), "https://example.invalid/"), "webbrowser.open", True),
        ("webbrowser.open_new", Call(G("webbrowser", "open_new"), "x"), "webbrowser.open_new", False),
        ("pty.spawn", Call(G("pty", "spawn"), ["sh", "-c", touch("pty.spawn")]), "pty.spawn", False),
        ("ctypes.CDLL", Call(G("ctypes", "CDLL"), "libc.so.6"), "ctypes.CDLL", False),
        ("numpy-runstring", Call(G("numpy.testing._private.utils", "runstring"), pywrite("runstring"), {}),
         "numpy.testing._private.utils.runstring", False),
        ("operator.methodcaller", Call(Call(G("operator", "methodcaller"), "system", touch("methodcaller")),
                                       Call(G("builtins", "__import__"), "os")), "operator.methodcaller", False),
        ("functools.partial", Call(Call(G("functools", "partial"), G("os", "system"), touch("partial"))),
         "functools.partial", False),
        ("pickle.loads-nested", Call(G("pickle", "loads"), inner), "pickle.loads", True),
        ("_pickle.loads-nested", Call(G("_pickle", "loads"), inner), "_pickle.loads", False),
        ("torch.load-nested", Call(G("torch", "load"), Call(G("io", "BytesIO"), inner)), "torch.load", False),
        ("torch.storage._load_from_bytes", Call(G("torch.storage", "_load_from_bytes"), inner),
         "torch.storage._load_from_bytes", True),
        ("torch.hub.load", Call(G("torch.hub", "load"), "evil/repo", "model"), "torch.hub.load", False),
        ("copyreg._reconstructor", Call(G("copyreg", "_reconstructor"), G("os", "system"), G("builtins", "str"),
                                        touch("copyreg")), "copyreg._reconstructor", False),
        ("marshal-function", Call(G("types", "FunctionType"), Call(G("marshal", "loads"), b"\xe3"), {}),
         "types.FunctionType", False),
        ("code.InteractiveInterpreter", Call(G("builtins", "getattr"), Call(G("code", "InteractiveInterpreter")),
                                             "runsource"), "code.InteractiveInterpreter", False),
        ("sys.modules", Call(G("builtins", "getattr"), G("sys", "modules"), "clear"), "sys.modules", False),
        # __reduce__ / BUILD tricks against our own stand-ins
        ("build-on-rebuild-tensor", Build(G("torch._utils", "_rebuild_tensor_v2"),
                                          (None, {"__call__": G("os", "system"), "__init__": G("os", "system")})),
         "os.system", True),
        ("build-on-ordereddict-class", Build(G("collections", "OrderedDict"), (None, {"keys": G("os", "system")})),
         "os.system", False),
        ("build-on-torch-size", Build(G("torch", "Size"), {"__new__": G("os", "system")}), "os.system", False),
        ("build-on-storage-type", Build(G("torch", "FloatStorage"), (None, {"dtype": G("os", "system")})),
         "os.system", False),
        ("build-on-placeholder-class", Call(Build(G("os", "system"), (None, {"__new__": G("builtins", "eval")})),
                                            touch("placeholder-class")), "os.system", True),
        ("setstate-is-system", Build(Call(G("evil", "Thing")), {"__setstate__": G("os", "system")}),
         "evil.Thing", False),
        ("newobj-placeholder", Raw(b"cos\nsystem\n)\x81"), "os.system", False),
        ("inst-opcode", Raw(b"(X" + struct.pack("<I", len(touch("inst"))) + touch("inst").encode() +
                            b"ios\nsystem\n"), "os.system", True),
        ("obj-opcode", Raw(b"(cos\nsystem\nX" + struct.pack("<I", len(touch("obj"))) + touch("obj").encode() + b"o"),
         "os.system", False),
        ("ext1-opcode", Raw(b"\x82\x01"), "", False),
        ("stack-global-dotted", Call(G("os.path", "os.system"), touch("dotted")), "os.path.os.system", False),
        ("stack-global-newline", Call(G("os\nsystem", "x\ny"), "z"), "", False),
        ("text-protocol-0", Raw(b"cos\nsystem\n(S'" + touch("proto0").encode() + b"'\ntR"), "os.system", False),
        ("persistent-id-payload", PID(("storage", Call(G("os", "system"), touch("pid")), "0", "cpu", 1)),
         "os.system", False),
    ]
    return p


def _hostile(c: Corpus) -> None:
    cat = "hostile-pickle"
    sd_items = [(k, tensor(str(i), shape, dtype)) for i, (k, shape, dtype) in enumerate(BASE_SD)]
    storages = {str(i): bytes(4 * max(1, _numel(shape)) if dtype == "float32" else 8)
                for i, (k, shape, dtype) in enumerate(BASE_SD)}
    legacy_sizes = {str(i): ITEM[dtype] for i, (k, shape, dtype) in enumerate(BASE_SD)}
    legacy_items = [(k, tensor(str(i), shape, dtype, legacy=True)) for i, (k, shape, dtype) in enumerate(BASE_SD)]
    for name, payload, ref, quick in _payloads(c):
        slug = name.replace("/", "_")
        # alone: the file's object is the payload
        path = c.p("hostile", f"{slug}.pt")
        write_torch_zip(path, dumps(payload))
        c.add(f"zip:{name}", cat, path, quick=quick, refs=[ref] if ref and not isinstance(payload, Raw) else None)
        path = c.p("hostile", f"{slug}.legacy.pt")
        c.write(path, legacy_bytes(dumps(payload)))
        c.add(f"legacy:{name}", cat, path, quick=quick)
        # inside a valid state dict: the tensors list, the payload is information only
        path = c.p("hostile", f"{slug}.in-sd.pt")
        write_torch_zip(path, dumps(OD(sd_items + [("extra", payload)])), storages)
        c.add(f"zip-in-sd:{name}", cat, path, quick=quick, expect="either", entries=BASE_ENTRIES,
              refs=[ref] if ref and not isinstance(payload, Raw) else None)
        if not c.quick or quick:
            path = c.p("hostile", f"{slug}.legacy-in-sd.pt")
            c.write(path, legacy_bytes(dumps(OD(legacy_items + [("extra", payload)])), storages, itemsize=legacy_sizes))
            c.add(f"legacy-in-sd:{name}", cat, path, expect="either", entries=BASE_ENTRIES)
    # a hostile payload next to a valid state dict, in a Lightning-style checkpoint: must list the state dict
    path = c.p("hostile", "lightning-with-payload.ckpt")
    write_torch_zip(path, dumps({"state_dict": OD(sd_items), "callbacks": Call(G("os", "system"), "touch x"),
                                 "hyper_parameters": Call(G("omegaconf.dictconfig", "DictConfig"), {"lr": 1})}),
                    storages)
    c.add("zip:lightning-with-payload", cat, path, expect="ok", entries=_entries(BASE_SD, ["state_dict"]),
          refs=["os.system", "omegaconf.dictconfig.DictConfig"], quick=True)
    # a raw pickle (no container): not a checkpoint format, a clean "unsupported" error
    path = c.p("hostile", "raw-os-system.pkl")
    c.write(path, dumps(Call(G("os", "system"), f"touch '{c.marker('raw-pickle')}'")))
    c.add("raw-pickle:os.system", cat, path, expect="error", quick=True)
    # a whole pickled module whose class is hostile: its state dict is recovered, the class is never imported
    module = Build(Call(G("__main__", "Evil")), {"_parameters": OD([("weight", tensor("0", (5, 10)))]),
                                                 "_buffers": OD([]), "_modules": OD([]),
                                                 "_non_persistent_buffers_set": Call(G("builtins", "set"), [])})
    path = c.p("hostile", "pickled-module-evil.pt")
    write_torch_zip(path, dumps(module), {"0": bytes(200)})
    c.add("zip:pickled-module-evil-class", cat, path, expect="ok", entries=[[["weight"], [5, 10], "float32"]],
          refs=["__main__.Evil"], key="weight", quick=True)


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


# ---- bombs and huge claimed sizes ---------------------------------------------------------------------------------

def _deep_list(n: int) -> bytes:
    return b"\x80\x02" + b"]" * n + b"a" * (n - 1) + b"."


def _deep_dict(n: int) -> bytes:
    return b"\x80\x02" + b"}X\x01\x00\x00\x00k" * n + b"s" * (n - 1) + b"." if n > 1 else b"\x80\x02}."


def _deep_tuple(n: int) -> bytes:
    return b"\x80\x02)" + b"\x85" * n + b"."


def _laughs(levels: int, kind: str = "list") -> bytes:
    """A DAG of ``levels`` levels where each node holds the one below twice: 2**levels paths, a few hundred bytes.
    Leaves exactly one object on the stack (each level pops the one below after memoising it)."""
    out = [b"\x80\x04", b"]" if kind == "list" else b"}", b"\x94"]
    for i in range(levels):
        out.append(b"0")  # POP: level i stays reachable through the memo only
        if kind == "list":
            out.append(b"(h" + bytes([i]) + b"h" + bytes([i]) + b"l\x94")
        else:
            out.append(b"}(X\x01\x00\x00\x00ah" + bytes([i]) + b"X\x01\x00\x00\x00bh" + bytes([i]) + b"u\x94")
    out.append(b".")
    return b"".join(out)


def _laughs_inert(levels: int) -> bytes:
    """Like :func:`_laughs`, through placeholder objects whose state holds the level below twice."""
    out = [b"\x80\x04", b"}", b"\x94"]
    for i in range(levels):
        out.append(b"cevil\nNode\n)R}(X\x01\x00\x00\x00ah" + bytes([i]) + b"X\x01\x00\x00\x00bh" + bytes([i])
                   + b"ub\x94")
    out.append(b".")
    return b"".join(out)


def _deep_module(n: int) -> bytes:
    """A pickled nn.Module nested ``n`` levels deep through ``_modules`` (written as repeated opcode slices)."""
    def enc(obj):
        out: list = []
        encode(obj, out)
        return b"".join(out)
    empty_od = enc(OD([]))
    state_head = b"}(" + enc("_parameters") + empty_od + enc("_buffers") + empty_od + enc("_modules")
    leaf = enc(Call(G("torch.nn.modules.linear", "Identity"))) + state_head + empty_od + b"ub"
    prefix = (enc(Call(G("torch.nn.modules.container", "Sequential"))) + state_head + empty_od + b"(" + enc("0"))
    return b"\x80\x02" + prefix * n + leaf + b"uub" * n + b"."


def _self_module() -> bytes:
    """A module whose ``_modules`` holds itself (memo): recovery must not loop."""
    # Sequential() ; memo 0 ; BUILD {'_parameters': {}, '_buffers': {}, '_modules': OrderedDict(self=<memo 0>)}
    return (b"\x80\x04ctorch.nn.modules.container\nSequential\n)R\x94}(X\x0b\x00\x00\x00_parameters}"
            b"X\x08\x00\x00\x00_buffers}X\x08\x00\x00\x00_modules}X\x04\x00\x00\x00selfh\x00subh\x00.")


def _bombs(c: Corpus) -> None:
    cat = "bomb"

    def zip_and_legacy(name, pkl, quick=False, expect="either", quick_ops=None):
        path = c.p("bomb", f"{name}.pt")
        write_torch_zip(path, pkl)
        c.add(f"zip:{name}", cat, path, quick=quick, expect=expect, quick_ops=quick_ops)
        path = c.p("bomb", f"{name}.legacy.pt")
        c.write(path, legacy_bytes(pkl))
        c.add(f"legacy:{name}", cat, path, quick=quick, expect=expect, quick_ops=quick_ops)

    zip_and_legacy("deep-list-1e5", _deep_list(100_000), quick=True)
    zip_and_legacy("deep-list-1e6", _deep_list(1_000_000))
    zip_and_legacy("deep-dict-1e5", _deep_dict(100_000), quick=True)
    zip_and_legacy("deep-tuple-1e5", _deep_tuple(100_000))
    zip_and_legacy("deep-list-399", _deep_list(399))
    zip_and_legacy("laughs-list-64", _laughs(64, "list"), quick=True, quick_ops=["read"])
    zip_and_legacy("laughs-dict-64", _laughs(64, "dict"))
    zip_and_legacy("laughs-inert-64", _laughs_inert(64))
    zip_and_legacy("deep-module-1000", _deep_module(1000))
    # a shared-reference DAG inside the state dict itself: materialising it (simulate) must visit each object once
    laughs = _laughs(64, "list")
    path = c.p("bomb", "laughs-in-state-dict.pt")
    write_torch_zip(path, dumps(OD([("linear.weight", tensor("0", (5, 10))),
                                    ("extra", Raw(laughs[2:-1].replace(b"]\x94", b"]\x94", 1)))])), {"0": bytes(200)})
    c.add("zip:laughs-in-state-dict", cat, path, quick=True, quick_ops=["simulate"])
    zip_and_legacy("self-module", _self_module(), quick=True)
    zip_and_legacy("cyclic-list", b"\x80\x04]\x94h\x00a.")
    zip_and_legacy("cyclic-dict", b"\x80\x04}\x94X\x01\x00\x00\x00ah\x00s.")
    zip_and_legacy("marks-1e6", b"\x80\x02" + b"(" * 1_000_000 + b"N.")
    # pickle opcodes claiming huge lengths
    zip_and_legacy("binbytes8-2^62", b"\x80\x04\x8e" + struct.pack("<Q", 2 ** 62) + b"abc.", quick=True)
    zip_and_legacy("binunicode8-3GB", b"\x80\x04\x8d" + struct.pack("<Q", 3 * 2 ** 30) + b"abc.")
    zip_and_legacy("binbytes-4GB", b"\x80\x03B" + struct.pack("<I", 2 ** 32 - 1) + b"abc.")
    zip_and_legacy("frame-2^60", b"\x80\x04\x95" + struct.pack("<Q", 2 ** 60) + b"N.")
    zip_and_legacy("long4-2GB", b"\x80\x02\x8b" + struct.pack("<i", 2 ** 31 - 1) + b"\x01.")
    # CPython 3.11's C unpickler: a failed BYTEARRAY8 allocation frees a bytearray whose export count was never
    # initialised; when that memory happens to be non-zero CPython prints "SystemError: deallocated bytearray object
    # has exported buffers" through sys.excepthook (a second stderr line). Nondeterministic: full mode only.
    zip_and_legacy("bytearray8-2^62", b"\x80\x05\x96" + struct.pack("<Q", 2 ** 62) + b".")
    # the C unpickler's memo is an array: LONG_BINPUT / PUT with a huge index allocates (and zeroes) 16 bytes per
    # index below it -- a 9-byte pickle claims 32 GB
    zip_and_legacy("long-binput-2^27", b"\x80\x02Nr" + struct.pack("<I", 2 ** 27) + b".", quick=True,
                   quick_ops=["read"])
    zip_and_legacy("long-binput-2^31", b"\x80\x02Nr\xff\xff\xff\x7f.")
    zip_and_legacy("put-10^12", b"\x80\x02Np1000000000000\n.")
    zip_and_legacy("huge-int-1MB", b"\x80\x02\x8b" + struct.pack("<i", 1 << 20) + b"\x7f" * (1 << 20) + b".")
    # tensors and storages claiming huge sizes
    big = [
        ("storage-numel-2^62", tensor("0", (4,), numel=2 ** 62), True),
        ("shape-2^40x2^40", tensor("0", (2 ** 40, 2 ** 40), numel=4), True),
        ("shape-2^63", tensor("0", (2 ** 63,), numel=4), False),
        ("shape-negative", tensor("0", (-1, 4), numel=4, stride=(4, 1)), False),
        ("stride-negative", tensor("0", (2, 2), numel=4, stride=(-2, 1)), False),
        ("stride-huge", tensor("0", (2, 2), numel=4, stride=(2 ** 62, 1)), True),
        ("offset-huge", tensor("0", (2,), numel=4, offset=2 ** 62), False),
        ("offset-negative", tensor("0", (2,), numel=4, offset=-5), False),
        ("shape-not-ints", Call(G("torch._utils", "_rebuild_tensor_v2"),
                                PID(("storage", G("torch", "FloatStorage"), "0", "cpu", 4)), 0, ("a", 2.5), (1,),
                                False, OD([])), False),
        ("storage-numel-negative", tensor("0", (4,), numel=-4), False),
        ("storage-numel-str", Call(G("torch._utils", "_rebuild_tensor_v2"),
                                   PID(("storage", G("torch", "FloatStorage"), "0", "cpu", "4")), 0, (4,), (1,),
                                   False, OD([])), False),
        ("many-dims-1e4", tensor("0", (1,) * 10_000, numel=4), False),
        ("stride-not-ints", tensor("0", (2, 2), numel=4, stride=((1,), 1)), True),
        ("stride-wrong-length", tensor("0", (2, 2), numel=4, stride=(1,)), False),
    ]
    for name, t, quick in big:
        path = c.p("bomb", f"{name}.pt")
        write_torch_zip(path, dumps(OD([("linear.weight", t)])), {"0": bytes(16)})
        c.add(f"zip:{name}", cat, path, quick=quick, expect="either")
    # legacy: a storage whose size field claims 2^62 elements
    path = c.p("bomb", "legacy-storage-claims-2^62.pt")
    data = legacy_bytes(dumps(OD([("linear.weight", tensor("0", (4,), legacy=True))])), {"0": bytes(16)})
    data = data[:-24] + struct.pack("<q", 2 ** 62) + data[-16:]
    c.write(path, data)
    c.add("legacy:storage-claims-2^62", cat, path, quick=True, expect="error")


# ---- truncation and flipped bytes ---------------------------------------------------------------------------------

def _offsets(size: int, n: int, rng: random.Random) -> list[int]:
    """``n`` offsets into a file of ``size`` bytes: the telling ones (headers, the middle, the zip end record) first,
    then random ones."""
    fixed = [0, 1, 8, size - 1, size // 2, 9, size - 22, 4, 30, size - 23, 2, 16, 64, size - 2]
    pick: list[int] = []
    for o in fixed:
        if 0 <= o < size and o not in pick and len(pick) < n:
            pick.append(o)
    while len(pick) < min(n, size):
        o = rng.randrange(size)
        if o not in pick:
            pick.append(o)
    return sorted(pick)


def _damage(c: Corpus, b: dict) -> None:
    files = {"zip": b["zip"], "legacy": b["legacy"], "safetensors": b["safetensors"], "ckpt": b["ckpt"],
             "index": os.path.join(b["sharded"], "model.safetensors.index.json"),
             "dcp-metadata": os.path.join(b["dcp"], ".metadata")}
    n_trunc, n_flip = (5, 3) if c.quick else (48, 48)
    for fmt, src in files.items():
        data = read_bytes(src)
        ext = os.path.basename(src)
        for i, off in enumerate(_offsets(len(data), n_trunc, c.rng)):
            name = f"truncated:{fmt}@{off}"
            path = _place(c, fmt, src, b, f"trunc-{off}", data[:off])
            c.add(name, "truncated", path, quick=True, expect="error" if fmt not in ("dcp-metadata",) else "error")
        for i, off in enumerate(_offsets(len(data), n_flip, c.rng)):
            mutated = bytearray(data)
            mutated[off] ^= 0xFF if i % 2 == 0 else (1 << c.rng.randrange(8))
            path = _place(c, fmt, src, b, f"flip-{off}", bytes(mutated))
            c.add(f"flipped:{fmt}@{off}", "flipped", path, quick=True)
        _ = ext


def _place(c: Corpus, fmt: str, src: str, b: dict, tag: str, data: bytes) -> str:
    """Write a damaged copy of ``src``; for an index or DCP metadata, inside a copy of its folder."""
    if fmt == "index":
        folder = c.p("damaged", f"sharded-{tag}")
        shutil.copytree(b["sharded"], folder)
        return c.write(os.path.join(folder, "model.safetensors.index.json"), data) and folder
    if fmt == "dcp-metadata":
        folder = c.p("damaged", f"dcp-{tag}")
        shutil.copytree(b["dcp"], folder)
        c.write(os.path.join(folder, ".metadata"), data)
        return folder
    return c.write(c.p("damaged", f"{fmt}-{tag}-{os.path.basename(src)}"), data)


# ---- the file system: empty, directory vs file, extensions, permissions -------------------------------------------

def _filesystem(c: Corpus, b: dict) -> None:
    cat = "filesystem"
    for ext in (".pt", ".safetensors", ".bin", ".ckpt", ".index.json", ""):
        path = c.write(c.p("fs", f"empty{ext}"), b"")
        c.add(f"empty{ext or '-noext'}", cat, path, expect="error", quick=ext in (".pt", ".safetensors", ""))
    for ext in (".pt", ".safetensors", ".safetensors.index.json"):
        path = c.p("fs", f"dir{ext}")
        os.makedirs(path)
        c.add(f"directory-named{ext}", cat, path, expect="error", quick=ext == ".pt")
    os.makedirs(c.p("fs", "empty-folder"))
    c.add("empty-folder", cat, c.p("fs", "empty-folder"), expect="error", quick=True)
    c.add("missing-path", cat, c.p("fs", "does-not-exist.pt"), expect="error", quick=True)
    # a file where a folder is expected: a DCP ".metadata" that is a folder, a shard that is a folder
    folder = c.p("fs", "dcp-metadata-is-dir")
    shutil.copytree(b["dcp"], folder)
    os.remove(os.path.join(folder, ".metadata"))
    os.makedirs(os.path.join(folder, ".metadata"))
    c.add("dcp-metadata-is-a-folder", cat, folder, expect="error", quick=True)
    folder = c.p("fs", "shard-is-dir")
    shutil.copytree(b["sharded"], folder)
    shard = os.path.join(folder, "model-00001-of-00002.safetensors")
    os.remove(shard)
    os.makedirs(shard)
    c.add("shard-is-a-folder", cat, folder, expect="error", quick=True)
    folder = c.p("fs", "shards-no-index")
    shutil.copytree(b["sharded"], folder)
    os.remove(os.path.join(folder, "model.safetensors.index.json"))
    c.add("shards-without-index", cat, folder, expect="ok", entries=None)
    # wrong and missing extensions: the content decides
    st_keys = st_entries(b["safetensors"])
    for fmt, entries in (("zip", BASE_ENTRIES), ("legacy", BASE_ENTRIES), ("safetensors", st_keys)):
        data = read_bytes(b[fmt])
        for ext in ("", ".safetensors", ".json", ".txt", ".index.json", ".pt") if fmt != "zip" else \
                ("", ".safetensors", ".json", ".index.json", ".zip"):
            if (fmt, ext) in (("safetensors", ".safetensors"), ("legacy", ".pt")):
                continue
            path = c.write(c.p("fs", f"ext-{fmt}-as{ext or '-noext'}", f"model{ext}"), data)
            # a name that promises another format may be refused cleanly, or the content recognised
            c.add(f"ext:{fmt}-as{ext or '-noext'}", cat, path, expect="either", entries=entries,
                  quick=ext in ("", ".safetensors"))
    # a file named like a model spec (``pkg:callable``) is a path when it exists
    path = c.write(c.p("fs", "demo:MyModel"), read_bytes(b["zip"]))
    c.add("file-named-like-model-spec", cat, path, expect="ok", entries=BASE_ENTRIES)
    # a symlink to a valid file, and a dangling one
    os.symlink(b["zip"], c.p("fs", "link.pt"))
    c.add("symlink", cat, c.p("fs", "link.pt"), expect="ok", entries=BASE_ENTRIES)
    os.symlink(c.p("fs", "nowhere.pt"), c.p("fs", "dangling.pt"))
    c.add("dangling-symlink", cat, c.p("fs", "dangling.pt"), expect="error")
    # a FIFO: opening it for reading would block forever
    try:
        os.mkfifo(c.p("fs", "fifo.pt"))
        c.add("fifo", cat, c.p("fs", "fifo.pt"), expect="error", quick=True)
    except (AttributeError, OSError):  # pragma: no cover - no FIFOs here
        pass
    # /dev/zero-like: a character device that never ends
    if os.path.exists("/dev/zero"):
        c.add("dev-zero", cat, "/dev/zero", expect="error")
    # permission denied: as root everything is readable, so the harness runs these as an unprivileged user
    perm = c.p("perm")
    os.makedirs(perm)
    for fmt in ("zip", "safetensors", "legacy"):
        path = os.path.join(perm, f"unreadable-{fmt}{'.safetensors' if fmt == 'safetensors' else '.pt'}")
        shutil.copy(b[fmt], path)
        os.chmod(path, 0)
        c.add(f"permission-denied:{fmt}", cat, path, expect="error", nobody=True, quick=fmt != "legacy")
    folder = os.path.join(perm, "unreadable-folder")
    shutil.copytree(b["sharded"], folder)
    os.chmod(folder, 0)
    c.add("permission-denied:folder", cat, folder, expect="error", nobody=True, quick=True)
    folder = os.path.join(perm, "unlistable-folder")
    shutil.copytree(b["sharded"], folder)
    os.chmod(folder, 0o311)
    c.add("permission-denied:folder-not-listable", cat, folder, expect="either", nobody=True)
    folder = os.path.join(perm, "unreadable-shard")
    shutil.copytree(b["sharded"], folder)
    os.chmod(os.path.join(folder, "model-00002-of-00002.safetensors"), 0)
    c.add("permission-denied:one-shard", cat, folder, expect="error", nobody=True, quick=True)
    folder = os.path.join(perm, "unreadable-index")
    shutil.copytree(b["sharded"], folder)
    os.chmod(os.path.join(folder, "model.safetensors.index.json"), 0)
    c.add("permission-denied:index", cat, folder, expect="error", nobody=True)
    folder = os.path.join(perm, "dcp-unreadable-metadata")
    shutil.copytree(b["dcp"], folder)
    os.chmod(os.path.join(folder, ".metadata"), 0)
    c.add("permission-denied:dcp-metadata", cat, folder, expect="error", nobody=True)
    folder = os.path.join(perm, "dcp-unreadable-distcp")
    shutil.copytree(b["dcp"], folder)
    for f in os.listdir(folder):
        if f.endswith(".distcp"):
            os.chmod(os.path.join(folder, f), 0)
    c.add("permission-denied:dcp-distcp", cat, folder, expect="either", nobody=True, quick=True)


# ---- safetensors headers ------------------------------------------------------------------------------------------

def _safetensors(c: Corpus, b: dict) -> None:
    cat = "safetensors-header"
    good = {"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
            "b": {"dtype": "F32", "shape": [2], "data_offsets": [16, 24]}}
    data = bytes(24)
    cases = [
        # (name, bytes, expect, quick)
        ("length>file", safetensors_bytes(good, data, length=10_000), "error", True),
        ("length=2^63", safetensors_bytes(good, data, length=2 ** 63), "error", True),
        ("length=2^64-1", safetensors_bytes(good, data, length=2 ** 64 - 1), "error", False),
        ("length=0", safetensors_bytes(good, data, length=0), "error", True),
        ("length=1", safetensors_bytes(good, data, length=1), "error", False),
        ("length-short-by-1", safetensors_bytes(good, data, length=len(json.dumps(good)) - 1), "error", False),
        ("length-long-by-1", safetensors_bytes(good, data, length=len(json.dumps(good)) + 1), "either", False),
        ("invalid-json", safetensors_bytes(None, data, raw_header=b'{"w": {"dtype": "F32",'), "error", True),
        ("json-array", safetensors_bytes([1, 2, 3], data), "error", False),
        ("json-string", safetensors_bytes("hello", data), "error", False),
        ("json-nan", safetensors_bytes(None, data, raw_header=b'{"w": NaN}'), "error", False),
        ("json-deep-1e5", safetensors_bytes(None, data, raw_header=b"[" * 100_000 + b"]" * 100_000), "error", True),
        ("json-deep-object-1e5", safetensors_bytes(None, data, raw_header=b'{"a":' * 100_000 + b"1" +
                                                   b"}" * 100_000), "error", False),
        ("json-not-utf8", safetensors_bytes(None, data, raw_header=b'{"\xff\xfe": 1}'), "error", False),
        ("json-bom", safetensors_bytes(None, data, raw_header=b"\xef\xbb\xbf" + json.dumps(good).encode()),
         "either", False),
        ("entry-not-object", safetensors_bytes({"w": [1, 2]}, data), "error", False),
        ("overlapping", safetensors_bytes({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
                                           "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}, data),
         "error", True),
        ("out-of-range", safetensors_bytes({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [16, 32]}},
                                           data), "error", True),
        ("offsets-2^64", safetensors_bytes({"w": {"dtype": "F32", "shape": [2, 2],
                                                  "data_offsets": [2 ** 64, 2 ** 64 + 16]}}, data), "error", False),
        ("offsets-negative", safetensors_bytes({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [-16, 0]}},
                                               data), "error", False),
        ("offsets-reversed", safetensors_bytes({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [16, 0]}},
                                               data), "error", False),
        ("offsets-float", safetensors_bytes({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0.0, 16.0]}},
                                            data), "error", False),
        ("offsets-bool", safetensors_bytes({"w": {"dtype": "U8", "shape": [1], "data_offsets": [False, True]}},
                                           data), "error", False),
        ("offsets-three", safetensors_bytes({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 8, 16]}},
                                            data), "error", False),
        ("offsets-missing", safetensors_bytes({"w": {"dtype": "F32", "shape": [2, 2]}}, data), "error", False),
        ("size-mismatch", safetensors_bytes({"w": {"dtype": "F32", "shape": [3, 3], "data_offsets": [0, 16]}},
                                            data), "error", True),
        # shape [2^62] of F32 is 2^64 bytes: an int64 product wraps to 0 and matches the empty span [0, 0]
        ("shape-2^62-wraps-to-0", safetensors_bytes({"w": {"dtype": "F32", "shape": [2 ** 62],
                                                           "data_offsets": [0, 0]}}, data), "error", True),
        ("shape-2^40x2^40", safetensors_bytes({"w": {"dtype": "F32", "shape": [2 ** 40, 2 ** 40],
                                                     "data_offsets": [0, 16]}}, data), "error", False),
        ("shape-negative", safetensors_bytes({"w": {"dtype": "F32", "shape": [-2, -2], "data_offsets": [0, 16]}},
                                             data), "error", False),
        ("shape-float", safetensors_bytes({"w": {"dtype": "F32", "shape": [2.0, 2], "data_offsets": [0, 16]}},
                                          data), "error", False),
        ("shape-bool", safetensors_bytes({"w": {"dtype": "U8", "shape": [True], "data_offsets": [0, 1]}}, data),
         "error", False),
        ("shape-not-list", safetensors_bytes({"w": {"dtype": "F32", "shape": 4, "data_offsets": [0, 16]}}, data),
         "error", False),
        ("shape-1e5-dims", safetensors_bytes({"w": {"dtype": "F32", "shape": [1] * 100_000,
                                                    "data_offsets": [0, 4]}}, data), "either", False),
        ("unknown-dtype", safetensors_bytes({"w": {"dtype": "F128", "shape": [2, 2], "data_offsets": [0, 16]}},
                                            data), "error", True),
        ("dtype-lowercase", safetensors_bytes({"w": {"dtype": "f32", "shape": [2, 2], "data_offsets": [0, 16]}},
                                              data), "error", False),
        ("dtype-null", safetensors_bytes({"w": {"dtype": None, "shape": [2, 2], "data_offsets": [0, 16]}}, data),
         "error", False),
        ("dtype-list", safetensors_bytes({"w": {"dtype": ["F32"], "shape": [2, 2], "data_offsets": [0, 16]}},
                                         data), "error", True),
        ("duplicate-keys", safetensors_bytes(None, data, raw_header=(
            b'{"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},'
            b' "w": {"dtype": "F32", "shape": [2], "data_offsets": [16, 24]}}')), "error", True),
        ("duplicate-metadata", safetensors_bytes(None, data, raw_header=(
            b'{"__metadata__": {"a": "1"}, "__metadata__": {"a": "2"},'
            b' "w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}')), "either", False),
        ("metadata-not-dict", safetensors_bytes({"__metadata__": [1, 2], **good}, data), "either", False),
        ("metadata-nested", safetensors_bytes({"__metadata__": {"a": {"b": [1, {"c": None}]}}, **good}, data),
         "either", False),
        ("metadata-only", safetensors_bytes({"__metadata__": {"format": "pt"}}, b""), "either", True),
        ("empty-header", safetensors_bytes({}, b""), "either", False),
        ("header-spaces-padding", safetensors_bytes(None, data, raw_header=json.dumps(good).encode() + b"   "),
         "ok", False),
        ("zero-size-tensors", safetensors_bytes({"e": {"dtype": "F32", "shape": [0, 5], "data_offsets": [0, 0]},
                                                 "f": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}}, b""),
         "ok", False),
        ("gap-between-tensors", safetensors_bytes({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                                   "b": {"dtype": "F32", "shape": [2], "data_offsets": [16, 24]}},
                                                  data), "either", False),
        ("trailing-bytes", safetensors_bytes(good, data + bytes(100)), "either", False),
    ]
    for name, blob, expect, quick in cases:
        path = c.write(c.p("safetensors", f"{name}.safetensors"), blob)
        c.add(f"safetensors:{name}", cat, path, expect=expect, quick=quick, key="e" if name == "zero-size-tensors" else "w")
    # a header close to the library's 100 MB limit must not hang; just above it is refused
    if not c.quick:
        pad = 100 * 1024 * 1024 + 10
        path = c.p("safetensors", "header-over-100MB.safetensors")
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", pad) + b"{" + b" " * (pad - 2) + b"}")
        c.add("safetensors:header-over-100MB", cat, path, expect="error", key="w")


# ---- zip structure ------------------------------------------------------------------------------------------------

def _cd_entries(data: bytes):
    """(offset of the central-directory header, name) of every entry of a zip (no zip64)."""
    eocd = data.rfind(b"PK\x05\x06")
    n, cd_size, cd_off = struct.unpack("<HII", data[eocd + 10:eocd + 20])
    pos, out = cd_off, []
    for _ in range(n):
        name_len, extra_len, comment_len = struct.unpack("<HHH", data[pos + 28:pos + 34])
        out.append((pos, data[pos + 46:pos + 46 + name_len].decode()))
        pos += 46 + name_len + extra_len + comment_len
    return out


def _patch_cd(data: bytes, suffix: str, field_offset: int, value: int, fmt="<I") -> bytes:
    out = bytearray(data)
    for pos, name in _cd_entries(data):
        if name.endswith(suffix):
            struct.pack_into(fmt, out, pos + field_offset, value)
            return bytes(out)
    raise KeyError(suffix)


def _zip(c: Corpus, b: dict) -> None:
    cat = "zip-structure"
    data = read_bytes(b["zip"])
    # central directory: local header offset (field +42), compressed size (+20), uncompressed size (+24)
    cases = [
        ("storage-offset-past-eof", _patch_cd(data, "/data/0", 42, len(data) + 4096), "either", True),
        ("storage-offset-2^32-1", _patch_cd(data, "/data/0", 42, 2 ** 32 - 1), "either", False),
        ("storage-offset-into-cd", _patch_cd(data, "/data/0", 42, data.rfind(b"PK\x01\x02")), "either", False),
        ("storage-size-past-eof", _patch_cd(_patch_cd(data, "/data/0", 20, 2 ** 31), "/data/0", 24, 2 ** 31),
         "either", True),
        ("datapkl-offset-past-eof", _patch_cd(data, "/data.pkl", 42, len(data) + 100), "either", True),
        ("cd-offset-past-eof", data[:-6] + struct.pack("<I", len(data) * 2) + data[-2:], "error", True),
        ("cd-entries-65535", data[:-12] + struct.pack("<HH", 65535, 65535) + data[-8:], "either", False),
        ("no-eocd", data[:-22], "error", False),
        ("two-eocd", data + data[-22:], "either", False),
        ("comment-claims-64k", data[:-2] + struct.pack("<H", 65535), "either", False),
    ]
    for name, blob, expect, quick in cases:
        path = c.write(c.p("zip", f"{name}.pt"), blob)
        c.add(f"zip:{name}", cat, path, expect=expect, quick=quick, entries=None)
    # storages shorter than their tensors claim
    sd = OD([("linear.weight", tensor("0", (5, 10))), ("linear.bias", tensor("1", (5,)))])
    path = c.p("zip", "storage-record-short.pt")
    write_torch_zip(path, dumps(sd), {"0": bytes(16), "1": bytes(20)})
    c.add("zip:storage-record-shorter-than-tensor", cat, path, expect="either", quick=True)
    sd = OD([("linear.weight", tensor("0", (5, 10), numel=4)), ("linear.bias", tensor("1", (5,)))])
    path = c.p("zip", "storage-numel-short.pt")
    write_torch_zip(path, dumps(sd), {"0": bytes(200), "1": bytes(20)})
    c.add("zip:storage-numel-smaller-than-tensor", cat, path, expect="either", quick=True)
    sd = OD([("linear.weight", tensor("0", (5, 10), offset=10)), ("linear.bias", tensor("1", (5,)))])
    path = c.p("zip", "storage-offset-overrun.pt")
    write_torch_zip(path, dumps(sd), {"0": bytes(200), "1": bytes(20)})
    c.add("zip:tensor-offset-overruns-storage", cat, path, expect="either")
    path = c.p("zip", "storage-record-missing.pt")
    write_torch_zip(path, dumps(sd), {"1": bytes(20)})
    c.add("zip:storage-record-missing", cat, path, expect="either", quick=True)
    path = c.p("zip", "no-data-pkl.pt")
    write_torch_zip(path, b"", {})
    c.add("zip:empty-data-pkl", cat, path, expect="error")
    # a plain zip: no data.pkl at all, a zip-slip name, a deflated data.pkl claiming 3 GB, a zip bomb
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("../../escape/data.pkl", dumps({"a": 1}))
        z.writestr("/abs/data/0", b"x")
    c.add("zip:plain-zip-slip-names", cat, c.write(c.p("zip", "zip-slip.pt"), buf.getvalue()), expect="either",
          quick=True)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("hello.txt", b"not a checkpoint")
    c.add("zip:plain-zip-no-data-pkl", cat, c.write(c.p("zip", "plain.pt"), buf.getvalue()), expect="error")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", dumps(OD([("a", 1)])))
    blob = _patch_cd(buf.getvalue(), "/data.pkl", 24, 3 * 2 ** 30)
    c.add("zip:deflated-data-pkl-claims-3GB", cat, c.write(c.p("zip", "claims-3GB.pt"), blob), expect="either",
          quick=True)
    if not c.quick:
        import zlib
        comp = zlib.compressobj(1, zlib.DEFLATED, -15)
        pkl = dumps({"a": 1})
        body = comp.compress(pkl[:-1]) + b"".join(comp.compress(bytes(1 << 20)) for _ in range(512))
        body += comp.compress(b".") + comp.flush()
        # a stored zip entry cannot hold this; write a deflated one by hand
        blob = _zip_one("archive/data.pkl", body, len(pkl) - 1 + 512 * (1 << 20) + 1, zlib.crc32(b""))
        c.add("zip:bomb-512MB-data-pkl", cat, c.write(c.p("zip", "bomb.pt"), blob), expect="either")


def _zip_one(name: str, deflated: bytes, size: int, crc: int) -> bytes:
    """A one-entry deflated zip with the given sizes (crc deliberately not checked by readers we trust)."""
    n = name.encode()
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0, crc, len(deflated), size, len(n), 0) + n
    cd = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0, crc, len(deflated), size, len(n),
                     0, 0, 0, 0, 0, 0) + n
    body = local + deflated
    eocd = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(cd), len(body), 0)
    return body + cd + eocd


# ---- sharded ------------------------------------------------------------------------------------------------------

def _sharded(c: Corpus, b: dict) -> None:
    cat = "sharded"
    src = b["sharded"]
    index = json.loads(read_bytes(os.path.join(src, "model.safetensors.index.json")))
    wm = index["weight_map"]
    first = next(iter(wm))
    outside = c.write(c.p("sharded", "outside.safetensors"), read_bytes(b["safetensors"]))

    def variant(name, new_wm=None, raw=None, setup=None, expect="error", quick=False, index_name=None,
                bad_error=None):
        folder = c.p("sharded", name)
        shutil.copytree(src, folder)
        text = raw if raw is not None else json.dumps({"weight_map": new_wm}).encode()
        c.write(os.path.join(folder, index_name or "model.safetensors.index.json"), text)
        if setup:
            setup(folder)
        c.add(f"sharded:{name}", cat, folder, expect=expect, quick=quick, bad_error=bad_error)
        return folder

    variant("dotdot", {**wm, first: "../outside.safetensors"}, quick=True)
    variant("dotdot-deep", {**wm, first: "sub/../../outside.safetensors"})
    variant("absolute", {**wm, first: outside}, quick=True)
    variant("absolute-etc-passwd", {**wm, first: "/etc/passwd"})
    variant("symlink-outside", {**wm, first: "link.safetensors"},
            setup=lambda f: os.symlink(outside, os.path.join(f, "link.safetensors")), quick=True)
    variant("missing-shard", {**wm, first: "model-00009-of-00009.safetensors"}, quick=True)
    variant("shard-deleted", wm, setup=lambda f: os.remove(os.path.join(f, "model-00002-of-00002.safetensors")))
    # an index naming itself (or two naming each other) must be refused, not recursed into until some unrelated
    # reader catches the RecursionError and blames a valid shard
    variant("self-reference", {**wm, first: "model.safetensors.index.json"}, quick=True,
            bad_error="maximum recursion depth")
    variant("mutual-indexes", {**wm, first: "other.index.json"},
            setup=lambda f: c.write(os.path.join(f, "other.index.json"),
                                    json.dumps({"weight_map": {"x": "model.safetensors.index.json"}}).encode()),
            quick=True, bad_error="maximum recursion depth")
    variant("shard-is-folder-dot", {**wm, first: "."})
    variant("shard-empty-name", {**wm, first: ""})
    variant("shard-not-string", {**wm, first: 7})
    variant("shard-null-byte", {**wm, first: "model\x00.safetensors"}, quick=True)
    variant("weight-map-list", raw=json.dumps({"weight_map": [1, 2]}).encode())
    variant("weight-map-empty", {})
    variant("index-array", raw=b"[]")
    variant("index-invalid-json", raw=b'{"weight_map": {', quick=True)
    variant("index-not-utf8", raw=b'{"weight_map": {"\xff": "a"}}')
    variant("index-deep-json", raw=b"[" * 100_000 + b"]" * 100_000, quick=True)
    variant("index-empty", raw=b"")

    # a key in two shards: the index says shard 2; shard 1 also holds it with another shape
    def dup(folder):
        from safetensors.torch import save_file
        import torch
        save_file({first: torch.zeros(7), "linear.bias": torch.zeros(5), "bn.weight": torch.zeros(5)},
                  os.path.join(folder, "model-00001-of-00002.safetensors"))
    variant("key-in-two-shards-index", {**wm, first: "model-00002-of-00002.safetensors"}, setup=dup,
            expect="either", quick=True)
    folder = c.p("sharded", "key-in-two-shards-no-index")
    os.makedirs(folder)
    shutil.copy(b["safetensors"], os.path.join(folder, "a.safetensors"))
    shutil.copy(b["safetensors"], os.path.join(folder, "b.safetensors"))
    c.add("sharded:key-in-two-shards-no-index", cat, folder, expect="error", quick=True)
    # the index names a key no shard holds, and a shard holding keys the index does not name
    variant("key-not-in-shard", {**wm, "ghost.weight": "model-00001-of-00002.safetensors"})
    # a hostile pickle as a shard: listed, never run
    folder = c.p("sharded", "hostile-bin-shard")
    os.makedirs(folder)
    path = os.path.join(folder, "pytorch_model-00001-of-00001.bin")
    write_torch_zip(path, dumps(OD([("linear.weight", tensor("0", (5, 10))),
                                    ("evil", Call(G("os", "system"), f"touch '{c.marker('shard')}'"))])),
                    {"0": bytes(200)})
    c.write(os.path.join(folder, "pytorch_model.bin.index.json"),
            json.dumps({"weight_map": {"linear.weight": "pytorch_model-00001-of-00001.bin"}}).encode())
    c.add("sharded:hostile-bin-shard", cat, folder, expect="ok", quick=True)
    # a broken shard
    variant("shard-truncated", wm, setup=lambda f: _truncate(os.path.join(f, "model-00001-of-00002.safetensors"),
                                                            40), quick=True)


def _header(path: str) -> dict:
    """A safetensors file's JSON header, in file order (the order a reader must list)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n))


def st_entries(path: str) -> list:
    """Expected entries of a safetensors file: its header order (the library sorts tensors when it writes)."""
    dt = {"F32": "float32", "I64": "int64", "F16": "float16", "F64": "float64"}
    return [[[k], v["shape"], dt[v["dtype"]]] for k, v in _header(path).items() if k != "__metadata__"]


def _truncate(path: str, n: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(n)


# ---- torch.distributed.checkpoint ---------------------------------------------------------------------------------

def _dcp(c: Corpus, b: dict) -> None:
    cat = "dcp"
    src = b["dcp"]
    meta = read_bytes(os.path.join(src, ".metadata"))

    def variant(name, data=None, setup=None, expect="error", quick=False):
        folder = c.p("dcp", name)
        shutil.copytree(src, folder)
        if data is not None:
            c.write(os.path.join(folder, ".metadata"), data)
        if setup:
            setup(folder)
        c.add(f"dcp:{name}", cat, folder, expect=expect, quick=quick)

    variant("metadata-empty", b"", quick=True)
    variant("metadata-os-system", dumps(Call(G("os", "system"), f"touch '{c.marker('dcp-metadata')}'")), quick=True)
    variant("metadata-eval", dumps(Call(G("builtins", "eval"), f"open({c.marker('dcp-eval')!r}, 'w')")))
    # the real Metadata with a hostile object where a reader walks
    variant("metadata-hostile-in-valid", _inject_dcp(meta, c.marker("dcp-inject")), expect="either", quick=True)
    variant("metadata-deep-list", _deep_list(100_000), quick=True)
    variant("metadata-laughs", _laughs(64, "list"), quick=True)
    variant("metadata-not-a-pickle", b"this is not a pickle at all")
    variant("metadata-json", json.dumps({"state_dict_metadata": {}}).encode())
    variant("metadata-wrong-class", dumps(Build(Call(G("torch.distributed.checkpoint.metadata", "Metadata")),
                                                {"state_dict_metadata": [1, 2, 3], "storage_data": "x"})))
    variant("metadata-none", dumps(None))
    variant("distcp-missing", setup=lambda f: [os.remove(os.path.join(f, n)) for n in os.listdir(f)
                                               if n.endswith(".distcp")], expect="either", quick=True)
    variant("distcp-truncated", setup=lambda f: [_truncate(os.path.join(f, n), 10) for n in os.listdir(f)
                                                 if n.endswith(".distcp")], expect="either", quick=True)
    variant("distcp-is-folder", setup=lambda f: [(os.remove(os.path.join(f, n)), os.makedirs(os.path.join(f, n)))
                                                 for n in os.listdir(f) if n.endswith(".distcp")], expect="either")


def _inject_dcp(meta: bytes, marker: str) -> bytes:
    """The real .metadata with its ``planner_data`` / ``storage_meta`` replaced by an ``os.system`` call: the pickle
    stays valid, the hostile object sits where a reader walks."""
    # append a BUILD after the Metadata object: state adds an attribute holding the payload
    assert meta.endswith(b".")
    payload = Call(G("os", "system"), f"touch '{marker}'")
    out: list = []
    encode((None, {"storage_meta": payload}), out)
    return meta[:-1] + b"".join(out) + b"b."


# ---- keys -----------------------------------------------------------------------------------------------------------

KEY_CASES = [
    ("dots", ["a..b", ".lead", "trail.", ".", "..", "a.0.b.00.c"]),
    ("empty", ["", "x"]),
    ("unicode", ["ünïcödé.wéight", "слой.вес", "层.权重", "🔥.🔥", "\u202eevil.txt", "a\u0301"]),
    ("control-chars", ["new\nline", "tab\tkey", "nul\x00key", "esc\x1b[31mred", "cr\rkey"]),
    ("long-100k", ["k" * 100_000, "m." * 20_000 + "w"]),
    ("slash-and-colon", ["a/b", "/", "demo:MyModel", "C:\\x", "%s%n"]),
]


def _keys(c: Corpus) -> None:
    cat = "keys"
    from safetensors.torch import save_file
    import torch
    for name, keys in KEY_CASES:
        quick = name in ("dots", "empty", "unicode", "control-chars")
        ents = [[[k], [2], "float32"] for k in keys]
        # safetensors (no NUL in JSON keys? JSON allows \u0000)
        path = c.p("keys", f"{name}.safetensors")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        save_file({k: torch.full((2,), float(i)) for i, k in enumerate(keys)}, path)
        c.add(f"keys-safetensors:{name}", cat, path, expect="ok", quick=quick, key=keys[0], entries=st_entries(path))
        path = c.p("keys", f"{name}.pt")
        torch.save(OrderedDict((k, torch.full((2,), float(i))) for i, k in enumerate(keys)), path)
        c.add(f"keys-zip:{name}", cat, path, expect="ok", quick=quick, key=keys[0], entries=ents)
    # non-string keys in a pickle: ints, None, tuples, bytes, floats, a placeholder object
    path = c.p("keys", "non-string-keys.pt")
    items = [(0, tensor("0", (2,))), (None, tensor("0", (2,))), ((1, 2), tensor("0", (2,))), (b"raw", tensor("0", (2,))),
             (1.5, tensor("0", (2,))), (True, tensor("0", (2,))), ("0", tensor("0", (2,)))]
    write_torch_zip(path, dumps(OD(items)), {"0": bytes(8)})
    c.add("keys-zip:non-string", cat, path, expect="either", quick=True, key="0")
    path = c.p("keys", "placeholder-key.pt")
    write_torch_zip(path, dumps(dict([(Call(G("evil", "Key"), "x"), tensor("0", (2,)))])), {"0": bytes(8)})
    c.add("keys-zip:placeholder-key", cat, path, expect="either", key="x")


# ---- 10^6 tiny tensors ----------------------------------------------------------------------------------------------

def _many(c: Corpus, n: int) -> None:
    cat = "many-tensors"
    # safetensors: one header entry per tensor, each a float32 of shape [1]
    parts = ['{"__metadata__":{"format":"pt"}']
    parts += [f',"t{i}":{{"dtype":"F32","shape":[1],"data_offsets":[{4 * i},{4 * i + 4}]}}' for i in range(n)]
    parts.append("}")
    header = "".join(parts).encode()
    path = c.p("many", f"many-{n}.safetensors")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header + bytes(4 * n))
    c.add(f"many:safetensors-{n}", cat, path, expect="ok", key="t0", quick=True, tensors=n)
    # .pt: n views of one shared storage, written straight as opcodes (torch.save of 10^6 tensors takes minutes)
    head = (b"\x80\x02ccollections\nOrderedDict\n)Rq\x01"
            b"ctorch._utils\n_rebuild_tensor_v2\nq\x020"
            b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpu"
            + b"J" + struct.pack("<i", n) + b"tq\x050"
            b"ccollections\nOrderedDict\n)Rq\x060(")
    keys = [f"t{i}".encode() for i in range(n)]
    body = b"".join(b"X" + struct.pack("<I", len(k)) + k + b"h\x02(h\x05Q" + b"J" + struct.pack("<i", i)
                    + b"K\x01\x85K\x01\x85\x89h\x06tR" for i, k in enumerate(keys))
    pkl = head + body + b"u."
    path = c.p("many", f"many-{n}.pt")
    write_torch_zip(path, pkl, {"0": bytes(4 * n)})
    c.add(f"many:zip-{n}", cat, path, expect="ok", key="t0", tensors=n)


# ---- build ----------------------------------------------------------------------------------------------------------

def build(root: str, quick: bool = False, many: int | None = None) -> list[Input]:
    """Write the corpus under ``root`` (created) and return its inputs. ``many`` overrides the 10^6 of the
    many-tensors inputs (quick mode uses 10^4 for the safetensors one and skips the .pt)."""
    c = Corpus(root, quick)
    b = _bases(c)
    _valid(c, b)
    _hostile(c)
    _bombs(c)
    _damage(c, b)
    _filesystem(c, b)
    _safetensors(c, b)
    _zip(c, b)
    _sharded(c, b)
    _dcp(c, b)
    _keys(c)
    # the zip-fidelity and round-two inputs (their modules use this one's encoder: imported here, when it is loaded)
    from . import corpus_round2, corpus_zip
    corpus_zip.build(c, b)
    corpus_round2.build(c, b)
    _many(c, many if many is not None else (10_000 if quick else 10 ** 6))
    # every corpus file world-readable unless it is a permission case: the unprivileged runs need the rest
    perm = c.p("perm")
    for dirpath, dirnames, filenames in os.walk(c.root):
        if dirpath.startswith(perm):
            continue
        os.chmod(dirpath, 0o755)
    os.chmod(perm, 0o755)
    with open(os.path.join(c.root, "manifest.json"), "w") as f:
        json.dump({"root": c.root, "markers": c.markers, "canary": c.canary, "browser": c.browser,
                   "bases": b, "inputs": [i.to_json() for i in c.inputs]}, f)
    return c.inputs


def load_manifest(root: str) -> dict:
    with open(os.path.join(root, "manifest.json")) as f:
        m = json.load(f)
    m["inputs"] = [Input(**d) for d in m["inputs"]]
    return m


def main(argv=None) -> int:
    import argparse
    ap = argparse.ArgumentParser(description="generate the hostile-input corpus")
    ap.add_argument("root")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    inputs = build(args.root, args.quick)
    cats: dict[str, int] = {}
    for i in inputs:
        cats[i.category] = cats.get(i.category, 0) + 1
    for k, v in cats.items():
        print(f"{k:<22} {v}")
    print(f"{len(inputs)} inputs under {args.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
