"""A checkpoint as the explorer sees it: the loaded object (tensors as records, foreign objects inert), every tensor's
path, the candidate state dicts ranked best first, lookups by path, listing columns and on-demand access to values.

Listing is built for files with tens of thousands of tensors: one pass collects every tensor's path and record
(``_walk``); the :class:`~explorer.core.records.TensorInfo` of an entry is made the first time someone looks at it
(``entries`` is a lazy, cached sequence, see :mod:`explorer.core.entries`); flat formats (safetensors) hand over a
table and their records are made on demand too. Turning records into tensors is :mod:`explorer.core.materialize`'s.
"""
from __future__ import annotations

import re
from itertools import compress
from operator import attrgetter, itemgetter
from typing import TYPE_CHECKING, Any, Callable, Iterator

from ..errors import CorruptFileError, KeyNotFoundError, NoDataError
from .bytesource import read_record
from .gc_pause import gc_paused, slices
from .entries import EntryList, FlatTable, SegmentPaths, devices_of, infos, record_columns, record_info_columns
from .loaded import (MAX_DEPTH, RecoveredModule, all_records, child, children, has_data, items_of, keys_of, normalize,
                     values_of)
from .records import NUMPY_ARRAY, EntryPath, ModuleInfo, StateDictRef, TensorInfo
from .safe_pickle.inert import Inert
from .safe_pickle.numpy_values import NumpyRecord
from .safe_pickle.records import TensorRecord

if TYPE_CHECKING:   # listing needs no torch: it is imported where values or meta tensors are made
    import torch

    from .materialize import Materializer

_GOOD_NAMES = {"state_dict": 3.0, "model_state_dict": 3.0, "model_state": 2.5, "model": 2.5, "module": 2.0,
               "net": 2.0, "network": 2.0, "weights": 2.0, "params": 1.5, "ema": 1.2, "model_ema": 1.2,
               "state_dict_ema": 1.2, "generator": 1.5, "student": 1.3, "teacher": 1.1}
_BAD_PARTS = re.compile(r"optim|optimizer|scheduler|scaler|lr_|loops|callbacks", re.I)
OPTIMIZER_KEYS = {"exp_avg", "exp_avg_sq", "momentum_buffer", "step", "max_exp_avg_sq", "square_avg", "acc_delta",
                   "sum", "mu", "eta", "ax", "prev", "step_size"}


def _score(path: EntryPath, mapping, n_tensors: int, keys: list[str] | None = None) -> tuple[float, str]:
    """``keys``: the mapping's keys as strings, when the caller has them already."""
    score = float(n_tensors)
    reasons = []
    if keys is None:
        keys = [k if type(k) is str else str(k) for k in keys_of(mapping)]
    # the tests below run over every key (10**6 for a large file): each is a pass in C, a slice at a time
    if any("." in "\n".join(keys[a:b]) for a, b in slices(len(keys))):
        score *= 2.0
        reasons.append("dotted module keys")
    if path:
        name = path[-1].lower()
        if name in _GOOD_NAMES:
            score *= _GOOD_NAMES[name]
            reasons.append(f"named {path[-1]!r}")
    else:
        score *= 1.5
        reasons.append("the file's top-level object")
    if any(_BAD_PARTS.search(p) for p in path):
        score *= 0.01
        reasons.append("inside optimizer/scheduler state")
    if keys and sum(sum(map(OPTIMIZER_KEYS.__contains__, keys[a:b])) for a, b in slices(len(keys))) >= len(keys) / 2:
        score *= 0.01
        reasons.append("optimizer slots")
    if keys and all(map(str.isdigit, keys)):
        score *= 0.1
    if isinstance(mapping, RecoveredModule):
        score *= 2.0
        reasons.append(f"recovered from a pickled {mapping.class_name.rsplit('.', 1)[-1]}")
    return score, ", ".join(reasons)


_NO_KEYS: dict = {}
_LAST = itemgetter(-1)
_PATH_OF = attrgetter("path")


