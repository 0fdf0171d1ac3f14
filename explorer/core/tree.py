"""Dotted state-dict keys as a module hierarchy: ``layers.0.attn.q_proj.weight`` -> layers / 0 / attn / q_proj / weight.

Children keep first-seen order, except that numeric siblings (``layers.2`` before ``layers.10``) sort numerically.
Every node knows its parent and its row, so a Qt model over it answers ``parent()`` in O(1). The parent link is weak:
a tree holds no reference cycle, so a replaced tree (100,000 nodes and the rows hanging off them) is freed the moment
it is dropped, not whenever a full collection happens to run (the window grew ~100 MB per re-open without it).
"""
from __future__ import annotations

import weakref
from typing import Any, Iterable, Iterator


_NO_CHILDREN: tuple = ()   # every leaf's children and index, shared: 10**6 leaves make no list and no dict each
_NO_INDEX: dict = {}       # (never written to: a node makes its own at its first child)


class Node:
    __slots__ = ("name", "_parent", "children", "row", "key", "data", "_index", "path", "__weakref__")

    def __init__(self, name: str, parent: "Node | None" = None, path: str = ""):
        self.name = name
        self._parent = None if parent is None else weakref.ref(parent)
        self.children: list[Node] = _NO_CHILDREN     # type: ignore[assignment]  (a list from the first child on)
        self.row = 0
        self.key: str | None = None     # the full state-dict key for a leaf
        self.data: Any = None            # what the owner attaches (TensorInfo, per-side pair, ...)
        self._index: dict[str, Node] = _NO_INDEX
        self.path = path                 # dotted path of this node ("" for the root)

    @property
    def parent(self) -> "Node | None":
        """The parent node (None for the root, or once the tree it belonged to is gone)."""
        return None if self._parent is None else self._parent()

    @property
    def is_leaf(self) -> bool:
        return self.key is not None

    def child(self, name: str) -> "Node | None":
        return self._index.get(name)

    def _add(self, name: str) -> "Node":
        node = self._index.get(name)
        if node is None:
            if self._index is _NO_INDEX:      # the first child: this node's own list and index
                self.children, self._index = [], {}
            node = Node(name, self, f"{self.path}.{name}" if self.path else name)
            self._index[name] = node
            self.children.append(node)
        return node

    def unlink(self) -> None:
        """Forget the children (taking a dropped tree apart a slice at a time: ``session/dispose.py``)."""
        self.children = _NO_CHILDREN     # type: ignore[assignment]
        self._index = _NO_INDEX

    def walk(self) -> Iterator["Node"]:
        """Pre-order, iteratively (trees can be 100k nodes deep in width, and deep in nesting)."""
        stack = [self]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(reversed(node.children))

    def leaves(self) -> Iterator["Node"]:
        return (n for n in self.walk() if n.is_leaf)

    def __repr__(self):
        return f"Node({self.path!r}{', leaf' if self.is_leaf else ''})"


def _numeric_order(children: list[Node]) -> list[Node]:
    if sum(c.name.isdigit() for c in children) < 2:
        return children
    # stable: numeric names sorted among themselves, occupying the slots numeric names had
    numeric = sorted((c for c in children if c.name.isdigit()), key=lambda c: int(c.name))
    it = iter(numeric)
    return [next(it) if c.name.isdigit() else c for c in children]


class Tree:
    """A tree over an ordered set of dotted keys, with a key -> node and path -> node index."""

    def __init__(self, keys: Iterable[str] = ()):
        self.root = Node("")
        self.by_key: dict[str, Node] = {}
        self.by_path: dict[str, Node] = {"": self.root}
        for key in keys:
            self.add(key)
        self.finish()

    def add(self, key: str, data: Any = None) -> Node:
        """Add a key (a node may be both a tensor and the parent of others, if a file's keys say so)."""
        node = self.by_key.get(key)
        if node is None:
            node = self.root
            by_path = self.by_path
            for part in key.split("."):
                found = node._index.get(part)
                if found is None:
                    found = node._add(part)
                    by_path.setdefault(found.path, found)   # the first node of a path keeps it ("" is the root's)
                node = found
            node.key = key
            self.by_key[key] = node
        if data is not None:
            node.data = data
        return node

    def finish(self) -> "Tree":
        """Order numeric siblings numerically and number rows."""
        stack = [self.root]
        pop, push = stack.pop, stack.extend
        while stack:
            node = pop()
            children = node.children
            if not children:
                continue
            if len(children) > 1:
                children = node.children = _numeric_order(children)
            for row, child in enumerate(children):
                child.row = row
            push(children)
        return self

    def __len__(self) -> int:
        return len(self.by_key)


def build_tree(keys: Iterable[str]) -> Tree:
    return Tree(keys)
