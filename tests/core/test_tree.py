"""core/tree.py: dotted keys as a module hierarchy."""
from explorer.core.tree import Tree, build_tree


def test_tree_numeric_order():
    keys = [f"layers.{i}.w" for i in (0, 1, 10, 2)] + ["head.w"]
    tree = build_tree(keys)
    layers = tree.by_path["layers"]
    assert [c.name for c in layers.children] == ["0", "1", "2", "10"]
    assert [c.row for c in layers.children] == [0, 1, 2, 3]
    assert tree.by_key["layers.10.w"].parent.parent is layers


def test_tree_nodes_know_parent_row_and_path():
    tree = Tree(["a.b.w", "a.b.b", "a.c", "d"])
    assert [c.name for c in tree.root.children] == ["a", "d"]
    ab = tree.by_path["a.b"]
    assert ab.parent is tree.by_path["a"] and ab.row == 0 and ab.path == "a.b"
    assert [n.key for n in tree.root.leaves()] == ["a.b.w", "a.b.b", "a.c", "d"]
    assert len(tree) == 4 and not ab.is_leaf and tree.by_key["a.c"].is_leaf


def test_a_key_can_be_a_tensor_and_a_parent():
    tree = Tree(["a", "a.b"])
    node = tree.by_key["a"]
    assert node.is_leaf and [c.name for c in node.children] == ["b"]
