"""A checkpoint parsed once: the parse process hands the window what it listed.

Every file the window opens is parsed first in the parse process (:mod:`.parse_guard`), within a time limit. That
parse already knows everything the window shows at once -- every key's shape, dtype, size and place, the state
dicts, the objects the file names -- so it sends that back (a :class:`Listing`, column-wise, a chunk at a time) and
the window builds its side from it instead of parsing the file a second time: the open a user waits for pays one
parse, and a file the parse process still holds (a re-open) pays none.

The window's side is then a :class:`ListedSide`: the listed state dict's infos as the parse process made them, and
anything else (another state dict, values, a simulation's records) from the checkpoint opened in this process the
first time it is asked for -- in the worker that asks -- after checking the file is still the one listed.
"""
from __future__ import annotations

import os
import pickle
import threading
from dataclasses import dataclass, replace
from itertools import accumulate, compress, repeat
from operator import add, attrgetter, eq, is_not, sub

from ..core.gc_pause import gc_paused, let_others_run
from ..core.records import CHECKPOINT, INFO_FIELDS, LOCATION_FIELDS, Locations, Same, TensorInfo
from ..errors import FileChangedError

LISTING_MAX = 2_000_000   # tensors: a larger state dict is listed by the window itself, a slice at a time
                          # (10**6 tensors list here in ~1 s, ~30 MB, and decode there in ~0.9 s: the window's own
                          # parse of the same file took 2.8 s, and a re-open pays it again)
LISTINGS_KEPT = 3_000_000  # tensors the parse process keeps listed (of the last few files it read)
CHUNK = 10_000            # tensors per pickled chunk: the window decodes one (~10 ms) while the next is made

_AT, _PATH, _NBYTES = INFO_FIELDS.index("location"), INFO_FIELDS.index("path"), INFO_FIELDS.index("nbytes")
_RECORD, _STORAGE_KEY = LOCATION_FIELDS.index("record"), LOCATION_FIELDS.index("storage_key")
_DATA = "data/"
_INFO_GETTERS = [attrgetter(name) if name != "location" else None for name in INFO_FIELDS]
_LOCATION_GETTERS = [attrgetter(name) for name in LOCATION_FIELDS]
_RAW_LOCATION = attrgetter("_location")
_INDEX = attrgetter("_at")
_COUNT = attrgetter("count")


def stamp_of(text: str) -> tuple:
    """What says a local file (or folder) is unchanged: its path, modification time and size, and its inode and
    change time (another file moved over it, or one rewritten in place with its modification time set back -- the
    next checkpoint of a run, the same size, synced with its times -- is another stamp); a URL: its text. A
    folder's (a sharded checkpoint) holds those of every file in it too: a shard saved again under its own name
    changes the shard, not the folder."""
    try:
        st = os.stat(text)
    except (OSError, ValueError):
        return (text, 0, 0)
    if not os.path.isdir(text):
        return (text, st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns)
    files = []
    try:
        with os.scandir(text) as entries:
            for entry in entries:
                try:
                    est = entry.stat()
                except OSError:
                    continue
                files.append((entry.name, est.st_mtime_ns, est.st_size, est.st_ino, est.st_ctime_ns))
    except OSError:
        pass
    return (text, st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns, tuple(sorted(files)))


@dataclass
class Listing:
    """What the window shows of a checkpoint at once, as the parse process read it (plain data: strings, numbers,
    tuples and the core's records)."""

    text: str
    stamp: tuple
    label: str
    path: str | None
    format: str
    references: list
    state_dicts: list            # StateDictRef, best first
    entry: tuple | None          # the state dict listed (the side's default; None: it holds none)
    classes: dict                # module name -> ModuleInfo
    names: frozenset             # the checkpoint's public attributes (what the window's side answers by opening it)
    nbytes: int
    count: int
    chunks: "list | Received | None"   # pickled (keys, info columns, location columns, has-location mask) per CHUNK
                                 # tensors (paths as their shared prefix, torch.save's records as None, when they are
                                 # the usual); None: sent ahead, one by one, as each was made (the window's
                                 # :class:`Received` holds them decoded)


