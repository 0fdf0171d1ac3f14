"""Every command's ``--json`` output on fixed fixtures, byte for byte.

The fixtures are built at test time from seeded torch (``torch.save`` and safetensors are deterministic for a given
torch version); the expected outputs live in ``tests/golden/``. A change that alters any command's JSON — a key
renamed, a figure rounded differently, an order changed — fails here and must be deliberate:
``UPDATE_GOLDEN=1 python -m pytest tests/test_json_golden.py`` rewrites the files, and the diff is reviewed.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

GOLDEN = Path(__file__).parent / "golden"

MODEL_PY = '''
import torch.nn as nn

def build(hidden=8):
    return nn.Sequential(nn.Conv2d(3, hidden, 3), nn.BatchNorm2d(hidden), nn.ReLU(), nn.Flatten(),
                         nn.Linear(hidden, 4), nn.LayerNorm(4))
'''


def _safetensors(path: Path, tensors: dict, metadata: dict | None = None) -> None:
    """A safetensors file written by hand (the format is a JSON header and raw little-endian bytes)."""
    names = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64"}
    header, blobs, offset = {}, [], 0
    for key, t in tensors.items():
        raw = t.contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[key] = {"dtype": names[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    if metadata:
        header["__metadata__"] = metadata
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def _build(root: Path) -> None:
    import torch.nn as nn
    (root / "model.py").write_text(MODEL_PY)
    g = torch.Generator().manual_seed(0)
    ns = {}
    exec(compile(MODEL_PY, "model.py", "exec"), ns)
    torch.manual_seed(0)
    model = ns["build"]()
    sd = model.state_dict()
    torch.save(sd, root / "a.pt")
    # b: one value changed, one NaN, a BatchNorm statistic moved, a key renamed, an extra key, a dtype cast
    b = {k: v.clone() for k, v in sd.items()}
    b["0.weight"][0, 0, 0, 0] += 0.5
    b["4.weight"][1, 2] = float("nan")
    b["1.running_mean"] += torch.randn(b["1.running_mean"].shape, generator=g)
    b["5.weight"] = b["5.weight"].half()
    b["extra.bias"] = torch.arange(4, dtype=torch.float32)
    b["module.4.bias"] = b.pop("4.bias")
    torch.save({"state_dict": b, "epoch": 3, "note": "golden"}, root / "b.pt")
    _safetensors(root / "a.safetensors", {k: v for k, v in sd.items() if v.dtype != torch.int64},
                 {"format": "pt"})
    _safetensors(root / "b.safetensors", {"0.weight": b["0.weight"], "4.weight": b["4.weight"],
                                          "5.weight": b["5.weight"], "bf": torch.ones(3, dtype=torch.bfloat16)})
    # a sharded checkpoint with its index
    shard = root / "sharded"
    shard.mkdir()
    keys = [k for k in sd if sd[k].dtype != torch.int64]
    first, second = keys[: len(keys) // 2], keys[len(keys) // 2:]
    _safetensors(shard / "model-00001-of-00002.safetensors", {k: sd[k] for k in first})
    _safetensors(shard / "model-00002-of-00002.safetensors", {k: sd[k] for k in second})
    weight_map = {k: "model-00001-of-00002.safetensors" for k in first}
    weight_map.update({k: "model-00002-of-00002.safetensors" for k in second})
    (shard / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    # an optimizer checkpoint with non-tensor values
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 3, 3, generator=g)).sum().backward()
    opt.step()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": 1}, root / "train.pt")
    del nn


COMMANDS = {
    "inspect_a_pt": ["inspect", "a.pt"],
    "inspect_b_pt": ["inspect", "b.pt"],
    "inspect_train_pt": ["inspect", "train.pt"],
    "inspect_flat_b_pt": ["inspect", "b.pt", "--flat"],
    "inspect_a_safetensors": ["inspect", "a.safetensors"],
    "inspect_sharded": ["inspect", "sharded"],
    "inspect_model": ["inspect", "model.py:build"],
    "stats_weight": ["stats", "b.pt", "state_dict/4.weight"],
    "stats_bn": ["stats", "a.pt", "1.running_var"],
    "stats_bf16": ["stats", "b.safetensors", "bf"],
    "diff_pt": ["diff", "a.pt", "b.pt"],
    "diff_safetensors": ["diff", "a.safetensors", "b.safetensors"],
    "diff_sharded": ["diff", "a.safetensors", "sharded"],
    "diff_model": ["diff", "model.py:build", "a.pt"],
    "simulate_a": ["simulate", "--model", "model.py:build", "--checkpoint", "a.pt"],
    "simulate_b": ["simulate", "--model", "model.py:build", "--checkpoint", "b.pt", "--all"],
    "simulate_b_nonstrict": ["simulate", "--model", "model.py:build", "--checkpoint", "b.pt", "--no-strict"],
    "simulate_b_assign": ["simulate", "--model", "model.py:build", "--checkpoint", "b.pt", "--no-strict", "--assign"],
    "simulate_sharded": ["simulate", "--model", "model.py:build(hidden=8)", "--checkpoint", "sharded"],
    "simulate_train": ["simulate", "--model", "model.py:build", "--checkpoint", "train.pt", "--entry", "model"],
    "demo_batchnorm": ["demo", "batchnorm"],
}


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    root = tmp_path_factory.mktemp("golden")
    _build(root)
    return root


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_json_output_unchanged(name, fixtures, capsys, monkeypatch):
    from explorer.cli import main
    monkeypatch.chdir(fixtures)
    capsys.readouterr()
    code = main([*COMMANDS[name], "--json"])
    out, err = capsys.readouterr()
    got = f"exit {code}\n{out}"
    path = GOLDEN / f"{name}.txt"
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(got)
    assert path.exists(), f"no golden output for {name}; run with UPDATE_GOLDEN=1 and review it"
    assert got == path.read_text(), f"{name}: --json output changed (stderr: {err[:500]})"
