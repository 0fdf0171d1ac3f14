"""Leaves make no list and no dict of their own (10**6 leaves: 2 * 10**6 objects fewer to allocate and free); a node
gets its own at its first child, and the shared empty ones are never written to."""
from __future__ import annotations

from explorer.core import tree as T


def test_leaves_share_one_empty_children_and_index_and_a_parent_gets_its_own():
    t = T.Tree(["a.x", "a.y", "b", "b.c", "c.0", "c.10", "c.2"])
    leaves = [t.by_key[k] for k in ("a.x", "a.y", "b.c", "c.0")]
    assert all(n.children is T._NO_CHILDREN and n._index is T._NO_INDEX for n in leaves)
    b = t.by_key["b"]                   # a tensor that is also a module: its first child gave it its own
    assert [c.name for c in b.children] == ["c"] and b.child("c") is t.by_key["b.c"]
    assert b._index is not T._NO_INDEX and type(b.children) is list
    assert [c.name for c in t.by_path["c"].children] == ["0", "2", "10"]
    assert t.by_key["a.x"].child("anything") is None and list(t.by_key["a.x"].walk()) == [t.by_key["a.x"]]
    assert T._NO_INDEX == {} and T._NO_CHILDREN == ()
    for node in list(t.root.walk()):
        node.unlink()
    assert t.root.children == () and T._NO_INDEX == {}