class Checkpoint:
    """What a reader found in a file or folder. Build with a reader (``explorer.core.loaders.open_checkpoint``).

    ``root`` is the loaded object; readers of flat formats may pass ``table`` (a :class:`FlatTable`) instead, and
    the root is then made the first time it is asked for.
    """

    kind = "checkpoint"

    def __init__(self, path: str, fmt: str, root: Any = None, references: list[str] | None = None,
                 metadata: dict | None = None, *, table: FlatTable | None = None):
        self.path = str(path)
        self.format = fmt
        self.references = list(references or [])
        self.metadata = dict(metadata or {})   # format-level metadata (safetensors __metadata__, ...)
        self._table = table
        self._kinds: dict[int, str] = {}
        self._index: dict | None = None
        self._unshared: bool | None = None
        self._made: Materializer | None = None
        with gc_paused():
            if table is not None:
                self._root = None
                self._paths = SegmentPaths.flat(table.keys)
                self._recs: list[TensorRecord] | None = None
                self._by_parent: dict[EntryPath, range | list[int]] = {(): range(len(table.keys))}
                self.state_dicts = self._rank([((), _KeysOnly(table.keys), len(table.keys), table.keys)]) \
                    if table.keys else []
            else:
                try:
                    self._root = normalize(root)
                except CorruptFileError as e:
                    raise CorruptFileError(f"{self.path}: {e}; the file is not a checkpoint (or is hostile) — "
                                           "nothing was loaded") from None
                self._walk()
        self._columns_of = column_maker(self._paths, self._table, self._recs, self._kinds, self.path)
        self.entries = EntryList(len(self._paths), info_maker(self._columns_of), self.path)

    # ---- structure ---------------------------------------------------------------------------------------------
    @property
    def root(self) -> Any:
        """The loaded object: tensors as records, foreign objects as inert placeholders."""
        if self._root is None and self._table is not None:
            table = self._table
            with gc_paused():
                # a dict, as safetensors.torch.load_file gives (an OrderedDict of 10**6 items costs twice as much)
                self._root = dict(zip(table.keys, map(table.record, range(len(table.keys)))))
        return self._root

    def _walk(self) -> None:
        paths = SegmentPaths()
        recs: list[TensorRecord] = []
        kinds = self._kinds
        by_parent: dict[EntryPath, range | list[int]] = {}
        candidates: list[tuple] = []  # (path, mapping) of every dict, in the order they are first seen
        root = self._root
        if isinstance(root, TensorRecord):  # torch.save(tensor): the file is one tensor, at the empty path
            if type(root) is NumpyRecord:
                kinds[0] = NUMPY_ARRAY
            self._paths, self._recs, self._by_parent, self.state_dicts = [()], [root], {}, []
            return
        seen = {id(root)}
        # a frame: path, iterator over (key, value), kinds of a recovered module, indices of its tensors
        stack: list[tuple] = []
        frame = self._frame((), root, candidates, by_parent, paths, recs, kinds)
        if frame is not None:
            stack.append(frame)
        while stack:
            path, it, mod_kinds, idx = stack[-1]
            for key, value in it:
                if isinstance(value, TensorRecord):
                    i = len(recs)
                    paths.add(path, key)
                    recs.append(value)
                    idx.append(i)
                    if mod_kinds is not None:
                        kind = mod_kinds.get(key)
                        if kind is not None:
                            kinds[i] = kind
                    continue
                if isinstance(value, (dict, list, tuple, Inert)):
                    if id(value) in seen:  # shared or cyclic container: listed once, where first seen
                        continue
                    seen.add(id(value))
                    if len(stack) >= MAX_DEPTH:
                        raise CorruptFileError(f"{self.path}: nesting deeper than {MAX_DEPTH} levels; the file is "
                                               "not a checkpoint (or is hostile) — nothing was loaded")
                    frame = self._frame(path + (key,), value, candidates, by_parent, paths, recs, kinds)
                    if frame is not None:
                        stack.append(frame)
                        break
            else:
                stack.pop()
        self._paths, self._recs, self._by_parent = paths, recs, by_parent
        if NumpyRecord in set(map(type, recs)):
            for i in compress(range(len(recs)), map(NumpyRecord.__instancecheck__, recs)):
                kinds[i] = NUMPY_ARRAY
        self.state_dicts = self._rank([(p, m, len(by_parent[p]), *keys) for p, m, *keys in candidates
                                       if by_parent[p]])

    @staticmethod
    def _frame(path, obj, candidates, by_parent, paths, recs, kinds):
        """A frame to walk ``obj``'s children; ``None`` when a mapping of tensors only (a state dict, the common case
        with 10**6 entries) was listed in bulk right away: the same paths, records, kinds and order, no per-entry
        Python loop."""
        if isinstance(obj, dict):
            str_keys = all(t is str for t in set(map(type, keys_of(obj))))
            if all_records(values_of(obj)):
                keys = list(keys_of(obj)) if str_keys else [k if type(k) is str else str(k) for k in keys_of(obj)]
                candidates.append((path, obj, keys))
                start = len(recs)
                recs.extend(values_of(obj))
                paths.extend(path, keys)
                by_parent[path] = range(start, len(recs))
                if isinstance(obj, RecoveredModule):
                    mod_kinds = obj.kinds
                    for i, key in enumerate(keys, start):
                        kind = mod_kinds.get(key)
                        if kind is not None:
                            kinds[i] = kind
                return None
            candidates.append((path, obj))
            idx: list[int] = []
            by_parent[path] = idx
            items = iter(items_of(obj)) if str_keys else \
                ((k if type(k) is str else str(k), v) for k, v in items_of(obj))
            return path, items, obj.kinds if isinstance(obj, RecoveredModule) else None, idx
        idx = []
        by_parent[path] = idx
        return path, children(obj), None, idx

    def _rank(self, candidates) -> list[StateDictRef]:
        """``candidates``: (path, mapping, tensors in it[, its keys as strings])."""
        ranked = []
        for path, mapping, n, *keys in candidates:
            score, reason = _score(path, mapping, n, *keys)
            ranked.append(StateDictRef(path, n, score, reason))
        ranked.sort(key=lambda r: -r.score)  # stable: file order breaks ties
        return ranked

    def _record_at(self, i: int) -> TensorRecord:
        if self._recs is not None:
            return self._recs[i]
        return self._table.record(i)  # type: ignore[union-attr]


    def entry_columns(self, chunk: int = 65536) -> Iterator[tuple]:
        """What a listing shows of every entry, in file order, column-wise and without :class:`TensorInfo` objects:
        chunks ``(prefix, keys, shapes, dtypes, nbytes, kinds, devices)`` of lists. An entry's path is
        ``prefix + (key,)``; with ``prefix`` None, ``keys`` holds whole paths. The values are those of ``entries``
        (a storage that cannot be resolved raises as there)."""
        paths = self._paths
        if not isinstance(paths, SegmentPaths):  # the file is one tensor
            for start in range(0, len(paths), chunk):
                infos = self.entries[start:start + chunk]
                yield (None, [i.path for i in infos], [i.shape for i in infos], [i.dtype for i in infos],
                       [i.nbytes for i in infos], [i.kind for i in infos], [i.device for i in infos])
            return
        table = self._table
        table_columns = table.columns if table is not None else None
        kinds = self._kinds
        start = 0
        for prefix, seg_keys in paths.segments():
            for at in range(0, len(seg_keys), chunk):
                keys = seg_keys[at:at + chunk] if len(seg_keys) > chunk else seg_keys
                n = len(keys)
                if table_columns is not None:
                    yield (prefix, keys, *table_columns(start, start + n))
                    start += n
                    continue
                recs = self._recs[start:start + n]  # type: ignore[index]
                shapes, dtypes, nbytes, kind_col, storages = record_columns(recs, start, kinds)
                devices = devices_of(storages)
                yield prefix, keys, shapes, dtypes, nbytes, kind_col, devices
                start += n

    @property
    def default_state_dict(self) -> EntryPath | None:
        return self.state_dicts[0].path if self.state_dicts else None

    @property
    def label(self) -> str:
        return self.path

    def get(self, path: EntryPath) -> Any:
        """The object at ``path`` in the loaded object (tensors as records, foreign objects inert)."""
        path = tuple(path)
        if self._table is not None and self._root is None and len(path) == 1:
            i = self._index_of(path)
            if i is not None:
                return self._record_at(i)
        obj = self.root
        for part in path:
            try:
                obj = child(obj, part)
            except LookupError:
                raise KeyNotFoundError(f"{self.path}: no entry {'/'.join(path)!r}{self._entries_named()}") from None
        return obj

    def _entries_named(self) -> str:
        """What a missing entry's error adds: the state dicts the file holds, by their paths."""
        paths = ["/".join(sd.path) or "/" for sd in self.state_dicts[:6]]
        more = f" and {len(self.state_dicts) - 6} more" if len(self.state_dicts) > 6 else ""
        return f" (its state dicts: {', '.join(map(repr, paths))}{more})" if paths else ""

    def _index_of(self, path: EntryPath) -> int | None:
        if self._table is not None:  # indexed by key: a flat table's paths are (key,)
            if self._index is None:   # a slice at a time (one C call over 10**6 keys: ~0.3-1 s without the lock)
                keys, index = self._table.keys, {}
                for a, b in slices(len(keys)):
                    index.update(zip(keys[a:b], range(a, b)))
                self._index = index
            return self._index.get(path[0]) if len(path) == 1 else None
        paths = self._paths
        if not isinstance(paths, SegmentPaths):
            if self._index is None:
                self._index = {p: i for i, p in enumerate(paths)}
            return self._index.get(path)
        if self._index is None:  # prefix -> {key: index}: no path tuple per entry; a later duplicate wins, as before
            index: dict = {}
            for start, prefix, keys in zip(paths.starts, paths.prefixes, paths.keys):
                into = index.setdefault(prefix, {})
                for a, b in slices(len(keys)):
                    into.update(zip(keys[a:b], range(start + a, start + b)))
            self._index = index
        if not path:
            return None
        return self._index.get(path[:-1], _NO_KEYS).get(path[-1])

    def resolve_entry(self, entry: str | EntryPath | None) -> EntryPath:
        """``None`` -> the best state dict; ``"/"`` -> the root; ``"a/b"`` -> ``("a", "b")``."""
        if entry is None:
            if self.default_state_dict is None:
                if isinstance(self.root, dict):  # an empty state dict (or one of non-tensors) is still one
                    return ()
                raise KeyNotFoundError(f"{self.path}: holds no mapping of tensors to use as a state dict")
            return self.default_state_dict
        if isinstance(entry, (tuple, list)):
            return tuple(entry)
        path = tuple(p for p in entry.strip("/").split("/") if p) if entry.strip("/") else ()
        if path not in self._by_parent:
            self.get(path)
        return path

    def state_dict_infos(self, entry: str | EntryPath | None = None) -> dict[str, TensorInfo]:
        """key -> TensorInfo for the tensors of one state dict (default: the best one), in file order (a dict: an
        OrderedDict of 10**6 items costs twice as much to make)."""
        path = self.resolve_entry(entry)
        entries = self.entries
        idx = self._by_parent.get(path, ())
        with gc_paused():
            if type(idx) is range and idx.step == 1:  # a state dict listed in bulk: its entries are contiguous
                infos = entries.span(idx.start, idx.stop)
            else:
                infos = [entries[i] for i in idx]
            # key -> info, in file order (a later entry with the same key replaces the earlier one, in its place);
            # made a slice at a time: one dict(zip(...)) over 10**6 entries holds the interpreter lock ~0.3 s, and
            # slices of 50,000 fresh keys 7-56 ms each (the GUI thread waited ~100 ms): 10,000 at a time
            out: dict[str, TensorInfo] = {}
            for a, b in slices(len(infos), 10_000):
                part = infos[a:b]
                out.update(zip(map(_LAST, map(_PATH_OF, part)), part))
            return out

    def state_dict_info_columns(self, entry: str | EntryPath | None = None,
                                size: int | None = None) -> tuple[list, Iterator[tuple]] | None:
        """``(keys, parts)``: one state dict's keys, and the fields of the :class:`TensorInfo`
        :meth:`state_dict_infos` gives them, column-wise (the arguments of :func:`~explorer.core.entries.infos`: no
        TensorInfo made), ``size`` keys at a time (None: all at once) -- ``parts`` makes each run of them when the
        one before has been taken (a listing sends each on while the next is made) -- for a state dict listed in
        bulk: its entries contiguous, none made yet, no key repeated. None otherwise (:meth:`state_dict_infos`
        then)."""
        path = self.resolve_entry(entry)
        idx = self._by_parent.get(path, ())
        if type(idx) is not range or idx.step != 1 or not len(idx) or self.entries.made_any(idx.start, idx.stop):
            return None
        paths = self._paths
        keys = paths.last_keys(idx.start, idx.stop) if type(paths) is SegmentPaths else \
            list(map(_LAST, paths[idx.start:idx.stop]))
        if len(set(keys)) != len(keys):
            return None
        step = size or len(idx)

        def parts() -> Iterator[tuple]:
            for start in range(idx.start, idx.stop, step):
                with gc_paused():
                    part = self._columns_of(start, min(start + step, idx.stop))
                yield part
        return keys, parts()

    def state_dict_columns(self, entry: str | EntryPath | None = None) -> tuple[list, list, list, list, list, list]:
        """``(keys, shapes, dtypes, nbytes, kinds, devices)`` of one state dict's tensors, as
        :meth:`state_dict_infos` gives them, column-wise: a state dict listed in bulk (10**6 tiny tensors) costs no
        :class:`TensorInfo` per tensor."""
        path = self.resolve_entry(entry)
        idx = self._by_parent.get(path, ())
        if type(idx) is range and idx.step == 1 and len(idx) and isinstance(self._paths, SegmentPaths) \
                and not self.entries.complete:
            cols: tuple[list, ...] = ([], [], [], [], [], [])
            at = 0
            for prefix, *chunk in self.entry_columns():
                n = len(chunk[0])
                lo, hi = max(idx.start - at, 0), min(idx.stop - at, n)
                if lo < hi:
                    if prefix != path:   # not the layout this fast path assumes: the careful way below
                        break
                    for col, part in zip(cols, chunk):
                        col += part[lo:hi]
                at += n
                if at >= idx.stop:
                    break
            keys = cols[0]
            if len(keys) == len(idx) and len(set(keys)) == len(keys):   # a repeated key: state_dict_infos decides
                return cols
        infos = list(self.state_dict_infos(path).items())
        return ([k for k, _ in infos], [i.shape for _, i in infos], [i.dtype for _, i in infos],
                [i.nbytes for _, i in infos], [i.kind for _, i in infos], [i.device for _, i in infos])

    @property
    def is_flat(self) -> bool:
        """A flat table of tensors (safetensors, a sharded folder): no pickled object, no module, a record made per
        tensor only when asked for (its ``root`` makes them all)."""
        return self._table is not None

    def module_classes(self, entry: str | EntryPath | None = None) -> dict[str, ModuleInfo]:
        """Module classes recovered from a pickled module, when the state dict came from one."""
        if self.is_flat:   # a flat table (safetensors...) pickles no module
            return {}
        try:
            obj = self.get(self.resolve_entry(entry))
        except KeyNotFoundError:
            return {}
        return dict(obj.modules) if isinstance(obj, RecoveredModule) else {}

    # ---- values ------------------------------------------------------------------------------------------------
    def record(self, path: EntryPath) -> TensorRecord:
        i = self._index_of(tuple(path))
        if i is None:
            raise KeyNotFoundError(f"{self.path}: no tensor at {'/'.join(path)!r}")
        return self._record_at(i)

    def read(self, path: EntryPath) -> "torch.Tensor":
        """One tensor's values, read on demand (memory-mapped where the format allows).

        Tensors read from one checkpoint share one private map per file (see ``bytesource.FileMaps``): clone a
        value before changing it in place if later reads must see the file's bytes."""
        rec = self.record(path)
        if not has_data(rec):
            raise NoDataError(f"{self.path}: '{'/'.join(path)}' holds no data (meta): it was saved from the meta "
                              "device, so the file has its shape and dtype but no values — save the state dict "
                              "after the model's weights are materialized (e.g. after load_state_dict(..., "
                              "assign=True) or to_empty() and initialisation)")
        return read_record(rec, file_label=self.path)

    def read_key(self, key: str, entry: str | EntryPath | None = None) -> "torch.Tensor":
        return self.read(self.resolve_entry(entry) + (key,))

    def read_key_array(self, key: str, entry: str | EntryPath | None = None):
        """One tensor's values as numpy (``np_values.Values``: raw bits for bfloat16/float8), the same view
        :meth:`read` gives, without importing torch where the format maps its bytes in place."""
        return self.read_array(self.resolve_entry(entry) + (key,))

    def read_array(self, path: EntryPath):
        """The values of the tensor at ``path`` as numpy, as :meth:`read_key_array`."""
        from .bytesource import read_array
        path = tuple(path)
        rec = self.record(path)
        if not has_data(rec):
            return self.read(path)   # raises NoDataError, saying why
        return read_array(rec, file_label=self.path)

    def load_object(self, entry: str | EntryPath | None = None, *, device: str = "meta") -> Any:
        """What ``torch.load`` would return at ``entry``, with tensors as ``device`` tensors.

        ``device="meta"`` gives data-less stand-ins of the right shape and dtype (for key matching); ``"cpu"`` reads
        values. A state dict keeps its ``_metadata`` (BatchNorm versions etc.), as torch relies on it.
        """
        path = self.resolve_entry(entry)
        if device == "meta" and not path and self._table is not None and self._root is None:
            from .materialize import Materializer
            out = Materializer.meta_table(self._table)   # no record per tensor
            if out is not None:
                return out
        return self._materializer().load(self.get(path), path, device)

    def meta_state_dict(self, entry: str | EntryPath | None, read_keys: set, read_prefixes: tuple = ()) -> Any:
        """The state dict at ``entry`` on the meta device for code that reads the values of only some keys: those in
        ``read_keys`` or starting with one of ``read_prefixes`` get what :meth:`load_object` gives them; each other
        key gets one tensor shared by every such key of its layout (shape, stride, dtype, parameter-ness): 10**6
        unexpected keys cost a dict entry each, not a tensor. The keys, their order, layouts and ``_metadata`` are
        those of ``load_object(entry, device="meta")``, in a :class:`PlainStateDict` (whatever mapping type the file
        had), and a layout ``load_object`` refuses is refused here too. ``out._stand_ins``: the ids of the shared
        tensors (a remap that makes such a key readable must give it a tensor of its own). None when that would not
        be a flat mapping of distinct tensors, or when anything is refused (``load_object`` then says why)."""
        path = self.resolve_entry(entry)
        table = self._table
        if table is not None and self._root is None and not path and table.columns is not None:
            return self._materializer().meta_state_dict(None, table, path, read_keys, read_prefixes)
        return self._materializer().meta_state_dict(self.get(path), None, path, read_keys, read_prefixes)

    def _materializer(self) -> "Materializer":
        if self._made is None:
            from .materialize import Materializer   # imports torch: only here, where tensors are made
            self._made = Materializer(self.path, self._records_unshared)
        return self._made

    def _records_unshared(self) -> bool:
        """Is every record of the file at one place only? The walk lists a record once per place it is found."""
        if self._unshared is None:
            recs = self._recs
            # records hash by identity (and were they equal by value, "shared" is the careful answer)
            self._unshared = recs is None or len(set(recs)) == len(recs)
        return self._unshared

    def close(self) -> None:
        """Nothing to release: no file stays open between reads (the Side protocol asks every side for close)."""

    def __repr__(self):
        return f"Checkpoint({self.path!r}, {self.format}, {len(self.entries)} tensors)"


class _KeysOnly:
    """Enough of a mapping for :func:`_score`: its keys."""

    __slots__ = ("_keys",)

    def __init__(self, keys):
        self._keys = keys

    def keys(self):
        return self._keys


def column_maker(paths, table: FlatTable | None, recs: list[TensorRecord] | None, kinds: dict[int, str],
                 label: str) -> Callable[[int, int], tuple]:
    """What makes the fields of the :class:`TensorInfo` of entries ``start..stop``, column-wise (the arguments of
    :func:`~explorer.core.entries.infos`). It holds the checkpoint's columns, not the checkpoint: a checkpoint
    holding a method of its own would be a reference cycle, kept (with its file maps) until a full collection."""
    if table is not None:
        return lambda start, stop: table.info_columns(paths[start:stop], start, stop)
    return lambda start, stop: record_info_columns(paths[start:stop], recs[start:stop], start, kinds,  # type: ignore
                                                   label)


def info_maker(columns: Callable[[int, int], tuple]) -> Callable[[int, int], list[TensorInfo]]:
    """What makes the :class:`TensorInfo` of entries ``start..stop`` from :func:`column_maker`'s columns."""
    return lambda start, stop: infos(*columns(start, stop))

