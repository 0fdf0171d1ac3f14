"""Remap suggestions with previews, export and snippets (explorer.core.remap), checked against torch's own load."""
from __future__ import annotations

import copy
from collections import OrderedDict

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from explorer.core.demo_models import ModelA, ModelB, MyBatchNormModel
from explorer.core.loaders import open_checkpoint
from explorer.core.remap.export import apply_remap
from explorer.core.remap.rules import Remap
from explorer.core.simulate.run import simulate_load
from tests.core.test_simulate_misc import ddp_checkpoint, trained_bn


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "model."])
def test_strip_prefix_suggestion_preview_export_and_snippet(tmp_path, prefix):
    src, path = ddp_checkpoint(tmp_path, prefix)
    model = trained_bn(0)
    ck = open_checkpoint(path)
    rep = simulate_load(model, ck)
    assert rep.raises and rep.suggestions
    best = rep.suggestions[0]
    assert best.remap.kind == "strip_prefix" and best.remap.old == prefix
    assert best.preview_text() == "with this applied: 0 missing, 0 unexpected, 0 mismatched"
    for ext in (".pt", ".safetensors"):
        out = tmp_path / f"fixed{ext}"
        apply_remap(ck, best.remap, out, entry=None)
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
        rep2 = simulate_load(model, open_checkpoint(out))
        assert not rep2.raises and rep2.missing_keys == [] and rep2.unexpected_keys == []
        real = copy.deepcopy(model)
        real.load_state_dict(torch.load(out, weights_only=True) if ext == ".pt" else load_file(str(out)))
        for k, v in src.state_dict().items():
            assert torch.equal(real.state_dict()[k], v)
    # the snippet does what the preview says
    real = copy.deepcopy(model)
    ns = {"model": real}
    exec(best.snippet, ns)
    assert torch.equal(real.bn.running_var, src.bn.running_var)


def test_add_and_replace_prefix_and_metadata(tmp_path):
    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = MyBatchNormModel()

    src = trained_bn(4)
    sd = src.state_dict()
    del sd["bn.num_batches_tracked"]   # fine only if the BatchNorm version survives the remap (it must not)
    path = tmp_path / "plain.pt"
    torch.save(sd, path)
    model = Wrapped()
    rep = simulate_load(model, open_checkpoint(path), strict=True)
    kinds = [(s.remap.kind, s.remap.new) for s in rep.suggestions]
    assert ("add_prefix", "backbone.") in kinds
    s = rep.suggestions[kinds.index(("add_prefix", "backbone."))]
    # _metadata is remapped with the keys: version 2 survives, so num_batches_tracked is still required
    assert s.preview["missing_keys"] == ["backbone.bn.num_batches_tracked"]
    real = copy.deepcopy(model)
    ns = {"model": real}
    with pytest.raises(RuntimeError, match="backbone.bn.num_batches_tracked"):
        exec(s.snippet, ns)
    # replace prefix: encoder.* -> backbone.*
    sd2 = OrderedDict(("encoder." + k, v) for k, v in src.state_dict().items())
    path2 = tmp_path / "enc.safetensors"
    save_file(dict(sd2), str(path2))
    rep = simulate_load(model, open_checkpoint(path2))
    best = rep.suggestions[0]
    assert best.remap.kind == "replace_prefix" and (best.remap.old, best.remap.new) == ("encoder.", "backbone.")
    assert best.preview["missing"] == best.preview["unexpected"] == best.preview["mismatched"] == 0
    real = copy.deepcopy(model)
    exec(best.snippet, {"model": real})
    assert torch.equal(real.backbone.linear.weight, src.linear.weight)


def test_rename_suggestions_typo_and_order(tmp_path):
    model = nn.Sequential(OrderedDict(conv=nn.Conv1d(2, 3, 1), norm=nn.BatchNorm1d(3), fc=nn.Linear(3, 2)))
    torch.manual_seed(5)
    src = nn.Sequential(OrderedDict(conv=nn.Conv1d(2, 3, 1), nrom=nn.BatchNorm1d(3), head=nn.Linear(3, 2)))
    path = tmp_path / "typo.safetensors"
    save_file(dict(src.state_dict()), str(path))
    rep = simulate_load(model, open_checkpoint(path))
    best = rep.suggestions[0]
    assert best.remap.kind in ("rename", "chain")
    assert best.remap.new_key("nrom.weight") == "norm.weight" and best.remap.new_key("head.bias") == "fc.bias"
    assert best.remap.new_key("nrom.num_batches_tracked") == "norm.num_batches_tracked"
    assert best.preview_text() == "with this applied: 0 missing, 0 unexpected, 0 mismatched"
    out = tmp_path / "fixed.safetensors"
    apply_remap(open_checkpoint(path), best.remap, out)
    real = copy.deepcopy(model)
    real.load_state_dict(load_file(str(out)))
    assert torch.equal(real.fc.weight, src.head.weight)


