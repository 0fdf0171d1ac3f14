"""Every reader against torch's own loading, on tiny fixtures made here (no committed binaries).

Each check compares keys (in file order), shapes, dtypes and the exact bytes of every value with what
``torch.load`` / ``safetensors`` / ``torch.distributed.checkpoint`` give for the same file.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import warnings
import zipfile
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from explorer.core.loaded import RecoveredModule
from explorer.core.loaders import open_checkpoint
from explorer.errors import CorruptFileError, ExplorerError, UnsafePathError


# ---- helpers ------------------------------------------------------------------------------------------------------

def raw_bytes(t: torch.Tensor) -> bytes:
    """A tensor's values as bytes (works for every dtype, 0-dim and empty, NaN-safe)."""
    t = t.detach().reshape(-1).contiguous()
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).replace("torch.", "")


def assert_same(ck, prefix: tuple, expected: dict, *, check_order: bool = True):
    """The state dict at ``prefix`` of ``ck`` equals ``expected`` (key -> tensor) in keys, shapes, dtypes, values."""
    infos = ck.state_dict_infos(prefix)
    if check_order:
        assert list(infos) == list(expected)
    else:
        assert set(infos) == set(expected)
    for key, ref in expected.items():
        info = infos[key]
        assert info.path == prefix + (key,)
        assert info.shape == tuple(ref.shape), key
        assert info.dtype == dtype_name(ref), key
        assert info.nbytes == ref.numel() * ref.element_size(), key
        got = ck.read(info.path)
        assert got.shape == ref.shape and got.dtype == ref.dtype, key
        assert raw_bytes(got) == raw_bytes(ref), key
        assert ck.read_key(key, prefix).shape == ref.shape


def all_dtype_tensors() -> "OrderedDict[str, torch.Tensor]":
    g = torch.Generator().manual_seed(0)
    base = torch.randn(4, 6, generator=g)
    out = OrderedDict()
    for dt in (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int8, torch.int16, torch.int32,
               torch.int64, torch.uint8, torch.bool, torch.complex64, torch.complex128):
        out[f"t.{dtype_name(torch.empty(0, dtype=dt))}"] = (base * 10).to(dt)
    for dt in (torch.float8_e4m3fn, torch.float8_e5m2, torch.float8_e4m3fnuz, torch.float8_e5m2fnuz):
        out[f"t.{dtype_name(torch.empty(0, dtype=dt))}"] = base.to(dt)
    for dt in (torch.uint16, torch.uint32, torch.uint64):
        out[f"t.{dtype_name(torch.empty(0, dtype=dt))}"] = torch.arange(24, dtype=torch.int64).reshape(4, 6).to(dt)
    out["nan"] = torch.tensor([float("nan"), 1.0, float("inf"), -0.0])
    out["scalar"] = torch.tensor(3.5)
    out["scalar_int"] = torch.tensor(7, dtype=torch.int64)
    out["empty"] = torch.empty(0, 5)
    out["empty_int"] = torch.empty(3, 0, dtype=torch.int32)
    return out


def view_tensors() -> "OrderedDict[str, torch.Tensor]":
    """Non-contiguous views, shared storages and storage offsets: torch.save keeps them as views of one storage."""
    base = torch.arange(60, dtype=torch.float32).reshape(6, 10)
    out = OrderedDict()
    out["base"] = base
    out["transposed"] = base.t()
    out["row_slice"] = base[2:4]            # storage offset 20
    out["col_slice"] = base[:, 3:7]         # offset 3, non-contiguous
    out["strided"] = base[::2, ::3]
    out["expanded"] = torch.arange(3.0).expand(4, 3)  # stride 0
    out["element"] = base[5, 9]             # 0-dim view at the end of the storage
    out["narrow_of_other"] = torch.arange(100, dtype=torch.int16)[17:29].view(3, 4)
    return out


def save_torch(obj, path, legacy=False):
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return str(path)


# ---- torch.save zip, every name ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mlp_sd():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    m(torch.randn(5, 3))  # moves the running stats away from their defaults
    return m.state_dict()