def _location_columns(raw: list, ats: list | range) -> tuple[list, list | None]:
    """Locations column-wise, as :class:`Location`'s fields (of the tensors that have one), and which have one (None:
    all). ``raw``: each tensor's Location, None, or the :class:`Locations` holding it at its index in ``ats``; taken
    from those columns when all share one (no Location made)."""
    mask: list | None = list(map(is_not, raw, repeat(None)))
    if all(mask):   # type: ignore[arg-type]
        mask = None
    else:
        raw, ats = list(compress(raw, mask)), list(compress(ats, mask))   # type: ignore[arg-type]
    if len(set(map(id, raw))) == 1 and type(raw[0]) is Locations:
        if type(ats) is range:   # a run of the table: its columns' own bulk
            return raw[0].span(ats.start, ats.stop), mask
        return raw[0].take(ats), mask
    locations = [loc[at] if type(loc) is Locations else loc for loc, at in zip(raw, ats)]
    return [list(map(g, locations)) for g in _LOCATION_GETTERS], mask


def _chunk(names: list, columns: list, raw_locations: list, ats: list) -> bytes:
    """One pickled chunk: ``names`` (keys), the other fields' ``columns`` (the location's None) and the locations
    (see :func:`_location_columns`)."""
    paths = columns[_PATH]
    prefix = paths[0][:-1]
    if all(map(eq, paths, map(add, repeat(prefix), zip(names)))):   # the usual: the entry's path, then the key
        columns[_PATH] = prefix
    for j, column in enumerate(columns):   # a column all one value (dtype, device, kind...): that value once
        if j != _PATH and j != _AT and column.count(column[0]) == len(column):
            columns[j] = Same(column[0])
    location_columns, mask = _location_columns(raw_locations, ats)
    records, storage_keys = location_columns[_RECORD], location_columns[_STORAGE_KEY]
    if type(records) is list and type(storage_keys) is list \
            and records == list(map(add, repeat(_DATA), storage_keys)):   # torch.save's "data/<storage key>"
        location_columns[_RECORD] = None
    return pickle.dumps((names, columns, location_columns, mask), protocol=pickle.HIGHEST_PROTOCOL)


def encode(infos: dict) -> list[bytes]:
    """``infos`` (key -> TensorInfo) column-wise, pickled :data:`CHUNK` entries at a time."""
    keys, values = list(infos), list(infos.values())
    chunks = []
    for start in range(0, len(keys), CHUNK):
        part = values[start:start + CHUNK]
        chunks.append(_chunk(keys[start:start + CHUNK], [list(map(g, part)) if g is not None else None
                                                         for g in _INFO_GETTERS],
                             list(map(_RAW_LOCATION, part)), list(map(_INDEX, part))))
    return chunks


def encode_columns(keys: list, fields: tuple) -> list[bytes]:
    """What :func:`encode` makes of the TensorInfos whose fields are ``fields`` (column-wise, as
    ``Checkpoint.state_dict_info_columns`` gives them), without making them."""
    locations = fields[_AT]
    chunks = []
    for start in range(0, len(keys), CHUNK):
        names = keys[start:start + CHUNK]
        stop = start + len(names)
        columns = [list(f[start:stop]) if j != _AT else None for j, f in enumerate(fields)]
        if type(locations) is Locations:
            raw, ats = [locations] * len(names), range(start, stop)
        else:
            raw, ats = list(locations[start:stop]), [0] * len(names)
        chunks.append(_chunk(names, columns, raw, ats))
    return chunks


def decode(chunks: list[bytes]) -> dict:
    """The key -> TensorInfo dict :func:`encode` took apart (other threads let run between two chunks); each
    Location is made when first read."""
    out: dict = {}
    with gc_paused():
        for i, chunk in enumerate(chunks):
            if i:
                let_others_run()
            decode_into(out, chunk)
    return out


