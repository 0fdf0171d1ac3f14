"""A pickle reader that runs none of the file's code.

Python's C unpickler does the parsing; we override ``find_class`` so that every global the file names is replaced:
tensor machinery by our own record builders (which read no bytes), a handful of harmless containers and torch value
types by themselves, and everything else -- ``os.system``, ``__main__.MyModel``, ``omegaconf.ListConfig`` -- by an
inert placeholder class that only remembers what it was called with. ``persistent_load`` turns storage ids into
:class:`~.records.StorageRef` records. The globals a file names are collected as information. Before the C unpickler
runs, the pickle's hashing work is bounded (:mod:`.hash_work`) and its memory capped (:mod:`.limits`).
"""
from __future__ import annotations

import _compat_pickle
import io
import pickle
from typing import Any, Callable

from ..gc_pause import gc_paused
from .hash_work import check_pickle_stream
from .inert import placeholder
from .limits import memo_cap, quiet_bytearray_bug, size_of
from .numpy_values import MULTIARRAY, NUMPY_RECONSTRUCT, NUMPY_SCALAR, NumpyDtype
from .printable import clean_metadata, make_keys_printable, printable_key
from .records import DTYPE_ALIASES, QSCHEMES, STORAGE_DTYPES, TORCH_DTYPE_NAMES, QScheme, StorageType, TorchDtype
from .stand_ins import ALLOWED_BUILTINS, TENSOR_MACHINERY, UNINITIALIZED, PickleContext


class SafeUnpickler(pickle.Unpickler):
    """Unpickles with every global replaced (see module doc). ``references`` lists what the file named.

    Every object a global can stand for here is ours: records, inert placeholders, or sealed functions that build
    plain containers. Nothing the file names is imported, looked up or called.
    """

    hash_checked_elsewhere = False   # True: the pickle's hashing work was checked by another process (torch_zip)

    def __init__(self, file, persistent_load: Callable[[Any], Any] | None = None,
                 context: PickleContext | None = None):
        """``persistent_load`` turns each persistent id into a storage record as it is read (legacy format);
        with a ``context`` instead, ids stay raw tuples until a tensor's storage is first asked for (zip format)."""
        super().__init__(file, encoding="utf-8")
        self._file = file
        self.references: list[str] = []
        self._seen: set[str] = set()
        self._context = context
        if persistent_load is not None:
            self.persistent_load = persistent_load
        elif context is not None:
            self.persistent_load = tuple  # a C callable: the raw id, no Python frame per tensor

    def load(self):
        # nothing the C unpickler would hash takes longer than the budget; note strings no output could print
        surrogates = check_pickle_stream(self._file, walk=not self.hash_checked_elsewhere)
        with quiet_bytearray_bug(), memo_cap(size_of(self._file)):
            obj = super().load()
        if surrogates:
            make_keys_printable(obj, getattr(self._context, "label", ""))
        clean_metadata(obj)
        return obj

    def _note(self, full: str) -> None:
        if full not in self._seen:
            self._seen.add(full)
            self.references.append(full)

    def find_class(self, module: str, name: str):  # noqa: D401 - pickle API
        module, name = printable_key(str(module)), printable_key(str(name))
        if (module, name) in _compat_pickle.NAME_MAPPING:  # protocol-2 pickles use Python 2 names
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        key = (module, name)
        if module == "torch._utils" and self._context is not None and name in self._context.stand_ins:
            return self._context.stand_ins[name]
        found = TENSOR_MACHINERY.get(key)
        if found is not None:
            return found
        if module == "torch":
            if name.endswith("Storage") and name in STORAGE_DTYPES:
                return StorageType(STORAGE_DTYPES[name])
            if name in TORCH_DTYPE_NAMES:
                return TorchDtype(name)
            if name in DTYPE_ALIASES:
                return TorchDtype(DTYPE_ALIASES[name])
            if name in QSCHEMES:
                return QScheme(name)
        if module in ("torch.storage", "torch") and name in ("UntypedStorage", "TypedStorage", "_UntypedStorage"):
            return StorageType(None)
        if module in ("builtins", "__builtin__") and name in ALLOWED_BUILTINS:
            return ALLOWED_BUILTINS[name]
        self._note(f"{module}.{name}")
        if module == "numpy" and name == "dtype":
            return NumpyDtype
        if module in MULTIARRAY and name == "scalar":
            return NUMPY_SCALAR
        if module in MULTIARRAY and name == "_reconstruct":
            return NUMPY_RECONSTRUCT
        if module == "torch.nn.parameter" and name in UNINITIALIZED:
            return UNINITIALIZED[name]
        return placeholder(module, name)
    # no ``persistent_load`` method: without one given, a persistent id is an UnpicklingError of the C unpickler


def safe_loads(data: bytes, persistent_load=None) -> tuple[Any, list[str]]:
    """Unpickle ``data`` without running any of its code; return the object and the globals it named."""
    up = SafeUnpickler(io.BytesIO(data), persistent_load)
    with gc_paused():
        obj = up.load()
    return obj, up.references
