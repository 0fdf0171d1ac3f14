"""Dotted state-dict keys as a module hierarchy: ``layers.0.attn.q_proj.weight`` -> layers / 0 / attn / q_proj / weight.

Children keep first-seen order, except that numeric siblings (``layers.2`` before ``layers.10``) sort numerically.
Every node knows its parent and its row, so a Qt model over it answers ``parent()`` in O(1). The parent link is weak:
a tree holds no reference cycle, so a replaced tree is freed the moment it is dropped, not whenever a full collection
happens to run (the window grew ~100 MB per re-open without it).

**Built a level at a time.** A node makes its children the first time they are asked for, from the keys below it (one
pass over them). A window shows a few hundred rows of a 50,000-key checkpoint's 110,000 nodes: making them all took
~0.25 s of the 0.25 s the whole open may take. :meth:`Tree.prebuild` makes, ahead (in a worker), the levels whose
making would be long -- every node with more than :data:`PREBUILD_ABOVE` keys below it -- so what is left to make on
the GUI thread, when a row is expanded, is a pass over a few thousand keys at most.

A node's ``path`` is its parts joined by dots (``'.'.join(key.split('.')[:depth])``), so for a leaf ``path == key``;
``by_key`` and ``by_path`` find a node by walking those parts down from the root.
"""
from __future__ import annotations

import weakref
from typing import Any, Iterable, Iterator, Mapping

from .gc_pause import slices

_NO_CHILDREN: tuple = ()   # every leaf's children and index, shared: 10**6 leaves make no list and no dict each
_NO_INDEX: dict = {}       # (never written to)

PREBUILD_ABOVE = 2_000     # :meth:`Tree.prebuild` makes the children of every node with more keys than this below


class Node:
    __slots__ = ("name", "_parent", "_children", "row", "key", "data", "_index", "path", "_below", "_start", "_data_of",
                 "__weakref__")

    def __init__(self, name: str, parent: "Node | None" = None, path: str = "", below: list | tuple = (),
                 start: int = 0, data_of: Mapping | None = None):
        self.name = name
        self._parent = None if parent is None else weakref.ref(parent)
        self.row = 0
        self.key: str | None = None     # the full state-dict key for a leaf
        self.data: Any = None            # what the owner attaches (TensorInfo, per-side pair, ...)
        self.path = path                 # dotted path of this node ("" for the root)
        self._below = below              # the keys strictly below this node, in the tree's order
        self._start = start              # where, in each of those keys, this node's children's names begin
        self._data_of = data_of          # key -> data of a leaf (shared by the whole tree), or None
        if below:
            self._children: list[Node] | None = None      # made when first asked for
            self._index: dict[str, Node] = _NO_INDEX
        else:
            self._children = _NO_CHILDREN     # type: ignore[assignment]
            self._index = _NO_INDEX

    @property
    def parent(self) -> "Node | None":
        """The parent node (None for the root, or once the tree it belonged to is gone)."""
        return None if self._parent is None else self._parent()

    @property
    def children(self) -> "list[Node]":
        children = self._children
        if children is None:
            children = self._make_children()
        return children

    @property
    def has_children(self) -> bool:
        """Are there nodes below (without making them)?"""
        return bool(self._below)

    @property
    def is_built(self) -> bool:
        """Have the children been made?"""
        return self._children is not None

    @property
    def below(self) -> "list[str] | tuple":
        """The keys strictly below this node (its subtree's tensors, itself excluded), in the tree's order."""
        return self._below

    @property
    def is_leaf(self) -> bool:
        return self.key is not None

    def child(self, name: str) -> "Node | None":
        if self._children is None:
            self._make_children()
        return self._index.get(name)

    def _make_children(self) -> "list[Node]":
        """One pass over the keys below: group them by their next part, first-seen order; numeric names sorted."""
        start = self._start
        groups: dict[str, list] = {}     # name -> [the key ending there or None, the keys going on below, or None]
        get = groups.get
        below = self._below
        if len(below) > 1:   # one name for every key (a "model." prefix): one child, all the keys below it
            first, last = _bounds(below)
            end = first.find(".", start)
            if end >= 0 and last.startswith(first[:end + 1]):
                groups[first[start:end]] = [None, below]
                below = ()
        for key in below:
            end = key.find(".", start)
            if end < 0:
                name = key[start:]
                group = get(name)
                if group is None:
                    groups[name] = [key, None]
                else:
                    group[0] = key
            else:
                name = key[start:end]
                group = get(name)
                if group is None:
                    groups[name] = [None, [key]]
                elif group[1] is None:
                    group[1] = [key]
                else:
                    group[1].append(key)
        names = list(groups)
        if sum(map(str.isdigit, names)) >= 2:
            names = _numeric_order(names)
        data_of = self._data_of
        prefix = f"{self.path}." if self._parent is not None else ""   # the root's children: no leading dot
        children: list[Node] = []
        index: dict[str, Node] = {}
        for row, name in enumerate(names):
            key, sub = groups[name]
            node = Node(name, self, prefix + name, sub or (), start + len(name) + 1, data_of)
            node.row = row
            if key is not None:
                node.key = key
                if data_of is not None:
                    node.data = data_of.get(key)
            children.append(node)
            index[name] = node
        self._children, self._index = children, index
        return children

    def unlink(self) -> None:
        """Forget the children (taking a dropped tree apart a slice at a time: ``session/dispose.py``)."""
        self._children = _NO_CHILDREN     # type: ignore[assignment]
        self._index = _NO_INDEX
        self._below = ()
        self._data_of = None

    def walk(self) -> Iterator["Node"]:
        """Pre-order, iteratively (trees can be 100k nodes deep in width, and deep in nesting); makes every level."""
        stack = [self]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(reversed(node.children))

    def walk_built(self) -> Iterator["Node"]:
        """Pre-order over the nodes made so far (making none)."""
        stack = [self]
        while stack:
            node = stack.pop()
            yield node
            if node._children:
                stack.extend(reversed(node._children))

    def leaves(self) -> Iterator["Node"]:
        return (n for n in self.walk() if n.is_leaf)

    def __repr__(self):
        return f"Node({self.path!r}{', leaf' if self.is_leaf else ''})"