@pytest.mark.parametrize("name", ["m.pt", "m.pth", "pytorch_model.bin", "last.ckpt", "weights.odd-name"])
def test_zip_any_name(tmp_path, mlp_sd, name):
    path = save_torch(mlp_sd, tmp_path / name)
    ck = open_checkpoint(path)
    assert ck.format == "torch-zip"
    assert ck.default_state_dict == ()
    ref = torch.load(path, weights_only=True)
    assert_same(ck, (), ref)
    assert ck.references == []  # a plain state dict names nothing but tensor machinery
    assert [e.path for e in ck.entries] == [(k,) for k in ref]


def test_zip_every_dtype(tmp_path):
    sd = all_dtype_tensors()
    path = save_torch(sd, tmp_path / "dtypes.pt")
    ck = open_checkpoint(path)
    ref = torch.load(path, weights_only=True)
    assert list(ref) == list(sd)
    assert_same(ck, (), ref)
    assert ck.entries[list(sd).index("scalar")].shape == ()


def test_zip_views_and_shared_storage(tmp_path):
    sd = view_tensors()
    path = save_torch(sd, tmp_path / "views.pt")
    ck = open_checkpoint(path)
    ref = torch.load(path, weights_only=True)
    assert_same(ck, (), ref)
    infos = ck.state_dict_infos()
    # one storage behind the views of ``base``; the slice keeps its storage offset and stride
    keys = {k: infos[k].location.storage_key for k in ("base", "transposed", "row_slice", "col_slice", "element")}
    assert len(set(keys.values())) == 1
    assert infos["row_slice"].location.storage_offset == 20
    assert infos["col_slice"].location.stride == (10, 1)
    assert infos["expanded"].location.stride == (0, 1)
    assert infos["base"].location.storage_nbytes == 60 * 4
    assert infos["narrow_of_other"].location.storage_offset == 17


def test_legacy_format(tmp_path, mlp_sd):
    sd = OrderedDict(mlp_sd)
    sd.update(view_tensors())
    for k, v in all_dtype_tensors().items():
        if v.dtype in (torch.float16, torch.bfloat16, torch.int64, torch.bool, torch.complex64, torch.uint8):
            sd[k] = v
    path = save_torch(sd, tmp_path / "legacy.pt", legacy=True)
    with open(path, "rb") as f:
        assert f.read(2) != b"PK"
    ck = open_checkpoint(path)
    assert ck.format == "torch-legacy"
    ref = torch.load(path, weights_only=True)
    assert_same(ck, (), ref)


def test_legacy_nested_and_module(tmp_path, mlp_sd):
    model = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
    path = save_torch({"model": model, "epoch": 2}, tmp_path / "legacy_model.pth", legacy=True)
    ck = open_checkpoint(path)
    assert ck.default_state_dict == ("model",)
    assert_same(ck, ("model",), model.state_dict())
    assert "torch.nn.modules.container.Sequential" in ck.references
    assert ck.get(("epoch",)) == 2


def test_single_tensor_file(tmp_path):
    t = torch.arange(6.0).reshape(2, 3)
    path = save_torch(t, tmp_path / "tensor.pt")
    ck = open_checkpoint(path)
    assert len(ck.entries) == 1 and ck.entries[0].path == () and ck.entries[0].shape == (2, 3)
    assert ck.default_state_dict is None
    assert torch.equal(ck.read(()), t)


def test_meta_tensors_list_without_bytes(tmp_path):
    sd = {"w": torch.empty(3, 4, device="meta"), "b": torch.zeros(2)}
    path = save_torch(sd, tmp_path / "meta.pt")
    ck = open_checkpoint(path)
    infos = ck.state_dict_infos()
    assert infos["w"].shape == (3, 4) and infos["w"].device == "meta" and infos["w"].dtype == "float32"
    with pytest.raises(ExplorerError):
        ck.read(("w",))
    assert torch.equal(ck.read(("b",)), torch.zeros(2))