def decode_into(out: dict, chunk: bytes) -> None:
    """Add one chunk's key -> TensorInfo items to ``out``."""
    keys, columns, location_columns, mask = pickle.loads(chunk)
    if type(columns[_PATH]) is tuple:
        prefix = columns[_PATH]
        columns[_PATH] = list(map(add, repeat(prefix), zip(keys))) if prefix else list(zip(keys))
    if location_columns[_RECORD] is None:
        location_columns[_RECORD] = list(map(add, repeat(_DATA), location_columns[_STORAGE_KEY]))
    table = Locations(*location_columns)
    columns = [repeat(c.value) if type(c) is Same else c for c in columns]
    if mask is None:
        columns[_AT], at = repeat(table), range(len(keys))
    else:   # the i-th entry that has a location is the table's i-th
        columns[_AT] = [table if m else None for m in mask]
        at = list(map(sub, accumulate(mask), repeat(1)))
    out.update(zip(keys, map(TensorInfo, *columns, at)))


class Received:
    """(In the window) the chunks of a listing the parse process sends ahead, decoded as they come -- while it makes
    the next -- into :attr:`infos` (a ``partial`` callback of ``ComputeProcess.call``; its caller pauses the
    collector until the side made of them is settled: see ``parse_guard._parse_there``)."""

    def __init__(self):
        self.infos: dict = {}
        self.chunks = 0

    def __call__(self, chunk: bytes) -> None:
        if self.chunks:
            let_others_run()
        decode_into(self.infos, chunk)
        self.chunks += 1


# ---- in the parse process ------------------------------------------------------------------------------------
_LISTINGS: dict[tuple, Listing] = {}


def listing_of(text: str, side, send=None) -> Listing | None:
    """The listing of ``side`` (opened from ``text`` in this process); None for a model, or a state dict of more
    than :data:`LISTING_MAX` tensors (the window lists those itself, a slice at a time). Kept while the file is
    unchanged: a re-open sends it again without making it again. ``send``: each chunk is passed to it as soon as it
    is made (the window decodes it meanwhile), and the listing returned holds none (``chunks`` None)."""
    if side.kind != CHECKPOINT:
        return None
    stamp = stamp_of(text)
    hit = _LISTINGS.pop(stamp, None)
    if hit is not None:
        _LISTINGS[stamp] = hit      # the most recently used last
        return _sent(hit, hit.chunks, send)
    refs = list(side.state_dicts)
    if refs and refs[0].tensors > LISTING_MAX:
        return None
    entry = side.default_state_dict
    columns = getattr(side, "state_dict_info_columns", None)
    bulk = columns(entry, CHUNK) if columns is not None and entry is not None else None
    chunks: list[bytes] = []
    if bulk is not None:   # listed in bulk: no TensorInfo made (what side_data would give, field for field)
        keys, parts = bulk
        count, nbytes = len(keys), 0
        if count > LISTING_MAX:
            return None
        start = 0
        for fields in parts:   # a run of CHUNK keys at a time, each sent on before the next is made
            names = keys[start:start + len(fields[0])]
            start += len(names)
            nbytes += sum(fields[_NBYTES])
            for chunk in encode_columns(names, fields):
                chunks.append(chunk)
                if send is not None:
                    send(chunk)
        try:
            classes = side.module_classes(entry)
        except Exception:   # classes are decoration (as side_data has it)
            classes = {}
    else:
        from .compare import side_data
        data = side_data(side, text, None)
        if len(data.infos) > LISTING_MAX:
            return None
        entry, classes, count, nbytes = data.entry, data.classes, len(data.infos), data.nbytes or 0
        for chunk in encode(data.infos):
            chunks.append(chunk)
            if send is not None:
                send(chunk)
    while _LISTINGS and (len(_LISTINGS) > 8 or sum(map(_COUNT, _LISTINGS.values())) + count > LISTINGS_KEPT):
        del _LISTINGS[next(iter(_LISTINGS))]    # the least recently used go first
    listing = _LISTINGS[stamp] = Listing(
        text, stamp, str(side.label), getattr(side, "path", None), side.format, list(side.references), refs,
        tuple(entry) if entry is not None else None, dict(classes),
        frozenset(name for name in dir(side) if not name.startswith("_")), nbytes, count, chunks)
    return _sent(listing, (), send)


