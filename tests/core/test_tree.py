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


def _reference(keys):
    """The tree the keys describe, built the plain way: each key walked part by part from the root, children in
    first-seen order, then numeric siblings sorted numerically in the slots numeric names held."""
    root = {"children": {}, "key": None}
    for key in keys:
        node = root
        for part in key.split("."):
            node = node["children"].setdefault(part, {"children": {}, "key": None})
        node["key"] = key

    def rows(node, path):
        names = list(node["children"])
        numeric = iter(sorted((n for n in names if n.isdigit()), key=int))
        if sum(n.isdigit() for n in names) >= 2:
            names = [next(numeric) if n.isdigit() else n for n in names]
        out = []
        for row, name in enumerate(names):
            child = node["children"][name]
            here = f"{path}.{name}" if path else name
            out.append((here, name, row, child["key"], rows(child, here)))
        return out
    return rows(root, "")


def _shape(node):
    return [(c.path, c.name, c.row, c.key, _shape(c)) for c in node.children]


def test_tree_equals_the_part_by_part_walk_for_odd_keys():
    import random
    rnd = random.Random(7)
    parts = ["a", "b", "0", "1", "2", "10", "", "layers", "w"]
    for _ in range(300):
        keys = list(dict.fromkeys(".".join(rnd.choice(parts) for _ in range(rnd.randint(1, 4)))
                                  for _ in range(rnd.randint(1, 30))))
        tree = Tree(keys)
        assert _shape(tree.root) == _reference(keys), keys
        assert set(tree.by_key) == set(keys) and all(tree.by_key[k].key == k for k in keys)
