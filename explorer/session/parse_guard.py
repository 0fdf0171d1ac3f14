"""Opening a checkpoint without letting its parse hold the window.

Plain Python (no Qt), run in a worker thread. The readers parse pickles with Python's C unpickler: a hostile file
can keep it busy in C code (hashing a 64-level tuple DAG) that never lets another thread of the process run -- the
window's GUI thread included, so no timer, no repaint, no screenshot. So a file is parsed first in a separate parse
process (``compute_process.parse_engine``; not niced like the number-crunching one, as the user waits for it), with a
time limit; only a file that parses there within it is parsed in the window's process. A parse past the limit is
stopped (the parse process is killed and restarts on the next request) and reported as an expected error. Model
specs are not probed: building a model runs the user's own code, once. A URL is probed too (its header is fetched
there, into the mirror this process then reads from: a hostile remote pickle is as dangerous as a local one).
A first open of a local torch.save file walks its ``data.pkl`` for hashing work here, while the parse process
unpickles it without that walk (:func:`_parse_there`).
"""
from __future__ import annotations

import os
import threading
from typing import Any, Callable

from explorer.errors import ExplorerError, ParseTimeout, ReaderDied


def _timeout_from_env(default: float = 60.0) -> float:
    try:
        value = float(os.environ.get("STATE_DICT_EXPLORER_PARSE_TIMEOUT", default))
    except ValueError:
        return default
    return value if value > 0 else default


PARSE_TIMEOUT_S = _timeout_from_env()     # STATE_DICT_EXPLORER_PARSE_TIMEOUT=SECONDS changes it


_UNCHECKED: set = set()   # (in the parse process) stamps of files opened with data.pkl's walk left to the window


def probe(text: str, *, checked_elsewhere: tuple | None = None, progress=None, should_stop=None, partial=None):
    """In the parse process: open ``text`` (kept in its cache of open files while unchanged) and give what it
    listed (a :class:`~.listing.Listing`, or None: the window then parses the file itself). ``checked_elsewhere``:
    the file's ``torch_zip.file_token``, when the window walks its ``data.pkl`` itself (``torch_zip.precheck``):
    this parse then skips that walk; the window uses its answer only once the walk passed. ``partial`` (a call's
    own): the listing's chunks are sent ahead through it, each as soon as it is made (the window decodes one while
    the next is made: ``listing.Received``)."""
    from explorer.core.gc_pause import gc_paused
    from explorer.core.loaders.torch_zip import hash_checked_elsewhere

    from . import detail_compute, listing
    from .compare import settled
    # what this process keeps of the parse (the open file, its listing: ~10**5 objects per 50k tensors, of up to 9
    # files) is never walked by a collection: those walks cost 40-130 ms of each open here, growing with the files
    # kept. Evicted files are freed by their reference counts (a checkpoint holds no cycle).
    with gc_paused():
        stamp = listing.stamp_of(text)
        if checked_elsewhere is None and stamp in _UNCHECKED:   # no walk in the window this time: parse it afresh
            _UNCHECKED.discard(stamp)
            detail_compute.forget_opened(stamp)
            listing.forget(stamp)
        with hash_checked_elsewhere(checked_elsewhere) as scope:
            side = detail_compute.open_cached(text, stamp)
        if scope.skipped:
            _UNCHECKED.add(stamp)
        return settled(listing.listing_of(text, side, send=partial))


def warm(*, progress=None, should_stop=None) -> None:
    """In the parse process: import the readers, so the first open pays only its own parse."""
    from explorer.core.loaders import readers

    from .detail_compute import open_cached  # noqa: F401 - imported for its imports
    readers()


def warm_parse_process(*, progress=None, should_stop=None) -> None:
    """Start the parse process and import the readers in it (worker thread; the window does this after its first
    paint: starting a process and importing the readers takes 0.3-1 s, which the first File -> Open waited for)."""
    from .compute_process import parse_engine
    eng = parse_engine()
    if not eng.ever_started:    # an open got there first: it starts the process itself (and a killed one stays so)
        eng.call(warm, timeout=120.0, should_stop=should_stop)


def probe_whole(text: str, *, progress=None, should_stop=None, partial=None):
    """:func:`probe`, for a URL the user agreed to download whole (its server ignores Range requests)."""
    from explorer.core.remote.mirror import allow_whole_file
    allow_whole_file(text)
    return probe(text, partial=partial)