def _sent(listing: Listing, chunks, send) -> Listing:
    """``listing`` as returned: whole without ``send``; else ``chunks`` (those not sent yet) sent, and a copy
    holding none."""
    if send is None:
        return listing
    for chunk in chunks:
        send(chunk)
    return replace(listing, chunks=None)


def forget(stamp: tuple) -> None:
    """Drop the listing kept for ``stamp``, if any."""
    _LISTINGS.pop(stamp, None)


# ---- in the window -------------------------------------------------------------------------------------------
class ListedSide:
    """A checkpoint side made from a :class:`Listing`: its listed state dict's infos and module classes, its state
    dicts, format and the objects it names are the parse process's; anything else is asked of the checkpoint opened
    here (once, by the first caller -- a worker -- after checking the file is unchanged since it was listed)."""

    kind = CHECKPOINT

    def __init__(self, listing: Listing, infos: dict):
        self.text = listing.text
        self.label = listing.label
        self.format = listing.format
        self.references = listing.references
        self.state_dicts = listing.state_dicts
        self._stamp = listing.stamp
        self._entry = listing.entry
        self._infos = infos
        self._classes = listing.classes
        self._names = listing.names
        self._default = listing.state_dicts[0].path if listing.state_dicts else None
        if listing.path is not None:
            self.path = listing.path
        self._side = None
        self._lock = threading.Lock()

    @property
    def default_state_dict(self):
        return self._default

    @property
    def is_opened(self) -> bool:
        """Has this process opened the checkpoint itself (something beyond the listing was asked for)?"""
        return self._side is not None

    def opened(self):
        """The checkpoint, opened in this process (the first call opens it)."""
        with self._lock:
            if self._side is None:
                if stamp_of(self.text) != self._stamp:
                    raise FileChangedError(f"{self.text}: the file changed since it was opened; open it again to "
                                           "see what it holds now")
                from ..core.side import open_side
                self._side = open_side(self.text)
            return self._side

    def _listed(self, entry) -> bool:
        if entry is None:
            return True
        return self._entry is not None and isinstance(entry, (tuple, list)) and tuple(entry) == self._entry

    def resolve_entry(self, entry=None):
        if entry is None and self._default is not None:
            return self._default
        return self.opened().resolve_entry(entry)

    def state_dict_infos(self, entry=None):
        return self._infos if self._listed(entry) else self.opened().state_dict_infos(entry)

    def module_classes(self, entry=None):
        return dict(self._classes) if self._listed(entry) else self.opened().module_classes(entry)

    def read_key(self, key: str, entry=None):
        return self.opened().read_key(key, entry)

    def close(self) -> None:
        side, self._side = self._side, None
        if side is not None:
            side.close()

    def __getattr__(self, name: str):
        # only what the checkpoint has opens it: a probe for anything else (getattr(side, "tree", None)) must not
        if name not in self.__dict__.get("_names", ()):
            raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")
        return getattr(self.opened(), name)

    def __repr__(self) -> str:
        return f"ListedSide({self.text!r}, {len(self._infos)} tensors{', opened' if self._side else ''})"


def side_data_of(listing: Listing):
    """The window's :class:`~.compare.SideData` of a listing (nothing parsed here)."""
    from .compare import SideData, settled
    from .config_model import config_model
    with gc_paused():   # frozen before the collector runs again: its first young collection would walk them all
        got = listing.chunks
        infos = got.infos if type(got) is Received else decode(got)
        return settled(SideData(ListedSide(listing, infos), listing.text, listing.entry, infos, dict(listing.classes),
                                nbytes=listing.nbytes, config_model=config_model(listing.text)))