def test_entry_suggestion(tmp_path):
    model = ModelA()
    path = tmp_path / "nested.pt"
    torch.save({"state_dict": ModelB().state_dict(), "ema": ModelA().state_dict()}, path)
    rep = simulate_load(model, open_checkpoint(path), entry="state_dict")
    kinds = {s.remap.kind: s for s in rep.suggestions}
    assert "entry" in kinds and kinds["entry"].remap.entry == ("ema",)
    assert "['ema']" in kinds["entry"].snippet
    assert kinds["entry"].preview["missing"] == 0


def test_apply_remap_refuses_to_overwrite_source(tmp_path):
    path = tmp_path / "x.safetensors"
    save_file({"module.w": torch.ones(2)}, str(path))
    from explorer.errors import RemapError
    with pytest.raises(RemapError):
        apply_remap(open_checkpoint(path), Remap("strip_prefix", old="module."), path)
    assert load_file(str(path))["module.w"].tolist() == [1.0, 1.0]


@pytest.mark.parametrize("layout", ["index", "folder"])
def test_apply_remap_never_replaces_a_file_of_a_sharded_checkpoint(tmp_path, layout):
    """The fix of a sharded checkpoint written over one of its own shards (or its index) would destroy the
    checkpoint it was read from: refused, every file unchanged; a new file beside the shards is written."""
    import json
    from explorer.errors import RemapError
    folder = tmp_path / "ck"
    folder.mkdir()
    save_file({"module.w": torch.ones(2)}, str(folder / "model-00001-of-00002.safetensors"))
    save_file({"module.b": torch.zeros(2)}, str(folder / "model-00002-of-00002.safetensors"))
    if layout == "index":
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": {
            "module.w": "model-00001-of-00002.safetensors", "module.b": "model-00002-of-00002.safetensors"}}))
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    ck = open_checkpoint(folder)
    for name in before:
        with pytest.raises(RemapError, match="refusing to write into the checkpoint"):
            apply_remap(ck, Remap("strip_prefix", old="module."), folder / name)
    # a new file beside the shards: a plain folder reads every checkpoint file in it (the fix would join the
    # checkpoint it fixes: its keys twice); an index names its shards, so a new file is not read
    new = folder / "fixed.safetensors"
    if layout == "folder":
        with pytest.raises(RemapError, match="refusing to write into the checkpoint"):
            apply_remap(ck, Remap("strip_prefix", old="module."), new)
    else:
        apply_remap(ck, Remap("strip_prefix", old="module."), new)
        new.unlink()
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    out = apply_remap(ck, Remap("strip_prefix", old="module."), tmp_path / "fixed.safetensors")
    assert sorted(load_file(str(out))) == ["b", "w"]


def test_module_renamed_everywhere(tmp_path):
    class Block(nn.Module):
        def __init__(self, name):
            super().__init__()
            self.add_module(name, nn.Linear(3, 3))
            self.norm = nn.LayerNorm(3)

    model = nn.Sequential(Block("attn"), Block("attn"))
    torch.manual_seed(3)
    src = nn.Sequential(Block("atn"), Block("atn"))
    path = tmp_path / "renamed.pt"
    torch.save(src.state_dict(), path)
    rep = simulate_load(model, open_checkpoint(path))
    best = rep.suggestions[0]
    assert (best.remap.kind, best.remap.old, best.remap.new) == ("rename_part", "atn", "attn")
    assert best.preview_text() == "with this applied: 0 missing, 0 unexpected, 0 mismatched"
    assert all(s.preview["missing"] + s.preview["unexpected"] <= 4 for s in rep.suggestions)
    real = copy.deepcopy(model)
    exec(best.snippet, {"model": real})
    assert torch.equal(real[1].attn.weight, src[1].atn.weight)


def test_write_fixed_goes_to_a_new_file_only(tmp_path, cli):
    """``--write-fixed`` onto the model's own source file, onto any existing file, or onto a folder: refused in one
    line, nothing replaced (the README: exports go to new files); a new name is written."""
    src = tmp_path / "nets.py"
    src.write_text("import torch.nn as nn\ndef build():\n    return nn.Linear(2, 2)\n")
    path = tmp_path / "ddp.pt"
    torch.save({f"module.{k}": v for k, v in nn.Linear(2, 2).state_dict().items()}, path)
    other = tmp_path / "other.pt"
    other.write_bytes(b"keep me")
    (tmp_path / "folder").mkdir()
    for out, said in ((src, "already exists"), (other, "already exists"), (tmp_path / "folder", "is a folder")):
        before = src.read_bytes(), other.read_bytes()
        r = cli("simulate", "--model", f"{src}:build", "--checkpoint", path, "--write-fixed", out)
        assert r.returncode == 2 and said in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert (src.read_bytes(), other.read_bytes()) == before
    r = cli("simulate", "--model", f"{src}:build", "--checkpoint", path, "--write-fixed", tmp_path / "fixed.pt")
    assert r.returncode == 1 and (tmp_path / "fixed.pt").exists()
