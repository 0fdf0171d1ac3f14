"""What a pass records: each ``copy_`` into a stand-in tensor (:class:`Copy`), in-place changes, and -- in the value
pass -- whether the copied value differs bit for bit from the model's current one."""
from __future__ import annotations

import os
from itertools import compress
from operator import attrgetter, ne
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from ..records import dtype_name
from .standins import StandIn

_SCRATCH_MAX = 1 << 31  # tensors larger than this get their own temporary
_VERSION_OF = attrgetter("_version")


class IdIndex:
    """id(checkpoint tensor) -> its key, built the first time it is looked in (a load that copies nothing -- every
    key unexpected -- never builds it)."""

    __slots__ = ("_keys", "_vals", "_d", "_versions", "_v0")

    def __init__(self, keys: list, vals: list):
        self._keys, self._vals = keys, vals
        self._d: dict | None = None
        self._v0: dict | None = None
        try:   # each tensor's version counter before the load: code that edits one in place bumps it
            self._versions = list(map(_VERSION_OF, vals))
        except Exception:   # inference tensors have none
            self._versions = None

    def edited(self) -> list:
        """Keys whose tensor was changed in place (``state_dict[k].mul_(0.5)`` in a hook) since the index was made,
        as far as version counters tell (a write through ``.data`` is not counted)."""
        if self._versions is None:
            return []
        try:
            now = list(map(_VERSION_OF, self._vals))
        except Exception:
            return []
        return list(compress(self._keys, map(ne, now, self._versions)))

    def is_edited(self, t) -> bool:
        """Has checkpoint tensor ``t`` been changed in place since the load began? (True when it cannot be told.)"""
        if self._versions is None:
            return True
        if self._v0 is None:
            self._v0 = dict(zip(map(id, self._vals), self._versions))
        v0 = self._v0.get(id(t))
        try:
            return v0 is None or t._version != v0
        except Exception:
            return True

    def _index(self) -> dict:
        if self._d is None:
            self._d = dict(zip(map(id, self._vals), self._keys))  # a tensor under two keys: the last one, as before
        return self._d

    def get(self, i, default=None):
        return self._index().get(i, default)

    def __contains__(self, i) -> bool:
        return i in self._index()


# ---- the recorder -----------------------------------------------------------------------------------------------

@dataclass
class Copy:
    src_key: str | None
    src_dtype: torch.dtype
    src_shape: tuple[int, ...]
    changed: bool | None = None       # value pass only
    error: str | None = None
    after: dict | None = None         # running-stat summary of the value copied in
    is_self: bool = False             # the source is the destination itself (BatchNorm filling num_batches_tracked)
    exact: bool = False               # the source is the checkpoint's tensor itself (not a view, not computed)
    src_ref: Any = None               # a real tensor a hook (or torch) made during the structural pass