def open_guarded(text: str, entry=None, *, timeout_s: float = PARSE_TIMEOUT_S, probe_fn: Callable[..., Any] = probe,
                 download: bool = False, progress=None, should_stop=None):
    """``compare.load_side_data(text, entry)`` once ``text`` has parsed in the parse process within ``timeout_s``
    (the worker half of File -> Open) -- or, when that parse sent its listing, the side made from it (nothing parsed
    here: :mod:`.listing`). ``download``: the URL ``text`` may be fetched whole (the user agreed: its
    server ignores Range requests); the parse process downloads it into the shared cache, this one reads it there."""
    if download:
        from explorer.core.remote.mirror import allow_whole_file
        allow_whole_file(text)
        probe_fn = probe_whole
    from explorer.core.model_spec import looks_like_model_spec

    from . import compare as C
    from . import listing
    from explorer.core.remote.files import is_remote
    _ReadAhead.wanted(text)
    if (is_remote(text) or os.path.lexists(text)) and not looks_like_model_spec(text):
        from .compute_process import CallTimeout
        listed = None
        try:
            listed = _parse_there(text, probe_fn, timeout_s, should_stop)
        except CallTimeout:
            raise ParseTimeout(
                f"{text}: reading it did not finish within {timeout_s:g} s and was stopped (a file built to make "
                "parsers hang, or a path that never answers?)") from None
        except ExplorerError:
            raise              # the reader's own clear message (not a checkpoint, damaged, ...)
        except MemoryError:
            raise ReaderDied(f"{text}: reading it needs more memory than there is; the file was not opened here, so "
                             "the window stays up") from None
        except RuntimeError as e:
            if "compute process died" in str(e):
                raise ReaderDied(f"{text}: reading it stopped the reading process ({e}); the file was not opened "
                                 "here, so the window stays up. `python main.py inspect FILE` may say why.") from None
            # any other failure: the window's own parse below reports it as it would
        except Exception:  # noqa: BLE001 - the same: the parse below reports it (with its traceback, if unexpected)
            pass
        if isinstance(listed, listing.Listing) and entry in (None, listed.entry):   # parsed there: not again here
            return listing.side_data_of(listed)
    return C.load_side_data(text, entry, progress=progress, should_stop=should_stop)


def _wait(done, should_stop=None, timeout: float | None = None) -> bool:
    """Wait for the event ``done``, at most ``timeout`` seconds and not past ``should_stop``: was it set?"""
    import time
    end = None if timeout is None else time.monotonic() + timeout
    while not done.wait(0.05):
        if (should_stop is not None and should_stop()) or (end is not None and time.monotonic() > end):
            return False
    return True


PRECHECK_MIN = 1 << 20   # bytes: a smaller file's data.pkl is walked in the parse process (a few ms there)


class _ReadAhead:
    """One drag's read-ahead (in the window): the files it reads, and whether it is to give way."""

    running: "list[_ReadAhead]" = []
    reading: dict = {}         # file some read-ahead is parsing now -> (threading.Event set when done, [timed out])
    kept: dict = {}            # file -> (the listing the newest read-ahead made of it, decoded here; the files of
                               # that read-ahead): the open of the file takes it while the file is the one listed
                               # (``listing.stamp_of``), an open of none of those files drops it
    KEPT_MAX = 100_000         # tensors: a larger listing is not kept (nor decoded past that: the open is sent it)
    lock = threading.Lock()    # a read-ahead keeps a listing, or a newer one or an open drops them: one at a time

    def __init__(self, texts: list[str]):
        self.texts = set(texts)
        self.give_way = False      # an open asks for another file: stop (the parse process too, if it parses)
        self.superseded = False    # a newer read-ahead came: parse nothing more (what is parsing finishes)

    @classmethod
    def wait_for(cls, text: str, should_stop):
        """An open of ``text`` while a read-ahead parses it: wait for that parse (not parse it a second time, for as
        long), and raise ``CallTimeout`` when it ran out of time. Then the listing a read-ahead made of ``text``,
        decoded here, while the file is unchanged since (None: the open asks the parse process, which has it)."""
        from .compute_process import CallTimeout
        from explorer.errors import Cancelled
        got = cls.reading.get(text)
        if got is not None:
            done, timed_out = got
            if not _wait(done, should_stop):
                raise Cancelled(f"{text}: cancelled")
            if timed_out[0]:
                raise CallTimeout(f"{text}: its parse ran out of time")
        from .listing import stamp_of
        listed, _ = cls.kept.pop(text, (None, None))
        return listed if listed is not None and listed.stamp == stamp_of(text) else None

    @classmethod
    def wanted(cls, text: str) -> None:
        """An open asks for ``text``: a read-ahead of other files gives way (the one of ``text`` is waited for), and
        what one kept of another file is dropped."""
        for ahead in list(cls.running):
            if text not in ahead.texts:
                ahead.give_way = True
        with cls.lock:
            for other, (_, texts) in list(cls.kept.items()):
                if text not in texts:
                    del cls.kept[other]