def test_numpy_scalars_and_plain_values(tmp_path, mlp_sd):
    obj = {"state_dict": mlp_sd, "best_score": np.float64(0.875), "count": np.int64(12), "flag": np.bool_(True),
           "f32": np.float32(1.5), "name": "run-1", "history": [1, 2.5, None], "when": {"epoch": 4}}
    path = save_torch(obj, tmp_path / "np.ckpt")
    ref = torch.load(path, weights_only=False)
    ck = open_checkpoint(path)
    assert ck.get(("best_score",)) == ref["best_score"] == 0.875
    assert ck.get(("count",)) == 12 and ck.get(("flag",)) is True and ck.get(("f32",)) == 1.5
    assert ck.get(("name",)) == "run-1" and ck.get(("history",)) == [1, 2.5, None]
    assert ck.get(("when", "epoch")) == 4
    assert "numpy.dtype" in ck.references
    assert any(r.endswith("multiarray.scalar") for r in ck.references)
    assert_same(ck, ("state_dict",), ref["state_dict"])


# ---- CUDA-saved --------------------------------------------------------------------------------------------------

def _relocate(src: str, dst: str, location: str) -> None:
    """Rewrite a torch.save zip so that its storages say they were saved on ``location`` (as a GPU machine would)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename.endswith("/data.pkl"):
                old = b"X\x03\x00\x00\x00cpu"
                assert old in data
                loc = location.encode()
                data = data.replace(old, b"X" + len(loc).to_bytes(4, "little") + loc)
            zout.writestr(item.filename, data)


def test_cuda_saved_opens_on_cpu(tmp_path, mlp_sd):
    cpu_path = save_torch({"model": mlp_sd, "step": 3}, tmp_path / "cpu.pt")
    path = str(tmp_path / "cuda.pt")
    _relocate(cpu_path, path, "cuda:0")
    ref = torch.load(path, map_location="cpu", weights_only=True)
    ck = open_checkpoint(path)
    infos = ck.state_dict_infos()
    assert {i.device for i in infos.values()} == {"cuda:0"}
    assert_same(ck, ("model",), ref["model"])
    assert all(ck.read(i.path).device.type == "cpu" for i in infos.values())
    if not torch.cuda.is_available():  # the file really is a CUDA file: torch refuses it without map_location
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(path, weights_only=True)


def test_mps_saved_opens_on_cpu(tmp_path, mlp_sd):
    cpu_path = save_torch(mlp_sd, tmp_path / "cpu.pt")
    path = str(tmp_path / "mps.pt")
    _relocate(cpu_path, path, "mps")
    ck = open_checkpoint(path)
    assert {e.device for e in ck.entries} == {"mps"}
    assert_same(ck, (), torch.load(path, map_location="cpu", weights_only=True))


# ---- safetensors -------------------------------------------------------------------------------------------------

def test_safetensors_every_dtype(tmp_path):
    sd = OrderedDict((k, v.contiguous()) for k, v in all_dtype_tensors().items()
                     if v.dtype not in (torch.complex64, torch.complex128, torch.float8_e4m3fnuz,
                                        torch.float8_e5m2fnuz))
    path = str(tmp_path / "model.safetensors")
    save_file(sd, path, metadata={"format": "pt", "note": "tiny"})
    ck = open_checkpoint(path)
    assert ck.format == "safetensors"
    assert ck.metadata == {"format": "pt", "note": "tiny"}
    ref = load_file(path)
    assert_same(ck, (), ref, check_order=False)
    # file order is the header's order
    assert [e.path[0] for e in ck.entries] == [k for k in json.loads(_header_bytes(path)) if k != "__metadata__"]
    # where the bytes are: the byte offset in the file
    info = ck.state_dict_infos()["t.float32"]
    assert info.location.file == path and info.location.offset is not None
    with open(path, "rb") as f:
        f.seek(info.location.offset)
        assert f.read(info.nbytes) == raw_bytes(ref["t.float32"])


def _header_bytes(path):
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        return f.read(n)


def test_safetensors_wrong_extension_still_read(tmp_path, mlp_sd):
    path = str(tmp_path / "weights.bin")
    save_file({k: v.contiguous() for k, v in mlp_sd.items()}, path)
    ck = open_checkpoint(path)
    assert ck.format == "safetensors"
    assert_same(ck, (), load_file(path), check_order=False)


def test_safetensors_duplicate_key_rejected(tmp_path):
    body = b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
    path = tmp_path / "dup.safetensors"
    path.write_bytes(len(body).to_bytes(8, "little") + body + b"\0" * 4)
    with pytest.raises(CorruptFileError, match="duplicate"):
        open_checkpoint(path)


@pytest.mark.parametrize("spec,match", [
    ('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}', "needs 8 bytes"),
    ('{"a":{"dtype":"X9","shape":[1],"data_offsets":[0,4]}}', "unknown dtype"),
    ('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[2,6]}}',
     "overlap"),
    ('{"a":{"dtype":"F32","shape":[1.0],"data_offsets":[0,4]}}', "invalid shape"),
    ('{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}', "truncated"),
])
def test_safetensors_inconsistent_header(tmp_path, spec, match):
    body = spec.encode()
    path = tmp_path / "bad.safetensors"
    path.write_bytes(len(body).to_bytes(8, "little") + body + b"\0" * 8)
    with pytest.raises(CorruptFileError, match=match):
        open_checkpoint(path)


# ---- sharded -----------------------------------------------------------------------------------------------------

def _split(sd):
    keys = list(sd)
    return OrderedDict((k, sd[k]) for k in keys[: len(keys) // 2]), OrderedDict((k, sd[k]) for k in keys[len(keys) // 2:])


def test_sharded_safetensors_index(tmp_path, mlp_sd):
    a, b = _split(mlp_sd)
    save_file({k: v.contiguous() for k, v in a.items()}, tmp_path / "model-00001-of-00002.safetensors")
    save_file({k: v.contiguous() for k, v in b.items()}, tmp_path / "model-00002-of-00002.safetensors")
    wm = {k: "model-00001-of-00002.safetensors" for k in a} | {k: "model-00002-of-00002.safetensors" for k in b}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": 1},
                                                                       "weight_map": wm}))
    for target in (tmp_path / "model.safetensors.index.json", tmp_path):
        ck = open_checkpoint(target)
        assert ck.format == "sharded"
        assert_same(ck, (), mlp_sd, check_order=False)
        files = {e.path[0]: os.path.basename(e.location.file) for e in ck.entries}
        assert files == wm  # every tensor's bytes are in the shard the index names


def test_sharded_bin_index(tmp_path, mlp_sd):
    a, b = _split(mlp_sd)
    torch.save(a, tmp_path / "pytorch_model-00001-of-00002.bin")
    torch.save(b, tmp_path / "pytorch_model-00002-of-00002.bin")
    wm = {k: "pytorch_model-00001-of-00002.bin" for k in a} | {k: "pytorch_model-00002-of-00002.bin" for k in b}
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": wm}))
    ck = open_checkpoint(tmp_path / "pytorch_model.bin.index.json")
    assert_same(ck, (), mlp_sd, check_order=False)
    assert ck.default_state_dict == ()


def test_sharded_bare_folder(tmp_path, mlp_sd):
    a, b = _split(mlp_sd)
    save_file({k: v.contiguous() for k, v in a.items()}, tmp_path / "part1.safetensors")
    save_file({k: v.contiguous() for k, v in b.items()}, tmp_path / "part2.safetensors")
    ck = open_checkpoint(tmp_path)
    assert ck.format == "sharded"
    assert_same(ck, (), mlp_sd, check_order=False)


def test_sharded_index_trusts_weight_map_and_stays_in_folder(tmp_path, mlp_sd):
    a, b = _split(mlp_sd)
    save_file({k: v.contiguous() for k, v in mlp_sd.items()}, tmp_path / "s1.safetensors")  # holds every key
    save_file({k: (v + 1).contiguous() for k, v in b.items()}, tmp_path / "s2.safetensors")
    wm = {k: "s1.safetensors" for k in a} | {k: "s2.safetensors" for k in b}
    (tmp_path / "x.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))
    ck = open_checkpoint(tmp_path / "x.safetensors.index.json")
    for k in b:  # the index says s2 holds these: its values win
        assert torch.equal(ck.read_key(k), b[k] + 1)
    outside = tmp_path.parent / f"outside-{os.getpid()}.safetensors"
    save_file({"w": torch.zeros(1)}, outside)
    try:
        for name in (f"../{outside.name}", str(outside)):
            (tmp_path / "evil.index.json").write_text(json.dumps({"weight_map": {"w": name}}))
            with pytest.raises(UnsafePathError):
                open_checkpoint(tmp_path / "evil.index.json")
    finally:
        outside.unlink()


def test_sharded_missing_shard(tmp_path, mlp_sd):
    save_file({k: v.contiguous() for k, v in mlp_sd.items()}, tmp_path / "s1.safetensors")
    wm = {k: "s1.safetensors" for k in mlp_sd} | {"extra.weight": "s9.safetensors"}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))
    with pytest.raises(CorruptFileError, match="s9.safetensors"):
        open_checkpoint(tmp_path / "model.safetensors.index.json")


# ---- nested checkpoints and ranking ------------------------------------------------------------------------------

def _trained(model):
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, 2)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    sched.step()
    return opt, sched


def test_lightning_like(tmp_path):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    opt, sched = _trained(model)
    ckpt = {"epoch": 3, "global_step": 120, "pytorch-lightning_version": "2.4.0",
            "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
            "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 3}}}},
            "callbacks": {"ModelCheckpoint": {"best_model_score": torch.tensor(0.25)}},
            "optimizer_states": [opt.state_dict()], "lr_schedulers": [sched.state_dict()],
            "hyper_parameters": {"lr": 1e-3, "layers": [3, 4, 2], "name": "mlp"}}
    path = save_torch(ckpt, tmp_path / "epoch=3-step=120.ckpt")
    ref = torch.load(path, weights_only=True)
    ck = open_checkpoint(path)
    assert ck.default_state_dict == ("state_dict",)
    assert ck.state_dicts[0].tensors == len(ref["state_dict"])
    ranked = [r.path for r in ck.state_dicts]
    assert ("optimizer_states", "0", "state", "0") in ranked
    assert ranked.index(("state_dict",)) < ranked.index(("optimizer_states", "0", "state", "0"))
    assert_same(ck, ("state_dict",), ref["state_dict"])
    # optimizer slots and everything else stay readable
    assert_same(ck, ("optimizer_states", "0", "state", "0"), ref["optimizer_states"][0]["state"][0])
    assert ck.get(("epoch",)) == 3 and ck.get(("global_step",)) == 120
    assert ck.get(("hyper_parameters",)) == {"lr": 1e-3, "layers": [3, 4, 2], "name": "mlp"}
    assert ck.get(("optimizer_states", "0", "param_groups", "0", "lr")) == ref["optimizer_states"][0][
        "param_groups"][0]["lr"]
    assert ck.get(("lr_schedulers", "0", "step_size")) == 2
    # every tensor of the file, in file order, with its full path
    flat = []

    def walk(obj, path):
        if isinstance(obj, torch.Tensor):
            flat.append(path)
        elif isinstance(obj, dict):
            for k, v in obj.items():
                walk(v, path + (str(k),))
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                walk(v, path + (str(i),))
    walk(ref, ())
    assert [e.path for e in ck.entries] == flat


class HParams:
    """Stands for OmegaConf's DictConfig: a class weights_only=True rejects."""

    def __init__(self, **kw):
        self.__dict__.update(kw)


