"""A side that is dropped is freed at once, by reference counting, not at the next full collection.

The window replaces sides: with reference cycles (a tree's parent links, a checkpoint holding its own bound method,
a per-file record class holding the file's 10**5 storages, a byte source passing its own method to its base class)
every replaced side lived on -- with its memory maps open -- until Python happened to run a full collection, and
the window grew ~100 MB per re-open of a 50,000-tensor file (issue 15). These tests hold the collector off and check
that nothing of a dropped side survives.
"""
from __future__ import annotations

import gc
import weakref
from contextlib import contextmanager

import torch

from explorer.core.side import open_side
from explorer.core.tree import build_tree
from explorer.session.compare import Comparison, load_side_data


@contextmanager
def no_collector():
    was = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _write(tmp_path):
    from safetensors.torch import save_file
    sd = {f"blocks.{i}.lin.weight": torch.full((3, 2), float(i)) for i in range(50)}
    sd["blocks.0.bn.running_mean"] = torch.zeros(3)
    torch.save(sd, tmp_path / "a.pt")
    save_file(sd, str(tmp_path / "a.safetensors"))
    torch.save({"model": sd, "step": 3}, tmp_path / "nested.pt")
    return [tmp_path / "a.pt", tmp_path / "a.safetensors", tmp_path / "nested.pt"]


def test_a_dropped_checkpoint_and_its_byte_source_are_freed_without_the_collector(tmp_path):
    for path in _write(tmp_path):
        with no_collector():
            side = open_side(str(path))
            infos = side.state_dict_infos(side.default_state_dict)
            assert len(infos) == 51
            side.read_key("blocks.7.lin.weight")       # maps the file
            source = side.record(side.resolve_entry(None) + ("blocks.7.lin.weight",)).storage.source
            refs = [weakref.ref(side), weakref.ref(source), weakref.ref(source.maps)]
            del side, infos, source
            alive = [r() for r in refs if r() is not None]
            assert not alive, f"{path.name}: {alive} outlived the side"


def test_a_dropped_tree_and_comparison_are_freed_without_the_collector(tmp_path):
    path = _write(tmp_path)[0]
    with no_collector():
        data = load_side_data(str(path))
        comp = Comparison(data, None)
        tree = build_tree(data.infos)
        leaf = tree.by_key["blocks.3.lin.weight"]
        assert leaf.parent.path == "blocks.3.lin" and leaf.parent.parent.parent.parent is tree.root
        refs = [weakref.ref(tree.root), weakref.ref(leaf), weakref.ref(data.side)]
        del data, comp, tree, leaf
        assert all(r() is None for r in refs)