def _bounds(keys: list) -> tuple[str, str]:
    """``(min(keys), max(keys))``, a slice per C call (10**6 keys: the lock offered between two)."""
    lows, highs = [], []
    for a, b in slices(len(keys)):
        part = keys[a:b]
        lows.append(min(part))
        highs.append(max(part))
    return min(lows), max(highs)


def _numeric_order(names: list[str]) -> list[str]:
    """Stable: numeric names sorted among themselves, in the slots numeric names had."""
    numeric = iter(sorted((n for n in names if n.isdigit()), key=int))
    return [next(numeric) if n.isdigit() else n for n in names]


class Tree:
    """A tree over an ordered set of dotted keys, with key -> node and path -> node lookups.

    ``data``: key -> what a leaf carries (``node.data``), looked up when the leaf is made.
    """

    def __init__(self, keys: Iterable[str] = (), data: Mapping | None = None):
        self._keys: Mapping = keys if isinstance(keys, dict) else dict.fromkeys(keys)
        self.root = Node("", None, "", list(self._keys), 0, data)
        self.by_key = ByKey(self.root, self._keys)
        self.by_path = ByPath(self.root)

    def prebuild(self, above: int = PREBUILD_ABOVE) -> "Tree":
        """Make the children of every node with more than ``above`` keys below it (breadth first): call it where time
        is cheap (a worker), so no level made later (on the GUI thread) takes a pass over more keys than that."""
        level = [self.root]
        while level:
            nxt = []
            for node in level:
                if len(node._below) > above:
                    nxt += node.children
            level = nxt
        return self

    def __len__(self) -> int:
        return len(self._keys)

    def forget_keys(self) -> None:
        """Drop the tree's reference to its key set (the owner's dict: ``session/dispose.py`` takes that apart)."""
        self._keys = self.by_key._keys = {}


def _walk_to(root: Node, parts: list[str]) -> "Node | None":
    node: Node | None = root
    for part in parts:
        node = node.child(part)       # type: ignore[union-attr]
        if node is None:
            return None
    return node


class ByKey(Mapping):
    """key -> leaf node, making the levels on the way down when first asked. Holds the root and the key set, not the
    tree (no cycle)."""

    __slots__ = ("_root", "_keys")

    def __init__(self, root: Node, keys: Mapping):
        self._root, self._keys = root, keys

    def __getitem__(self, key: str) -> Node:
        if key not in self._keys:
            raise KeyError(key)
        node = _walk_to(self._root, key.split("."))     # a key "" is the root's child named ""
        if node is None or node.key != key:     # cannot happen: each key's parts lead to its leaf
            raise KeyError(key)
        return node

    def __contains__(self, key) -> bool:
        return key in self._keys

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


class ByPath(Mapping):
    """dotted path -> node ("" is the root), making the levels on the way down; iterating makes the whole tree."""

    __slots__ = ("_root",)

    def __init__(self, root: Node):
        self._root = root

    def __getitem__(self, path: str) -> Node:
        node = _walk_to(self._root, path.split(".") if path else ()) if isinstance(path, str) else None
        if node is None:
            raise KeyError(path)
        return node

    def __contains__(self, path) -> bool:
        return isinstance(path, str) and _walk_to(self._root, path.split(".") if path else ()) is not None

    def __iter__(self) -> Iterator[str]:
        return (path for path, _ in self.items())

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def items(self) -> Iterator[tuple[str, Node]]:    # type: ignore[override]  (one walk, not a lookup per path)
        seen = set()
        for node in self._root.walk():
            if node.path not in seen:      # a node named "" under the root shares the root's path ""
                seen.add(node.path)
                yield node.path, node

    def values(self) -> Iterator[Node]:    # type: ignore[override]
        return (node for _, node in self.items())


def build_tree(keys: Iterable[str]) -> Tree:
    return Tree(keys)