def read_ahead(texts, *, probe_fn=probe, timeout_s: float = PARSE_TIMEOUT_S) -> None:
    """Parse ``texts`` -- local files and folders dragged over the window, not dropped yet -- in the parse process
    (with the window's walk of a torch.save file's ``data.pkl``), so that the open that follows their drop finds
    them parsed: the listing, decoded here, is kept for that open (``_ReadAhead.kept``; the parse process keeps it
    too). It gives way to an open of another file (the parse process is stopped at once), and never reports
    anything. Blocking: for a thread of its own."""
    import threading

    from explorer.core.model_spec import looks_like_model_spec
    from explorer.core.remote.files import is_remote

    from .compute_process import CallTimeout
    from .listing import Listing, Received, stamp_of
    ahead = _ReadAhead(list(texts))
    for older in list(_ReadAhead.running):
        older.superseded = True
    with _ReadAhead.lock:
        _ReadAhead.kept.clear()     # what an older one kept: this one's files replace it
    _ReadAhead.running.append(ahead)
    try:
        for text in texts:
            if ahead.give_way or ahead.superseded or is_remote(text) or not os.path.exists(text) \
                    or looks_like_model_spec(text):
                continue
            mine = (threading.Event(), [False])
            if _ReadAhead.reading.setdefault(text, mine) is not mine:   # another read-ahead parses it
                continue
            done, timed_out = mine
            try:
                listed = _parse_there(text, probe_fn, timeout_s, None, give_way=lambda: ahead.give_way,
                                      skip=lambda: ahead.give_way or ahead.superseded)
                if isinstance(listed, Listing) and isinstance(listed.chunks, Received) \
                        and listed.count <= _ReadAhead.KEPT_MAX and listed.stamp == stamp_of(text):
                    with _ReadAhead.lock:
                        if not (ahead.give_way or ahead.superseded):
                            _ReadAhead.kept[text] = (listed, ahead.texts)
            except CallTimeout:
                timed_out[0] = True
            except Exception:  # noqa: BLE001 - the open, if the file is dropped, parses it again and reports
                pass
            finally:
                done.set()
                if _ReadAhead.reading.get(text) is mine:
                    del _ReadAhead.reading[text]
    finally:
        _ReadAhead.running.remove(ahead)


