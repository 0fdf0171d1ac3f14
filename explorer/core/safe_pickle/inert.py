"""Inert placeholders: what every global a pickle names becomes unless it is tensor machinery or a plain container.

A placeholder remembers the arguments, state and items the pickle gives it and does nothing; its class, and every
stand-in the unpickler hands out, is sealed: a pickle's BUILD or attribute write on it changes nothing.
"""
from __future__ import annotations

from typing import Any


class SealedClass(type):
    """Metaclass of classes a pickle may name (our stand-ins and the shared placeholder classes): a BUILD or any
    other attribute write on the class itself changes nothing."""

    def __setattr__(cls, name, value):
        pass

    def __delattr__(cls, name):
        pass


def ignore(*args, **kwargs):
    return None


class NoState:
    """A ``__setstate__`` descriptor that ignores the state (on the class and on its instances)."""

    def __get__(self, obj, cls=None):
        return ignore


class Sealed:
    """Base of our stand-in callables: no attributes, and a pickle's BUILD on them changes nothing."""

    __slots__ = ()

    def __setstate__(self, state):
        pass


def sealed(fn):
    """Wrap a stand-in function in an instance that has no attributes a pickle's BUILD could overwrite."""
    cls = type(fn.__name__, (Sealed,), {"__slots__": (), "__call__": staticmethod(fn),
                                        "__repr__": lambda self: f"<safe {fn.__name__}>"})
    return cls()


class StateSetter:
    """``__setstate__`` that works on instances and is a no-op when a pickle BUILDs the placeholder class itself."""

    def __get__(self, obj, cls=None):
        if obj is None:
            return ignore
        return lambda state: object.__setattr__(obj, "_state", state)


class Inert(metaclass=SealedClass):
    """Stands for an object of a class the file names. It remembers its arguments and state and does nothing."""

    _global = "?"

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        object.__setattr__(obj, "_args", args)
        object.__setattr__(obj, "_kwargs", kwargs)
        object.__setattr__(obj, "_state", None)
        object.__setattr__(obj, "_items", [])
        object.__setattr__(obj, "_dict_items", {})
        return obj

    def __init__(self, *args, **kwargs):
        pass

    __setstate__ = StateSetter()

    def __setattr__(self, name, value):  # only through __setstate__
        pass

    # list-like and dict-like pickles push their items through these
    def append(self, item):
        self._items.append(item)

    def extend(self, items):
        if isinstance(items, (list, tuple)):
            self._items.extend(items)

    def __setitem__(self, key, value):
        try:
            self._dict_items[key] = value
        except TypeError:  # unhashable key: keep it in the item list
            self._items.append((key, value))

    def __call__(self, *args, **kwargs):
        """A pickle may call what it built (``getattr(x, 'system')(...)``): the result is one more placeholder."""
        return type(self)(*args, **kwargs)

    def __reduce_ex__(self, protocol):  # never re-pickled into something live
        raise TypeError(f"{self._global} is an inert placeholder")

    def __repr__(self):
        return f"<{self._global} (not loaded)>"

    @property
    def global_name(self) -> str:
        return type(self)._global

    def state_dict(self) -> dict | None:
        """The instance's ``__dict__``-like state, when it has one."""
        st = self._state
        if isinstance(st, tuple) and len(st) == 2 and (st[0] is None or isinstance(st[0], dict)):
            merged = dict(st[0] or {})
            if isinstance(st[1], dict):
                merged.update(st[1])
            return merged
        return st if isinstance(st, dict) else None


_placeholder_classes: dict[str, type] = {}


def placeholder(module: str, name: str) -> type:
    """The placeholder class of global ``module.name`` (one per name, shared by every file)."""
    full = f"{module}.{name}"
    cls = _placeholder_classes.get(full)
    if cls is None:
        safe_name = name.replace(".", "_") or "anonymous"
        cls = SealedClass(safe_name, (Inert,), {"_global": full, "__module__": "explorer.inert"})
        _placeholder_classes[full] = cls
    return cls


def is_module_state(obj: Any) -> bool:
    """Does this placeholder look like a pickled ``nn.Module`` (its ``__dict__`` has the module registries)?"""
    if not isinstance(obj, Inert):
        return False
    st = obj.state_dict()
    return isinstance(st, dict) and isinstance(st.get("_parameters"), dict) and isinstance(st.get("_modules"), dict)