def test_lightning_with_foreign_objects(tmp_path, mlp_sd):
    path = save_torch({"state_dict": mlp_sd, "hyper_parameters": HParams(lr=0.1, depth=[1, 2])}, tmp_path / "h.ckpt")
    with pytest.raises(Exception):
        torch.load(path, weights_only=True)
    ck = open_checkpoint(path)
    assert f"{__name__}.HParams" in ck.references
    hp = ck.get(("hyper_parameters",))
    assert hp.global_name == f"{__name__}.HParams" and hp.state_dict() == {"lr": 0.1, "depth": [1, 2]}
    assert ck.get(("hyper_parameters", "lr")) == 0.1
    assert_same(ck, ("state_dict",), torch.load(path, weights_only=False)["state_dict"])


def test_model_ema_optimizer(tmp_path):
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    opt, _ = _trained(model)
    ema = {k: v * 0.5 for k, v in model.state_dict().items()}
    path = save_torch({"optimizer": opt.state_dict(), "ema": ema, "model": model.state_dict(), "iter": 9},
                      tmp_path / "ck.pth")
    ref = torch.load(path, weights_only=True)
    ck = open_checkpoint(path)
    assert [r.path for r in ck.state_dicts][:2] == [("model",), ("ema",)]
    assert ck.default_state_dict == ("model",)
    assert_same(ck, ("model",), ref["model"])
    assert_same(ck, ("ema",), ref["ema"])
    assert ck.resolve_entry("ema") == ("ema",) and ck.resolve_entry(None) == ("model",)
    lo = ck.load_object("model", device="cpu")
    assert list(lo) == list(ref["model"]) and all(torch.equal(lo[k], ref["model"][k]) for k in lo)


