"""A checkpoint's entries (every tensor, in file order) as a listing sees them: paths kept as segments, a flat
format's table, the columns of records, and the lazy list of :class:`~explorer.core.records.TensorInfo`.

Everything here is column-wise (one C-level ``map`` per column, no Python code per entry): a file can hold 10**6
tensors. :func:`infos` is the one way a ``TensorInfo`` is made.
"""
from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from itertools import chain, repeat
from operator import attrgetter, is_, is_not, itemgetter, mul
from typing import Callable, Iterator

from .gc_pause import gc_paused, slices
from .records import EntryPath, Location, Locations, Same, TensorInfo
from .safe_pickle.records import ITEMSIZE, StorageRef, TensorRecord
from .safe_pickle.stand_ins import PickleContext

_SHAPE_OF = attrgetter("shape")
_DTYPE_OF = attrgetter("dtype")
_STRIDE_OF = attrgetter("stride")
_NBYTES_OF = attrgetter("nbytes")
_NUMEL_OF = attrgetter("numel")
_IS_PARAMETER_OF = attrgetter("is_parameter")
_REQUIRES_GRAD_OF = attrgetter("requires_grad")
_STORAGE_OFFSET_OF = attrgetter("storage_offset")
_RAW_STORAGE_OF = attrgetter("_storage")
_CTX_OF = attrgetter("_ctx")
_DEVICE_OF = attrgetter("device")
_RECORD_NBYTES = TensorRecord.nbytes
_FIELDS = [itemgetter(i) for i in range(5)]


def infos(paths, shapes, dtypes, nbytes, locations, devices, kinds, grads) -> list[TensorInfo]:
    """:class:`TensorInfo` of entries given column-wise (``grads``: requires_grad, any iterable; ``locations``: one
    per entry, or a :class:`Locations` of them all, each made when first read)."""
    if type(locations) is Locations:
        return list(map(TensorInfo, paths, shapes, dtypes, nbytes, repeat(locations), devices, kinds, grads,
                        range(len(paths))))
    return list(map(TensorInfo, paths, shapes, dtypes, nbytes, locations, devices, kinds, grads))


class FlatTable:
    """A flat state dict described by a table instead of records (safetensors): the reader has parsed and checked
    every key, shape, dtype and byte range; records are made on demand by ``make_record(i)``.

    ``columns(start, stop)``: entries start..stop as ``(shapes, dtypes, nbytes, kinds, devices)`` lists;
    ``locations(start, stop, nbytes)``: their :class:`Locations` (``nbytes``: their column from ``columns``)."""

    __slots__ = ("keys", "make_record", "records", "columns", "locations")

    def __init__(self, keys: list[str], make_record: Callable[[int], TensorRecord],
                 columns: Callable[[int, int], tuple[list, list, list, list, list]],
                 locations: Callable[[int, int, list], Locations]):
        self.keys = keys
        self.make_record = make_record
        self.records: list[TensorRecord | None] = [None] * len(keys)
        self.columns = columns
        self.locations = locations

    def record(self, i: int) -> TensorRecord:
        rec = self.records[i]
        if rec is None:
            rec = self.records[i] = self.make_record(i)
        return rec

    def info_columns(self, paths: list, start: int, stop: int) -> tuple:
        """The fields of entries start..stop's :class:`TensorInfo`, column-wise (the arguments of :func:`infos`)."""
        shapes, dtypes, nbytes, kinds, devices = self.columns(start, stop)
        return (paths, shapes, dtypes, nbytes, self.locations(start, stop, nbytes), devices, kinds,
                [False] * len(paths))


def record_columns(recs: list, start: int, kinds: dict) -> tuple[list, list, list, list, list | RawStorages]:
    """``(shapes, dtypes, nbytes, kinds, storages)`` of records (entries ``start``..): ``kinds`` maps an entry's index
    to its kind when the walk knew it; ``storages`` (for :func:`devices_of` and :func:`record_locations`): the
    records' persistent ids described column-wise (:class:`RawStorages`), else each record's storage, each distinct
    one resolved once (:func:`resolved_storages`)."""
    shapes = list(map(_SHAPE_OF, recs))
    raw_dtypes = list(map(_DTYPE_OF, recs))
    dtypes = raw_dtypes if all(raw_dtypes) else [d or "unknown" for d in raw_dtypes]
    if all(t.nbytes is _RECORD_NBYTES for t in set(map(type, recs))):  # rec.nbytes, without the calls
        nbytes = list(map(mul, map(_NUMEL_OF, recs), map(ITEMSIZE.get, raw_dtypes, repeat(1))))
    else:
        nbytes = list(map(_NBYTES_OF, recs))
    params = list(map(_IS_PARAMETER_OF, recs))
    if kinds or any(params):
        kind_col = [kinds.get(i) or ("parameter" if p else "tensor") for i, p in zip(range(start, start + len(recs)),
                                                                                   params)]
    else:
        kind_col = ["tensor"] * len(recs)
    storages = raw_storages(recs)
    return shapes, dtypes, nbytes, kind_col, storages if storages is not None else resolved_storages(recs)