def _parse_there(text: str, probe_fn, timeout_s: float, should_stop, give_way=None, skip=None):
    """``probe_fn(text)`` in the parse process. A local torch.save file of :data:`PRECHECK_MIN` bytes or more has
    its ``data.pkl`` walked for hashing work here meanwhile (``torch_zip.precheck``; that parse skips the walk), and
    the parse's answer -- a listing or an error -- is the answer only once the walk passed. When it did not, the
    parse process may be building what the walk refuses, or hold it: it is killed, and the file parsed there again
    the usual way (walk first), which gives the usual answer. ``give_way`` (a read-ahead's): once it returns true,
    the parse process is stopped at once and ``CallAborted`` raised; nothing is parsed again. ``skip`` (a
    read-ahead's): when it returns true once the parse process is free, nothing is parsed (``CallAborted``)."""
    import gc
    import time

    from explorer.core.gc_pause import gc_paused

    from .compute_process import CallAborted, parse_engine
    from .listing import Listing, Received
    if give_way is None:
        ahead = _ReadAhead.wait_for(text, should_stop)
        if ahead is not None:    # read ahead, and decoded here already
            return ahead
    eng = parse_engine()
    end = time.monotonic() + timeout_s
    # the listing is decoded here a chunk at a time as the parse process sends it, while it makes the next (a
    # read-ahead's: its first KEPT_MAX tensors, kept for the open only if that is all of it)
    received = Received() if probe_fn in (probe, probe_whole) else None

    def call(**kwargs):
        if received is None:
            got = eng.call(probe_fn, text, timeout=timeout_s, should_stop=should_stop, **kwargs)
        elif give_way is None:   # an open: no collection walks what arrives meanwhile; then it is frozen out of their
            with gc_paused():    # reach (as settled does)
                got = eng.call(probe_fn, text, timeout=timeout_s, should_stop=should_stop, partial=received, **kwargs)
                gc.freeze()
        else:    # a read-ahead: the collector paused per chunk only, nothing frozen (what the GUI thread drops
            # meanwhile stays collectable); the open that takes the listing settles it
            def take(chunk: bytes) -> None:
                if len(received.infos) < _ReadAhead.KEPT_MAX:
                    with gc_paused():
                        received(chunk)
            got = eng.call(probe_fn, text, timeout=timeout_s, should_stop=should_stop, partial=take, **kwargs)
            if isinstance(got, Listing) and got.chunks is None and len(received.infos) != got.count:
                return got           # not all of it decoded here: not to be kept (the open is sent it again)
        if isinstance(got, Listing) and got.chunks is None:   # sent ahead: what arrived must be all of it
            if received is None or len(received.infos) != got.count:
                raise RuntimeError(f"{text}: the parse process's listing arrived incomplete")
            got.chunks = received
        return got

    def passed() -> bool:   # the walk, waited for within what is left of the time limit
        return check.passed(max(0.1, end - time.monotonic()), should_stop)
    with eng.held():   # another open's parse runs before this one or after it, never killed by it
        if skip is not None and skip():
            raise CallAborted(f"{text}: not read ahead (no longer wanted)")
        check = _Precheck.of(text) if probe_fn is probe else None
        if check is None:
            return call(abort=give_way)
        aborts = check.failed if give_way is None else (lambda: check.failed() or give_way())
        try:
            listed = call(checked_elsewhere=check.token, abort=aborts)
        except CallAborted:
            if give_way is not None:
                raise
        except BaseException:
            if passed():
                raise
        else:
            if passed():
                return listed
        eng.stop_now()
        if give_way is not None:
            raise CallAborted(f"{text}: not read ahead (its data.pkl's walk did not pass)")
        if should_stop is not None and should_stop():    # cancelled while the walk ran: not parsed again
            from explorer.errors import Cancelled
            raise Cancelled(f"{text}: cancelled")
        if received is not None:
            received = Received()   # what the killed parse sent is dropped
        return call()


class _Precheck:
    """``torch_zip.precheck`` of one file, in a thread of the window's process (a file it passed before, unchanged
    since -- a re-open -- is not walked again)."""

    passed_before: set = set()   # tokens of the files whose walk passed (bounded below)

    def __init__(self, text: str, token: tuple):
        import threading
        self.token = token
        self._ok = False
        self._done = threading.Event()
        if token in self.passed_before:
            self._ok = True
            self._done.set()
        else:
            threading.Thread(target=self._run, args=(text,), name="data.pkl hashing-work walk", daemon=True).start()

    @classmethod
    def of(cls, text: str) -> "_Precheck | None":
        """The walk of ``text``'s ``data.pkl``, started; None unless ``text`` is a local torch.save file of
        :data:`PRECHECK_MIN` bytes or more."""
        from explorer.core.loaders import torch_zip
        from explorer.core.remote.files import is_remote
        if is_remote(text):
            return None
        try:
            st = os.stat(text)
            if not os.path.isfile(text) or st.st_size < PRECHECK_MIN or not torch_zip.identify(text):
                return None
        except (OSError, ValueError):
            return None
        return cls(text, torch_zip.token_of_stat(st))

    def _run(self, text: str) -> None:
        from explorer.core.loaders.torch_zip import precheck
        try:
            precheck(text, self.token)   # walked and within budget, or left to the parse process: either passes
            self._ok = True
            if len(self.passed_before) > 1000:
                self.passed_before.clear()
            self.passed_before.add(self.token)
        except BaseException:  # noqa: BLE001 - refused, or could not walk: the parse process's answer is not used
            self._ok = False
        finally:
            self._done.set()

    def failed(self) -> bool:
        """Done and did not pass (without waiting)."""
        return self._done.is_set() and not self._ok

    def passed(self, timeout: float | None = None, should_stop=None) -> bool:
        """Waits for the walk (at most ``timeout`` seconds, and not past ``should_stop``): did it pass? A walk
        that did not end -- a file on a mount that stopped answering -- did not."""
        return _wait(self._done, should_stop, timeout) and self._ok