def test_load_object_keeps_metadata(tmp_path, mlp_sd):
    path = save_torch({"model": mlp_sd}, tmp_path / "m.pt")
    ck = open_checkpoint(path)
    ref = torch.load(path, weights_only=True)["model"]
    for device in ("meta", "cpu"):
        obj = ck.load_object(None, device=device)
        assert obj._metadata == ref._metadata
        assert all(v.device.type == device for v in obj.values())
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    model.load_state_dict(ck.load_object(None, device="cpu"))
    assert torch.equal(model[1].running_mean, ref["1.running_mean"])


# ---- torch.save(model) -------------------------------------------------------------------------------------------

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5))
        self.head = nn.Linear(5, 5)
        self.tied = nn.Linear(5, 5)
        self.tied.weight = self.head.weight
        self.scale = nn.Parameter(torch.tensor(2.0))
        self.register_buffer("table", torch.arange(4.0))
        self.register_buffer("scratch", torch.ones(7), persistent=False)


@pytest.fixture
def main_net(monkeypatch):
    """``Net`` as if defined in a script (``__main__.Net``), the way most ``torch.save(model)`` files are made."""
    main = sys.modules["__main__"]
    monkeypatch.setattr(Net, "__module__", "__main__")
    monkeypatch.setattr(main, "Net", Net, raising=False)
    torch.manual_seed(3)
    net = Net()
    net.enc(torch.randn(4, 3))
    return net