def resolved_storages(recs: list) -> list:
    """Each record's storage (a ``StorageRef``, or something else for a tensor without data); each distinct storage
    (or persistent id not yet resolved) resolved once, through one of its records."""
    ids = list(map(id, map(_RAW_STORAGE_OF, recs)))
    resolved = dict(zip(ids, recs))
    for key, rec in resolved.items():
        resolved[key] = rec.storage
    return list(map(resolved.__getitem__, ids))


class RawStorages:
    """The storages of records whose persistent ids are not resolved yet, column-wise (no ``StorageRef`` each):
    per record its storage's key, device and size in bytes, as the ``StorageRef`` would say; ``source`` is the
    file's ``ByteSource`` (see ``PickleContext.storage_columns``)."""

    __slots__ = ("keys", "devices", "nbytes", "source")

    def __init__(self, keys: list, devices: list, nbytes: list, source):
        self.keys, self.devices, self.nbytes, self.source = keys, devices, nbytes, source


def raw_storages(recs: list) -> RawStorages | None:
    """The storages of ``recs`` column-wise when they are all raw persistent ids of one file that its context can
    describe in bulk; None otherwise (:func:`resolved_storages` then)."""
    raws = list(map(_RAW_STORAGE_OF, recs))
    if not raws or set(map(type, raws)) != {tuple}:
        return None
    types = set(map(type, recs))
    ref = getattr(types.pop(), "file_context", None) if len(types) == 1 else None
    if ref is not None:   # the records of one file's _rebuild_tensor_v2, the usual case
        ctx = ref()
    else:
        try:
            ctxs = set(map(_CTX_OF, recs))
        except AttributeError:   # a record without a context: its storage resolves (or fails) the careful way
            return None
        ctx = ctxs.pop() if len(ctxs) == 1 else None
    if type(ctx) is not PickleContext:
        return None
    columns = ctx.storage_columns(raws)
    return RawStorages(*columns, ctx.source) if columns is not None else None


def devices_of(storages) -> list[str]:
    """The device each storage was saved from ("meta": no data)."""
    if type(storages) is RawStorages:
        return storages.devices
    if all(t is StorageRef for t in set(map(type, storages))):
        return list(map(_DEVICE_OF, storages))
    return [st.device if isinstance(st, StorageRef) else "meta" for st in storages]


def record_locations(recs: list, storages, fallback_file: str) -> Locations | list[Location | None]:
    """Where each record's bytes are (None for a tensor without data); each storage described once. Column-wise
    (:class:`Locations`, each made when read) unless some record has no data."""
    if type(storages) is RawStorages:
        source = storages.source
        keys = storages.keys
        if source is None:
            file, names, offsets = fallback_file, None, None
        else:
            describe = getattr(source, "describe_keys", None)
            if describe is None:
                return record_locations(recs, resolved_storages(recs), fallback_file)
            file, names, offsets = describe(keys)
        if names is None:
            names = ["data/" + k for k in keys]
        return Locations(Same(file), names, offsets if offsets is not None else Same(None), storages.nbytes,
                         list(map(_STORAGE_OFFSET_OF, recs)), list(map(_STRIDE_OF, recs)), keys)
    ids = list(map(id, storages))
    places: dict[int, tuple | None] = dict(zip(ids, storages))
    describers: dict[int, Callable | None] = {}
    for key, st in places.items():
        if isinstance(st, StorageRef):
            describe = describers.get(id(st.source), False)
            if describe is False:
                describe = describers[id(st.source)] = getattr(st.source, "describe", None)
            file, name, offset = describe(st) if describe is not None else (fallback_file, f"data/{st.key}", None)
            places[key] = (file, name, offset, st.nbytes, st.key)
        else:
            places[key] = None
    where = list(map(places.__getitem__, ids))
    if None in where:
        return [None if w is None else Location(w[0], w[1], w[2], w[3], r.storage_offset, r.stride, w[4])
                for w, r in zip(where, recs)]
    file, name, offset, nbytes, key = (list(map(f, where)) for f in _FIELDS)
    return Locations(file, name, offset, nbytes, list(map(_STORAGE_OFFSET_OF, recs)), list(map(_STRIDE_OF, recs)), key)


def record_info_columns(paths: list, recs: list, start: int, kinds: dict, fallback_file: str) -> tuple:
    """The fields of the :class:`TensorInfo` of records (entries ``start``..) at ``paths``, column-wise (the
    arguments of :func:`infos`)."""
    shapes, dtypes, nbytes, kind_col, storages = record_columns(recs, start, kinds)
    return (paths, shapes, dtypes, nbytes, record_locations(recs, storages, fallback_file), devices_of(storages),
            kind_col, list(map(_REQUIRES_GRAD_OF, recs)))


