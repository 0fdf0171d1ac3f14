"""The safetensors header is split a slice at a time (a window's GUI thread runs between slices); the answer must be
the whole header's, checked against the safetensors library itself, whatever falls at a cut."""
from __future__ import annotations

import random

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from explorer.core.loaders import safetensors_reader as S
from explorer.core.side import open_side

NASTY = ["a]},", ']},"z', 'x"y', "q]}", "w\\", "plain.weight", "ü.é", "]},\"]},", "k:{}", '"'] 


@pytest.mark.parametrize("slice_chars", [1, 7, 64, 1000])
def test_sliced_split_equals_the_whole_split_and_the_library(tmp_path, monkeypatch, slice_chars):
    rng = random.Random(slice_chars)
    sd = {}
    for i in range(300):
        key = f"layers.{i}.{rng.choice(NASTY)}{i}"
        sd[key] = torch.full((rng.randint(0, 3), 2), float(i), dtype=rng.choice([torch.float32, torch.bfloat16]))
    path = tmp_path / "nasty.safetensors"
    save_file(sd, str(path))
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        raw = f.read(n)
    text = raw.decode().strip()
    monkeypatch.setattr(S, "SPLIT_SLICE", slice_chars)
    assert S._split_entries(raw) == S._ENTRY.split(text)
    assert S._split_entries(b"\n " + raw + b" \t") == S._ENTRY.split(text)
    side = open_side(str(path))
    infos = side.state_dict_infos(side.default_state_dict)
    with safe_open(str(path), "pt") as lib:
        assert sorted(infos) == sorted(lib.keys())
        for key in lib.keys():
            want = lib.get_tensor(key)
            assert tuple(infos[key].shape) == tuple(want.shape) and infos[key].dtype == str(want.dtype)[6:]
        for key in rng.sample(list(lib.keys()), 20):
            assert torch.equal(side.read_key(key), lib.get_tensor(key))