@pytest.mark.filterwarnings("ignore:Couldn't retrieve source code")  # legacy save of a class it cannot find
@pytest.mark.parametrize("legacy", [False, True])
def test_whole_pickled_module(tmp_path, main_net, legacy):
    path = save_torch(main_net, tmp_path / "model.pt", legacy=legacy)
    ref_model = torch.load(path, weights_only=False)
    ref = ref_model.state_dict()
    ck = open_checkpoint(path)
    assert "__main__.Net" in ck.references
    assert "torch.nn.modules.batchnorm.BatchNorm1d" in ck.references
    assert ck.default_state_dict == ()
    assert_same(ck, (), ref)  # parameters and persistent buffers, in state_dict() order
    infos = ck.state_dict_infos()
    assert "scratch" not in infos  # non-persistent: state_dict() leaves it out
    root = ck.get(())
    assert isinstance(root, RecoveredModule) and "scratch" in root.non_persistent
    assert infos["enc.0.weight"].kind == "parameter" and infos["scale"].kind == "parameter"
    assert infos["enc.1.running_mean"].kind == "buffer" and infos["table"].kind == "buffer"
    assert infos["enc.1.num_batches_tracked"].kind == "buffer"
    # tied weights: two keys, one storage
    assert infos["head.weight"].location.storage_key == infos["tied.weight"].location.storage_key
    classes = ck.module_classes()
    assert classes[""].qualname == "__main__.Net"
    assert classes["enc"].class_name == "Sequential" and classes["enc.1"].class_name == "BatchNorm1d"
    assert ck.load_object(None, device="meta")["head.weight"].shape == (5, 5)


def test_module_inside_dict(tmp_path, main_net):
    path = save_torch({"net": main_net, "epoch": 1, "opt": {"lr": 0.1}}, tmp_path / "m.pt")
    ck = open_checkpoint(path)
    assert ck.default_state_dict == ("net",)
    assert_same(ck, ("net",), torch.load(path, weights_only=False)["net"].state_dict())


# ---- torch.distributed.checkpoint --------------------------------------------------------------------------------