class Recorder:
    """Records copies into stand-in tensors instead of performing them; in the value pass compares them."""

    def __init__(self, standin: StandIn, src_keys: dict[int, str], *, compare: bool,
                 progress: Callable[[int, int], Any] | None = None, total: int = 0,
                 should_stop: Callable[[], bool] | None = None, want_summary: set[int] | None = None):
        self.standin = standin
        self.src_keys = src_keys
        self.compare = compare
        self.copies: dict[int, list[Copy]] = {}
        self.inplace: dict[int, list[str]] = {}
        self.progress = progress
        self.total = total
        self.done = 0
        self.should_stop = should_stop
        self.cancelled = False
        self.internal_errors: list[str] = []
        self.want_summary = want_summary or set()
        self._buf: torch.Tensor | None = None
        self.record_of: Callable[[str], Any] | None = None   # checkpoint key -> TensorRecord (values pass)
        self.no_data: Callable[[str], bool] | None = None    # checkpoint key -> it has no values (meta)
        self._fds: dict[str, int] = {}

    def source_key(self, src) -> str | None:
        seen = 0
        while isinstance(src, torch.Tensor) and seen < 8:
            key = self.src_keys.get(id(src))
            if key is not None:
                return key
            src = src._base
            seen += 1
        return None

    def scratch(self, dest: torch.Tensor) -> torch.Tensor:
        """A tensor of ``dest``'s shape and dtype on the CPU, in one reused buffer: the values pass holds one tensor's
        worth of bytes at a time, and does not pay fresh pages for every tensor."""
        shape = tuple(dest.shape)
        n = 1
        for d in shape:
            n *= d
        nbytes = n * dest.element_size()
        if n == 0 or nbytes > _SCRATCH_MAX:
            return torch.empty(shape, dtype=dest.dtype)
        buf = self._buf
        if buf is None or buf.numel() < nbytes:
            buf = self._buf = torch.empty(max(nbytes, 1 << 16), dtype=torch.uint8)
        try:
            return buf[:nbytes].view(dest.dtype).view(shape)
        except (RuntimeError, TypeError):
            return torch.empty(shape, dtype=dest.dtype)

    def _read_into(self, src: torch.Tensor, tmp: torch.Tensor) -> bool:
        """Fill ``tmp`` with ``src``'s values read from the file with ``pread`` when ``src`` is exactly a checkpoint
        tensor stored contiguously (the same bytes its memory map would give, without a page fault per 4 KiB, which
        costs more than the read itself on some machines). False: let ``copy_`` read the memory map."""
        if self.record_of is None or src.dtype != tmp.dtype or src.is_meta or src.device.type != "cpu":
            return False
        key = self.src_keys.get(id(src))
        if key is None:
            return False
        if isinstance(self.src_keys, IdIndex) and self.src_keys.is_edited(src):
            return False   # code of the load changed it in place: the file's bytes are not what torch copies
        return self.read_key_into(key, tmp, tuple(src.shape))

    def read_key_into(self, key: str, tmp: torch.Tensor, shape: tuple | None = None) -> bool:
        """Read checkpoint tensor ``key`` into ``tmp`` (same dtype and shape, stored contiguously) with ``pread``."""
        try:
            rec = self.record_of(key)
            ref = rec.storage
            source = getattr(ref, "source", None)
            if source is None or getattr(ref, "view", None) is not None or rec.dtype != dtype_name(tmp.dtype):
                return False
            rshape = tuple(rec.shape)
            if rshape != tuple(tmp.shape) or (shape is not None and rshape != shape) or not tmp.is_contiguous():
                return False
            expect, acc = [], 1
            for d in reversed(rshape):
                expect.append(acc)
                acc *= max(d, 1)
            if any(d > 1 and st != e for d, st, e in zip(rshape, rec.stride, reversed(expect))):
                return False
            file, offset, length = source.region(ref)
            itemsize = tmp.element_size()
            start = rec.storage_offset * itemsize
            nbytes = tmp.numel() * itemsize
            if nbytes == 0 or start + nbytes > length:
                return False
            fd = self._fds.get(file)
            if fd is None:
                fd = self._fds[file] = os.open(file, os.O_RDONLY)
            view = memoryview(tmp.view(-1).view(torch.uint8).numpy())
            got = 0
            while got < nbytes:  # preadv may return less than asked (signals, huge reads)
                n = os.preadv(fd, [view[got:]], offset + start + got)
                if n <= 0:
                    return False
                got += n
            return True
        except Exception:  # anything unusual: the memory map is always right
            return False

    def close(self) -> None:
        for fd in self._fds.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds.clear()

    def on_copy(self, dest: torch.Tensor, src: Any):
        canon = self.standin.alias_of.get(id(dest))
        if canon is None:
            return self._record_copy(dest, src)
        self._record_copy(canon, src)   # ``param.data.copy_(x)``: a copy into the parameter itself
        return dest

    def _record_copy(self, dest: torch.Tensor, src: Any):
        if not isinstance(src, torch.Tensor):
            return torch.Tensor.copy_(dest, src)  # let torch raise its own TypeError
        is_self = src is dest  # a stand-in: never a checkpoint tensor (nor a view of one)
        ev = Copy(None if is_self else self.source_key(src), src.dtype, src.shape, is_self=is_self,
                   exact=not is_self and id(src) in self.src_keys)
        self.copies.setdefault(id(dest), []).append(ev)
        if src.is_meta and not is_self and ev.src_key is not None and not self.standin.orig_of[id(dest)].is_meta \
                and (self.compare or (self.no_data is not None and self.no_data(ev.src_key))):
            # the checkpoint's tensor has no data (saved from the meta device): torch's own copy raises, and the
            # error it raises is the one torch puts in its message
            try:
                torch.empty(1, dtype=dest.dtype).copy_(torch.empty(1, dtype=src.dtype, device="meta"))
            except Exception:
                self.copies[id(dest)].pop()
                raise
        if not self.compare and not ev.exact and not ev.is_self and not src.is_meta:
            ev.src_ref = src  # made during the load (e.g. torch.tensor(0)): its values are known without the file
        if not self.compare or self.cancelled:
            return dest
        if self.should_stop is not None and self.should_stop():
            self.cancelled = True
            return dest
        orig = self.standin.orig_of[id(dest)]
        if src.is_meta or orig.is_meta:
            ev.changed = None if not orig.is_meta else False
        else:
            tmp = self.scratch(dest)
            if ev.is_self:
                src = orig.detach()
            try:
                if not self._read_into(src, tmp):
                    tmp.copy_(src.detach())
            except Exception as ex:  # the same error torch would meet copying into the model: let torch record it
                ev.error = f"{type(ex).__name__}: {ex}"
                self.copies[id(dest)].pop()
                raise
            try:
                ev.changed = not same_bits(orig.detach(), tmp)
                if id(dest) in self.want_summary:
                    ev.after = summarize(tmp)
            except Exception as e:  # a bug of ours must not become part of torch's error text
                self.internal_errors.append(f"comparing {ev.src_key}: {type(e).__name__}: {e}")
                ev.changed = None
            del tmp
        self.done += 1
        if self.progress is not None:
            try:
                self.progress(self.done, max(self.total, self.done))
            except Exception as e:
                self.internal_errors.append(f"progress callback: {type(e).__name__}: {e}")
        return dest


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-for-bit equality (NaNs and -0.0 count as they are stored). Compared as bytes with numpy: single-threaded
    and vectorised, it is many times faster than ``torch.equal`` on a busy machine."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    a = a.detach().to("cpu")
    b = b.detach().to("cpu")
    if a.numel() == 0:
        return True
    try:
        ab = a.contiguous().reshape(-1).view(torch.uint8).numpy()
        bb = b.contiguous().reshape(-1).view(torch.uint8).numpy()
        return bool(np.array_equal(ab, bb))
    except (RuntimeError, TypeError):  # layouts numpy cannot see (quantized, ...)
        return bool(torch.equal(a, b))


def summarize(t: torch.Tensor) -> dict:
    """A short summary of a running statistic (or any tensor)."""
    t = t.detach()
    if t.is_meta:
        return {"shape": list(t.shape), "dtype": dtype_name(t.dtype)}
    out: dict[str, Any] = {"shape": list(t.shape), "dtype": dtype_name(t.dtype)}
    if t.numel() == 0:
        return out
    if t.numel() == 1 and not t.is_floating_point():
        out["value"] = int(t.reshape(-1)[0].item()) if t.dtype != torch.bool else bool(t.reshape(-1)[0].item())
        return out
    f = t.to(torch.float64)
    out.update(mean=float(f.mean()), min=float(f.min()), max=float(f.max()))
    if f.numel() > 1:
        out["std"] = float(f.std())
    return out
