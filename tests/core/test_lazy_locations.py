"""Where a tensor's bytes are (``TensorInfo.location``) is made when first read, not when a file is listed: 10**6
Location objects cost ~0.7 s and ~170 MB, and nothing in a listing, comparison or simulation reads one. Read, they say
what torch and safetensors say of the same tensors."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from explorer.core.records import Location, Locations, TensorInfo
from explorer.core.side import open_side
from explorer.session import listing


def _lazy(infos) -> bool:
    return all(type(info._location) in (Locations, type(None)) for info in infos.values())


def test_a_pt_files_locations_are_made_when_read_and_say_what_torch_says(tmp_path):
    base = torch.arange(60, dtype=torch.float32).reshape(6, 10)
    tensors = {"base": base, "row": base[2:4], "col": base[:, 3:5], "t": base.t(), "own": torch.ones(3, dtype=torch.int64),
               "half": torch.zeros(2, 2, dtype=torch.float16)}
    path = tmp_path / "m.pt"
    torch.save(tensors, path)
    infos = open_side(str(path)).state_dict_infos()
    assert _lazy(infos)                                   # nothing made by the listing
    loaded = torch.load(path, weights_only=True)
    keys = {}
    for key, t in loaded.items():
        loc = infos[key].location
        assert type(loc) is Location and loc.file == str(path)
        assert loc.storage_offset == t.storage_offset() and loc.stride == t.stride()
        assert loc.storage_nbytes == t.untyped_storage().nbytes()
        assert loc.record == f"data/{loc.storage_key}"
        keys.setdefault(t.untyped_storage().data_ptr(), set()).add(loc.storage_key)
    assert all(len(k) == 1 for k in keys.values()) and len(keys) == 3   # views share their storage's key
    assert infos["base"].location is infos["base"].location             # made once


def test_a_safetensors_files_locations_point_at_each_tensors_bytes(tmp_path):
    tensors = {f"w{i}": torch.randn(i + 1, 3) for i in range(5)}
    tensors["b"] = torch.arange(7, dtype=torch.int32)
    path = tmp_path / "m.safetensors"
    save_file(tensors, str(path))
    infos = open_side(str(path)).state_dict_infos()
    assert _lazy(infos)
    raw = path.read_bytes()
    for key, t in load_file(str(path)).items():
        loc = infos[key].location
        assert loc.stride == t.stride() and loc.storage_offset == 0 and loc.storage_nbytes == t.numel() * t.element_size()
        got = np.frombuffer(raw, dtype=t.numpy().dtype, count=t.numel(), offset=loc.offset).reshape(tuple(t.shape))
        assert np.array_equal(got, t.numpy())


def test_an_info_with_a_lazy_location_is_equal_hashed_and_pickled_as_one_made_at_once():
    table = Locations(["f.pt", "f.pt"], ["data/0", "data/1"], [None, 64], [8, 16], [0, 2], [(1,), (2, 1)], ["0", "1"])
    lazy = TensorInfo(("sd", "b"), (2, 1), "float32", 8, table, "cpu", "parameter", True, 1)
    eager = TensorInfo(("sd", "b"), (2, 1), "float32", 8, Location("f.pt", "data/1", 64, 16, 2, (2, 1), "1"), "cpu",
                       "parameter", True)
    assert lazy == eager and hash(lazy) == hash(eager) and repr(lazy) == repr(eager)
    assert lazy != TensorInfo(("sd", "b"), (2, 1), "float32", 8, None, "cpu", "parameter", True)
    back = pickle.loads(pickle.dumps(TensorInfo(("sd", "b"), (2, 1), "float32", 8, table, "cpu", "parameter", True, 1)))
    assert back == eager and type(back._location) is Location       # the pickle carries the Location, not the table
    with pytest.raises(TypeError):
        pickle.dumps(table)


def test_a_listing_carries_locations_without_making_them(tmp_path):
    tensors = {"a": torch.ones(4), "v": torch.ones(8)[2:6], "m": torch.empty(3, device="meta"), "z": torch.zeros(2)}
    path = tmp_path / "m.pt"
    torch.save(tensors, path)
    side = open_side(str(path))
    want = side.state_dict_infos()
    got = listing.decode(listing.encode(want))
    assert _lazy(got)
    assert [(k, i.location) for k, i in got.items()] == [(k, i.location) for k, i in want.items()]
    assert got["m"].location is None and got["v"].location.storage_offset == 2