def _dcp_save(state_dict, folder, **kw):
    import torch.distributed.checkpoint as dcp
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "torch.distributed is disabled ... assuming the intent is to save in a single process"
        dcp.save(state_dict, checkpoint_id=str(folder), no_dist=True, **kw)


def _dcp_load(template, folder):
    import torch.distributed.checkpoint as dcp
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.load(template, checkpoint_id=str(folder), no_dist=True)
    return template


def test_dcp_folder(tmp_path, mlp_sd):
    sd = {"model": OrderedDict((k, v.clone()) for k, v in mlp_sd.items()),
          "extra": {"dtypes": OrderedDict((k, v) for k, v in all_dtype_tensors().items()
                                          if not k.startswith("t.uint") and "fnuz" not in k)},
          "step": 17, "sched": {"lr": 0.01, "milestones": [1, 2]}}
    folder = tmp_path / "dcp"
    _dcp_save(sd, folder)
    assert (folder / ".metadata").is_file() and list(folder.glob("*.distcp"))
    ck = open_checkpoint(folder)
    assert ck.format == "torch-dcp"
    assert ck.references == []  # torch's own metadata classes are not news
    assert ck.default_state_dict == ("model",)
    template = {"model": {k: torch.zeros_like(v) for k, v in mlp_sd.items()},
                "extra": {"dtypes": {k: torch.zeros_like(v) for k, v in sd["extra"]["dtypes"].items()}}}
    ref = _dcp_load(template, folder)
    assert_same(ck, ("model",), ref["model"])
    assert_same(ck, ("extra", "dtypes"), ref["extra"]["dtypes"], check_order=False)
    assert ck.get(("step",)) == 17
    assert ck.get(("sched", "lr")) == 0.01 and ck.get(("sched", "milestones")) == [1, 2]
    # the .metadata alone is enough to list: tensor values are read only on demand
    info = ck.state_dict_infos("model")["0.weight"]
    assert info.location.file.endswith(".distcp") and info.location.offset is not None
    assert open_checkpoint(folder / ".metadata").format == "torch-dcp"


def test_dcp_lists_without_reading_data(tmp_path, mlp_sd):
    folder = tmp_path / "dcp"
    _dcp_save({"model": dict(mlp_sd)}, folder)
    for f in folder.glob("*.distcp"):  # scramble the data files: listing must not notice, reading must
        f.write_bytes(b"\0" * f.stat().st_size)
    ck = open_checkpoint(folder)
    assert set(ck.state_dict_infos()) == set(mlp_sd)
    with pytest.raises(CorruptFileError):
        ck.read_key("0.weight")


def test_dcp_safetensors_serialization(tmp_path, mlp_sd):
    from torch.distributed.checkpoint.filesystem import FileSystemWriter, SerializationFormat
    folder = tmp_path / "dcp_st"
    import torch.distributed.checkpoint as dcp
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({"model": dict(mlp_sd), "step": 3}, no_dist=True,
                 storage_writer=FileSystemWriter(str(folder), serialization_format=SerializationFormat.SAFETENSORS))
    ck = open_checkpoint(folder)
    assert ck.get(("step",)) == 3
    assert_same(ck, ("model",), mlp_sd, check_order=False)