class EntryList(Sequence):
    """Every tensor of a checkpoint in file order, as :class:`TensorInfo`; each made the first time it is looked at
    (a run of them in one column-wise call). ``make(start, stop)`` makes entries start..stop."""

    __slots__ = ("_make", "_infos", "_complete", "_label")

    def __init__(self, n: int, make: Callable[[int, int], list[TensorInfo]], label: str):
        self._make = make
        self._label = label
        self._infos: list[TensorInfo | None] = [None] * n
        self._complete = not self._infos

    def __len__(self) -> int:
        return len(self._infos)

    @property
    def complete(self) -> bool:
        """Has every entry been made?"""
        return self._complete

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self._infos)))]
        info = self._infos[i]
        if info is None:
            if i < 0:
                i += len(self._infos)
            info = self._infos[i] = self._make(i, i + 1)[0]
        return info

    def made_any(self, start: int, stop: int) -> bool:
        """Has any of entries ``start..stop`` been made?"""
        return self._complete or any(map(is_not, self._infos[start:stop], repeat(None)))

    def span(self, start: int, stop: int) -> list[TensorInfo]:
        """Entries ``start..stop`` (a copy of that part of the list), the missing ones made in one call."""
        part = self._infos[start:stop]
        if self._complete:
            return part  # type: ignore[return-value]
        missing: list[bool] = []   # by identity (a TensorInfo's __eq__ is Python code), a slice per C call
        for a, b in slices(len(part)):
            missing.extend(map(is_, part[a:b], repeat(None)))
        if any(missing):
            with gc_paused():
                made = self._make(start, stop)
                part = made if all(missing) else [new if m else old for old, new, m in zip(part, made, missing)]
                self._infos[start:stop] = part
            self._complete = self._complete or (start <= 0 and stop >= len(self._infos))
        return part  # type: ignore[return-value]

    def __iter__(self):
        if not self._complete:
            self.span(0, len(self._infos))
            self._complete = True
        return iter(self._infos)

    def __eq__(self, other):
        if isinstance(other, (EntryList, list, tuple)):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self):
        return f"<{len(self)} entries of {self._label}>"


class SegmentPaths(Sequence):
    """Entry paths in file order, kept as segments ``(prefix, [key, ...])``: a path ``prefix + (key,)`` is made when
    asked for (no 10**6 tuples up front); the tensors of one mapping are one segment."""

    __slots__ = ("starts", "prefixes", "keys", "_n")

    def __init__(self):
        self.starts: list[int] = []
        self.prefixes: list[EntryPath] = []
        self.keys: list[list[str]] = []
        self._n = 0

    @classmethod
    def flat(cls, keys: list[str]) -> "SegmentPaths":
        out = cls()
        out.extend((), keys)
        return out

    def add(self, prefix: EntryPath, key: str) -> None:
        """One more path, ``prefix + (key,)``; ``prefix`` is the same object for the keys of one container."""
        if self.prefixes and self.prefixes[-1] is prefix:
            self.keys[-1].append(key)
        else:
            self.starts.append(self._n)
            self.prefixes.append(prefix)
            self.keys.append([key])
        self._n += 1

    def extend(self, prefix: EntryPath, keys: list[str]) -> None:
        """A segment of its own (``keys`` is kept, not copied)."""
        if keys:
            self.starts.append(self._n)
            self.prefixes.append(prefix)
            self.keys.append(keys)
            self._n += len(keys)

    def segments(self) -> Iterator[tuple[EntryPath, list[str]]]:
        return zip(self.prefixes, self.keys)

    def __len__(self):
        return self._n

    def __getitem__(self, i):
        if isinstance(i, slice):
            start, stop, step = i.indices(self._n)
            return self.span(start, stop) if step == 1 else [self[j] for j in range(start, stop, step)]
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError("path index out of range")
        j = bisect_right(self.starts, i) - 1
        return self.prefixes[j] + (self.keys[j][i - self.starts[j]],)

    def span(self, start: int, stop: int) -> list[EntryPath]:
        """Paths ``start..stop``, made segment by segment."""
        out: list[EntryPath] = []
        if start <= 0 and stop >= self._n:   # every path: a slice per C call (10**6 tuples at once: ~0.2 s)
            for prefix, keys in zip(self.prefixes, self.keys):
                for a, b in slices(len(keys)):
                    part = keys[a:b]
                    out.extend(map(prefix.__add__, zip(part)) if prefix else zip(part))
            return out
        j = max(bisect_right(self.starts, start) - 1, 0)
        while start < stop and j < len(self.starts):
            at = self.starts[j]
            part = self.keys[j][start - at:stop - at]
            prefix = self.prefixes[j]
            out.extend(map(prefix.__add__, zip(part)) if prefix else zip(part))
            start = at + len(self.keys[j])
            j += 1
        return out

    def last_keys(self, start: int, stop: int) -> list[str]:
        """The last element (the key) of paths ``start..stop``, no path made."""
        out: list[str] = []
        j = max(bisect_right(self.starts, start) - 1, 0)
        while start < stop and j < len(self.starts):
            at = self.starts[j]
            out += self.keys[j][start - at:stop - at]
            start = at + len(self.keys[j])
            j += 1
        return out

    def __iter__(self):  # C iterators, one per segment: no Python frame per path
        return chain.from_iterable(map(prefix.__add__, zip(keys)) if prefix else zip(keys)
                                   for prefix, keys in zip(self.prefixes, self.keys))
