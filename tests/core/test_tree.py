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

    def rows(node, path, depth=0):
        names = list(node["children"])
        numeric = iter(sorted((n for n in names if n.isdigit()), key=int))
        if sum(n.isdigit() for n in names) >= 2:
            names = [next(numeric) if n.isdigit() else n for n in names]
        out = []
        for row, name in enumerate(names):
            child = node["children"][name]
            here = f"{path}.{name}" if depth else name      # the parts joined by dots: a leaf's path is its key
            out.append((here, name, row, child["key"], rows(child, here, depth + 1)))
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


def test_a_tree_makes_a_level_only_when_asked_and_the_same_tree_whatever_the_order():
    """Levels are made on demand (``core/tree.py``): nothing below the root exists until asked for; keys looked up
    in any order, before or after a walk, give the tree the part-by-part walk gives."""
    import random
    rnd = random.Random(11)
    parts = ["a", "b", "0", "1", "2", "10", "", "w"]
    for _ in range(200):
        keys = list(dict.fromkeys(".".join(rnd.choice(parts) for _ in range(rnd.randint(1, 5)))
                                  for _ in range(rnd.randint(1, 40))))
        tree = Tree(keys)
        assert not tree.root.is_built
        probe = rnd.sample(keys, k=min(len(keys), 5))
        for key in probe:               # a lookup makes the levels on its way only
            assert tree.by_key[key].key == key
        built = list(tree.root.walk_built())
        assert all(n.parent is None or n.parent.is_built for n in built)
        assert _shape(tree.root) == _reference(keys), keys
        for path, node in tree.by_path.items():
            assert tree.by_path[path] is node or (path == "" and node.name == "")


def test_prebuild_makes_exactly_the_long_levels():
    """``prebuild(above)`` makes every level with more than ``above`` keys below (the work kept off the GUI thread),
    and no other: a level left to make later is a pass over at most ``above`` keys."""
    keys = [f"blocks.{i // 10}.sub.{i % 10}.weight" for i in range(5000)] + ["head.w", "head.b"]
    tree = Tree(keys).prebuild(100)
    built = {n.path for n in tree.root.walk_built() if n.is_built}
    assert built == {"", "blocks"}
    unbuilt = [n for n in tree.root.walk_built() if not n.is_built]
    assert len(unbuilt) == 500 + 1 and max(len(n.below) for n in unbuilt) == 10     # blocks.N (10 keys), head
    assert _shape(tree.root) == _reference(keys)


def test_levels_where_every_key_shares_the_next_name_are_made_as_any_other():
    """A prefix above every key ("model.", then "model.layers.") is made without a pass over the keys: the same
    nodes, keys and rows as the plain way, also where a key ends at the shared name or one key leaves it."""
    import random
    rng = random.Random(11)
    for trial in range(200):
        keys = [f"model.layers.{rng.randint(0, 12)}.{rng.choice(['w', 'b', 'attn.q', 'attn.k'])}"
                for _ in range(rng.randint(1, 40))]
        if trial % 4 == 1:
            keys.append("model.layers")          # a key ending at the shared name
        if trial % 4 == 2:
            keys.append("model.zz.other")        # one key leaving the second shared name
        if trial % 4 == 3:
            keys.insert(0, "modelx.y")            # ... or the first (same letters, no dot)
        keys = list(dict.fromkeys(keys))
        assert _shape(Tree(keys).root) == _reference(keys), keys


def test_the_shared_name_check_reads_the_keys_a_slice_at_a_time(monkeypatch):
    """The min and max key of a level (10**6 keys below the root) are taken a slice per C call, the lock offered
    between two, and are the keys' min and max."""
    import random

    from explorer.core import gc_pause as G
    from explorer.core import tree as T
    yields = [0]
    monkeypatch.setattr(G, "SLICE", 4)
    monkeypatch.setattr(G, "let_others_run", lambda: yields.__setitem__(0, yields[0] + 1))
    rng = random.Random(5)
    keys = [f"m.{rng.randint(0, 999)}.w" for _ in range(30)]
    assert T._bounds(keys) == (min(keys), max(keys)) and yields[0] == 30 // 4
    assert T._bounds(["a"]) == ("a", "a")