def test_dcp_tensor_in_several_chunks(tmp_path):
    """A ShardedTensor with two local shards on one rank: DCP writes two chunks of one tensor."""
    import torch.distributed as dist
    from torch.distributed._shard.sharded_tensor import Shard, ShardMetadata, init_from_local_shards
    import torch.distributed.checkpoint as dcp
    full = torch.arange(42, dtype=torch.float32).reshape(7, 6)
    folder = tmp_path / "chunks"
    store_file = tempfile.mktemp(dir=tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dist.init_process_group("gloo", store=dist.FileStore(store_file, 1), rank=0, world_size=1)
        try:
            shards = [Shard(full[0:3].clone(), ShardMetadata([0, 0], [3, 6], "rank:0/cpu")),
                      Shard(full[3:7].clone(), ShardMetadata([3, 0], [4, 6], "rank:0/cpu"))]
            st = init_from_local_shards(shards, 7, 6)
            dcp.save({"w": st, "b": torch.ones(3)}, checkpoint_id=str(folder))
        finally:
            dist.destroy_process_group()
    ck = open_checkpoint(folder)
    info = ck.state_dict_infos()["w"]
    assert info.shape == (7, 6) and info.dtype == "float32"
    from explorer.core.loaders.dcp import DcpSource
    src = ck.record(("w",)).storage.source
    assert isinstance(src, DcpSource) and len(src.chunks["w"]) == 2
    assert torch.equal(ck.read(("w",)), full)
    assert torch.equal(ck.read(("b",)), torch.ones(3))


def test_dcp_metadata_is_not_executed(tmp_path, mlp_sd):
    folder = tmp_path / "dcp"
    _dcp_save({"model": dict(mlp_sd)}, folder)
    (folder / ".metadata").write_bytes(b"\x80\x04cos\nsystem\nX\x04\x00\x00\x00true\x85R.")
    with pytest.raises(CorruptFileError, match="not torch.distributed.checkpoint metadata"):
        open_checkpoint(folder)


# ---- reading one value costs that value's bytes ------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["zip", "legacy", "safetensors"])
def test_read_maps_only_the_tensors_storage(tmp_path, fmt):
    big = torch.arange(1 << 18, dtype=torch.float32)   # 1 MiB
    small = torch.arange(10, dtype=torch.int64)
    path = tmp_path / ("m.safetensors" if fmt == "safetensors" else "m.pt")
    if fmt == "safetensors":
        save_file({"big": big, "small": small}, path)
    else:
        save_torch({"big": big, "small": small}, path, legacy=fmt == "legacy")
    ck = open_checkpoint(path)
    t = ck.read_key("small")
    assert torch.equal(t, small)
    assert t.untyped_storage().nbytes() == small.numel() * 8  # a map of this storage, not of the file
    # the bytes of ``big`` are never looked at: scramble them on disk, ``small`` still reads right
    info = ck.state_dict_infos()["big"]
    file, offset, length = ck.record(info.path).storage.source.region(ck.record(info.path).storage)
    with open(file, "r+b") as f:
        f.seek(offset)
        f.write(b"\xff" * length)
    assert torch.equal(open_checkpoint(path).read_key("small"), small)
    # and reads are private: writing into a read tensor never changes the file
    t2 = open_checkpoint(path).read_key("small")
    t2.fill_(0)
    assert torch.equal(open_checkpoint(path).read_key("small"), small)


def test_dcp_model_and_optimizer(tmp_path):
    """The usual DCP training checkpoint: get_state_dict(model, optim) under 'model' and 'optim'."""
    from torch.distributed.checkpoint.state_dict import get_state_dict
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    opt, _ = _trained(model)
    msd, osd = get_state_dict(model, opt)
    folder = tmp_path / "train"
    _dcp_save({"model": msd, "optim": osd, "epoch": 3}, folder)
    ck = open_checkpoint(folder)
    assert ck.default_state_dict == ("model",)
    assert_same(ck, ("model",), model.state_dict())
    assert_same(ck, ("optim", "state", "0.weight"), osd["state"]["0.weight"], check_order=False)
    assert ck.get(("optim", "param_groups", "0", "lr")) == osd["param_groups"][0]["lr"]
    assert ck.get(("epoch",)) == 3


@pytest.mark.parametrize("fmt", ["zip", "safetensors"])
def test_many_live_tensors_share_one_map(tmp_path, fmt):
    """Holding every tensor of a file costs one file descriptor and one mapping, not one per tensor (EMFILE)."""
    sd = OrderedDict((f"t{i}", torch.full((3,), float(i))) for i in range(3000))
    path = tmp_path / ("m.safetensors" if fmt == "safetensors" else "m.pt")
    save_file(sd, path) if fmt == "safetensors" else torch.save(sd, path)
    fds = lambda: len(os.listdir("/proc/self/fd"))  # noqa: E731
    before = fds()
    obj = open_checkpoint(path).load_object(None, device="cpu")
    assert fds() - before <= 2
    assert len(obj) == 3000 and all(torch.equal(obj[k], v) for k, v in sd.items())
