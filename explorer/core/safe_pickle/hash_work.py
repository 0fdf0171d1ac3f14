"""The hashing budget: what the C unpickler would hash, checked before it runs."""
from __future__ import annotations

import _compat_pickle
import pickle
import re
import struct

from .limits import pickle_buffer
from .printable import holds_surrogates
from .stand_ins import ALLOWED_BUILTINS, RECORD_BUILDERS, TENSOR_MACHINERY

# The C unpickler hashes every dict key and set member it inserts, inside C: a 1 KB pickle whose key is a tuple DAG
# (t1 = (t0, t0), t2 = (t1, t1), ... 64 levels through the memo) makes that one insertion 2**64 steps, and nothing
# can interrupt it. So before a pickle loads, :func:`check_hash_work` walks its opcodes once, modelling what each
# stack item would cost to hash (a tuple: 1 + its items; anything else: 1, as ``hash`` of a str, int, record or
# placeholder is cheap and of a list or dict fails at once), and adds up the cost of every insertion the unpickler
# (or a stand-in that builds a set, a dict or a tuple from its arguments) would make. More than
# ``HASH_BUDGET + HASH_BUDGET_PER_BYTE * len(pickle)`` steps is refused, before anything is built.

HASH_BUDGET = 1 << 22
HASH_BUDGET_PER_BYTE = 4


class _Pass:
    """A callable the model cannot see into (a stand-in that may return or hash what it is given)."""

    __slots__ = ()


class _One:
    """A global that resolves to a placeholder or a record builder (its result hashes by identity)."""

    __slots__ = ()


_PASS = _Pass()
_ONE = _One()
_GLOBALS = (_Pass, _One)


def _callable_kind(module: str, name: str):
    """``_PASS`` for globals the unpickler resolves to a stand-in that may hash or return its arguments
    (``OrderedDict``, ``set``, ``torch.Size``, ``_rebuild_parameter``...), else 1 (placeholders, record builders)."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    elif module in _compat_pickle.IMPORT_MAPPING:
        module = _compat_pickle.IMPORT_MAPPING[module]
    key = (module, name)
    if key in RECORD_BUILDERS:
        return _ONE
    if key in TENSOR_MACHINERY or (module in ("builtins", "__builtin__") and name in ALLOWED_BUILTINS):
        return _PASS
    return _ONE


def _w(item) -> int:
    t = type(item)
    return item if t is int else item[0] if t is list else 1


def check_hash_work(buf, pos: int = 0, end: int | None = None) -> int:
    """Walk the pickle in ``buf`` (bytes or mmap) from ``pos`` to its STOP; raise ``pickle.UnpicklingError`` when its
    insertions would hash more than the budget allows. (Long: the opcode walk is a hot loop, one branch
    per opcode, its helpers closures over its locals.) Returns the position after STOP (or where the walk stopped:
    at an opcode the unpickler itself rejects, everything before it was checked, and the unpickler fails there).

    Stack items are modelled as ints (what hashing an immutable value costs) or one-element lists (a mutable
    container, shared by the memo: what ``tuple(it)`` would cost grows as items are added). Runs of state-dict items
    as torch.save writes them are checked at once by :class:`_TorchBatches`: whole batches, or a batch's pairs after
    the first ones, which name the globals the others fetch from the memo.
    """
    end = len(buf) if end is None else end
    budget = HASH_BUDGET + HASH_BUDGET_PER_BYTE * max(0, end - pos)
    cap = budget + 1
    u4, u8 = struct.Struct("<I").unpack_from, struct.Struct("<Q").unpack_from
    stack: list = []
    push, pop = stack.append, stack.pop
    marks: list = []
    memo: dict = {}
    memo_gen: dict = {}  # index >= 256 -> fast batches seen when it was written (LONG_BINPUT may overwrite it later)
    batches = _TorchBatches(memo)
    fast = 0             # fast batches so far
    unseen = 1           # what a GET of an index the walk did not record may cost (a fast batch wrote it)
    work = 0
    resume_at = {2 << k for k in range(20)}   # items since a batch's mark: 1, 2, 4... pairs walked

    def line(p):
        q = buf.find(b"\n", p, end)
        if q < 0:
            raise _Stop
        return q + 1

    def fence():
        return marks[-1] if marks else 0

    def to_mark():
        if not marks:
            raise _Stop
        m = marks.pop()
        items = stack[m:]
        del stack[m:]
        return items

    def pop1():
        if len(stack) <= fence():
            raise _Stop
        return pop()

    def top():
        if len(stack) <= fence():
            raise _Stop
        return stack[-1]

    def charge(n):
        nonlocal work
        work += n
        if work > budget:
            raise pickle.UnpicklingError(f"the pickle's dict keys or set members would take more than {budget:,} hashing "
                                "steps (tuples that share themselves through the memo: a hash bomb); refusing to "
                                "build them")

    def tuple_of(items):
        w = 1 + sum(map(_w, items))
        return w if w < cap else cap

    def call(fn, args_w):
        if fn is _PASS:
            charge(args_w)
            return [min(1 + args_w, cap)]
        return [1]

    def put(idx, item):
        memo[idx] = item
        if idx >= 256:
            memo_gen[idx] = fast
        batches.changed()

    def get(idx):
        item = memo.get(idx)
        if item is None:
            return unseen
        if fast and idx >= 256 and memo_gen.get(idx, -1) < fast:  # a fast batch may have written it since
            if type(item) is list:
                item[0] = max(item[0], unseen)
                return item
            return item if type(item) is not int else max(item, unseen)
        return item

    try:
        while pos < end:
            op = buf[pos]
            pos += 1
            if op == 0x4B or op == 0x43 or op == 0x8C or op == 0x55:  # K, C, SHORT_BINUNICODE, U
                n = buf[pos]
                pos += 1 + (0 if op == 0x4B else n)
                push(1)
            elif op == 0x71:  # q BINPUT
                put(buf[pos], top())
                pos += 1
            elif op == 0x68:  # h BINGET
                push(get(buf[pos]))
                pos += 1
            elif op == 0x58 or op == 0x42 or op == 0x54:  # X, B, T: 4-byte length
                if op == 0x58 and marks and type(stack[-1]) is list and len(stack) - marks[-1] in resume_at \
                        and marks[-1] > (marks[-2] if len(marks) > 1 else 0):
                    # (key, tensor) pairs walked one by one so far (the first tensors name their globals): the
                    # rest of the batch may be of the regular shape
                    stop = batches.match(buf, pos - 1, end)
                    if stop is not None:
                        items = to_mark()
                        keys = (stop - pos) // 10 + sum(map(_w, items[0::2]))
                        charge(keys)
                        target = stack[-1]
                        if type(target) is list:
                            target[0] = min(target[0] + keys, cap)
                        fast += 1
                        unseen = _TorchBatches.MAX_WEIGHT
                        pos = stop
                        continue
                pos += 4 + u4(buf, pos)[0]
                push(1)
            elif op == 0x72:  # r LONG_BINPUT
                put(u4(buf, pos)[0], top())
                pos += 4
            elif op == 0x6A:  # j LONG_BINGET
                push(get(u4(buf, pos)[0]))
                pos += 4
            elif op == 0x28:  # ( MARK
                if pos < end and buf[pos] == 0x58 and len(stack) > fence():
                    stop = batches.match(buf, pos, end)
                    if stop is not None:  # a whole SETITEMS batch of str keys and torch tensors: no mark left
                        keys = (stop - pos) // 10
                        charge(keys)
                        target = stack[-1]
                        if type(target) is list:
                            target[0] = min(target[0] + keys, cap)
                        fast += 1
                        unseen = _TorchBatches.MAX_WEIGHT
                        pos = stop
                        continue
                marks.append(len(stack))
            elif op == 0x74:  # t TUPLE
                push(tuple_of(to_mark()))
            elif 0x85 <= op <= 0x87:  # TUPLE1..3
                n = op - 0x84
                if len(stack) - fence() < n:
                    raise _Stop
                items = stack[-n:]
                del stack[-n:]
                push(tuple_of(items))
            elif op == 0x29:  # ) EMPTY_TUPLE
                push(1)
            elif op == 0x52:  # R REDUCE
                args = pop1()
                fn = pop1()
                push(call(fn, _w(args)))
            elif op == 0x81:  # NEWOBJ
                args = pop1()
                cls = pop1()
                push(call(cls, _w(args)))
            elif op == 0x92:  # NEWOBJ_EX
                kwargs = pop1()
                args = pop1()
                cls = pop1()
                push(call(cls, _w(args) + _w(kwargs)))
            elif op == 0x51:  # Q BINPERSID: persistent_load may hand the id back (a tuple)
                pid = pop1()
                push(min(1 + _w(pid), cap))
            elif op == 0x50:  # P PERSID (text)
                pos = line(pos)
                push(2)
            elif op == 0x4A or op == 0x84:  # J, EXT4
                pos += 4
                push(1 if op == 0x4A else _PASS)
            elif op == 0x4D or op == 0x83:  # M, EXT2
                pos += 2
                push(1 if op == 0x4D else _PASS)
            elif op == 0x82:  # EXT1
                pos += 1
                push(_PASS)
            elif op == 0x47:  # G BINFLOAT
                pos += 8
                push(1)
            elif op == 0x8A:  # LONG1
                pos += 1 + buf[pos]
                push(1)
            elif op == 0x8B:  # LONG4
                pos += 4 + u4(buf, pos)[0]
                push(1)
            elif op == 0x8D or op == 0x8E or op == 0x96:  # BINUNICODE8, BINBYTES8, BYTEARRAY8
                pos += 8 + u8(buf, pos)[0]
                push(1 if op != 0x96 else [1])
            elif op in (0x4E, 0x88, 0x89):  # None, True, False
                push(1)
            elif op == 0x5D or op == 0x7D or op == 0x8F:  # EMPTY_LIST, EMPTY_DICT, EMPTY_SET
                push([1])
            elif op == 0x6C:  # l LIST
                push([tuple_of(to_mark())])
            elif op == 0x64:  # d DICT
                items = to_mark()
                keys = sum(map(_w, items[0::2]))
                charge(keys)
                push([min(1 + keys, cap)])
            elif op == 0x75:  # u SETITEMS
                items = to_mark()
                keys = sum(map(_w, items[0::2]))
                charge(keys)
                target = top()
                if type(target) is list:
                    batches.changed()
                    target[0] = min(target[0] + keys, cap)
            elif op == 0x73:  # s SETITEM
                pop1()
                key = _w(pop1())
                charge(key)
                target = top()
                if type(target) is list:
                    batches.changed()
                    target[0] = min(target[0] + key, cap)
            elif op == 0x65 or op == 0x90:  # APPENDS, ADDITEMS
                items = sum(map(_w, to_mark()))
                if op == 0x90:
                    charge(items)
                target = top()
                if type(target) is list:
                    batches.changed()
                    target[0] = min(target[0] + items, cap)
            elif op == 0x61:  # a APPEND
                item = _w(pop1())
                target = top()
                if type(target) is list:
                    batches.changed()
                    target[0] = min(target[0] + item, cap)
            elif op == 0x91:  # FROZENSET
                items = sum(map(_w, to_mark()))
                charge(items)
                push(min(1 + items, cap))
            elif op == 0x62:  # b BUILD
                pop1()
                top()
            elif op == 0x30:  # 0 POP
                if marks and marks[-1] == len(stack):
                    marks.pop()
                else:
                    pop1()
            elif op == 0x31:  # 1 POP_MARK
                to_mark()
            elif op == 0x32:  # 2 DUP
                push(top())
            elif op == 0x94:  # MEMOIZE: the unpickler's index counts what fast batches wrote, which the walk did not
                if fast:
                    raise pickle.UnpicklingError("the pickle memoizes objects in a way torch.save never writes (MEMOIZE after "
                                        "protocol-2 state-dict items); refusing to build it")
                put(len(memo), top())
            elif op == 0x63 or op == 0x69:  # c GLOBAL, i INST
                a = line(pos)
                b = line(a)
                kind = _callable_kind(bytes(buf[pos:a - 1]).decode("utf-8", "replace"),
                                      bytes(buf[a:b - 1]).decode("utf-8", "replace"))
                pos = b
                if op == 0x63:
                    push(kind)
                else:
                    push(call(kind, tuple_of(to_mark())))
            elif op == 0x93:  # STACK_GLOBAL
                pop1()
                pop1()
                push(_PASS)
            elif op == 0x6F:  # o OBJ
                items = to_mark()
                if not items:
                    raise _Stop
                push(call(items[0], tuple_of(items[1:])))
            elif op == 0x67 or op == 0x70:  # g GET, p PUT (text index)
                a = line(pos)
                try:
                    idx = int(bytes(buf[pos:a - 1]))
                except ValueError:
                    raise _Stop from None
                pos = a
                if op == 0x67:
                    push(get(idx))
                else:
                    put(idx, top())
            elif op in (0x49, 0x4C, 0x46, 0x53, 0x56):  # INT, LONG, FLOAT, STRING, UNICODE (text)
                pos = line(pos)
                push(1)
            elif op == 0x80:  # PROTO
                pos += 1
            elif op == 0x95:  # FRAME: its bytes follow inline
                pos += 8
            elif op == 0x97:  # NEXT_BUFFER
                push([1])
            elif op == 0x98:  # READONLY_BUFFER
                top()
            elif op == 0x2E:  # STOP
                return pos
            else:  # an opcode the unpickler rejects: it fails there
                return pos
    except (_Stop, IndexError, struct.error):
        pass
    return pos


class _TorchBatches:
    """One regular expression that checks, at C speed, a whole ``SETITEMS`` batch as torch.save writes a state dict:
    ``( key tensor key tensor ... u``, each key a literal string and each tensor a ``_rebuild_tensor_v2(...)`` call
    over literals, small tuples and memo entries the walk knows to be cheap. Everything such a batch builds hashes in
    at most :data:`MAX_WEIGHT` steps (the grammar bounds it), so the walk need not see inside: the memo entries it
    writes are "unseen" (at most that), and it never overwrites an entry the walk recorded (its PUT indices exclude
    them). Anything else -- one item of another shape -- and the walk checks the batch opcode by opcode."""

    MAX_WEIGHT = 600   # 1 + 8 args of at most 1 + 8 * (1 + 8 * 8) ... (see the grammar): 530, with room
    MAX_COMPILES = 64

    def __init__(self, memo: dict):
        self.memo = memo
        self._rx = None
        self._dirty = True
        self._compiles = 0

    def changed(self):
        self._dirty = True

    def match(self, buf, pos: int, end: int):
        if self._dirty:
            if self._compiles >= self.MAX_COMPILES:
                return None
            self._rx = self._compile()
            self._compiles += 1
            self._dirty = False
        m = self._rx.match(buf, pos, end)
        return m.end() if m is not None else None

    def _compile(self, grammar_only: bool = False):
        """The batch pattern for the memo as it is; ``grammar_only``: the grammar alone, without the usual case
        tried first nor the atomic group (what the usual case must stay inside of; for the tests)."""
        cheap_h, cheap_j, taken = [], [], set()
        for idx, item in self.memo.items():
            cheap = isinstance(item, _GLOBALS) or (_w(item) <= 8 and type(item) in (int, list))
            if idx < 256:
                taken.add(idx)
                if cheap:
                    cheap_h.append(idx)
            elif isinstance(item, _GLOBALS) and len(cheap_j) < 64:
                cheap_j.append(struct.pack("<I", idx))

        def cls(values):   # a byte in ``values``: as a class of those bytes, or of all but the others when shorter
            values = set(values)
            if not values:
                return b"(?!)"
            if len(values) <= 128:
                return b"[" + b"".join(re.escape(bytes([v])) for v in sorted(values)) + b"]"
            others = set(range(256)) - values
            return b"[^" + b"".join(re.escape(bytes([v])) for v in sorted(others)) + b"]" if others else b"[\x00-\xff]"

        def lengths(n, fmt):
            return b"|".join(re.escape(struct.pack(fmt, k)) + (b".{%d}" % k if k else b"") for k in range(n + 1))

        key = (bytes(sorted(cheap_h)), bytes(sorted(taken)), tuple(cheap_j))
        rx = _COMPILED.get(key) if not grammar_only else None
        if rx is not None:
            return rx
        aj = b"|".join(re.escape(x) for x in cheap_j)
        geta = b"(?:h" + cls(cheap_h) + (b"|j(?:" + aj + b")" if aj else b"") + b")"
        put = (b"(?:q" + cls(set(range(256)) - taken) + b"|r" + (b"(?!" + aj + b")" if aj else b"")
               + b"(?!.\x00\x00\x00)....)?")
        a0p = (b"(?:K.|M..|J....|N|\x88|\x89|G.{8}|\x8a(?:" + lengths(8, "<B") + b")|X(?:" + lengths(24, "<I")
               + b")|" + geta + b")" + put)
        tup = b"\\((?:" + a0p + b"){0,8}t" + put
        arg = (b"(?:" + tup + b"(?:Q" + put + b")?|\\)" + put + b"|" + geta + b"(?:\\)R)?" + put + b"|" + a0p
               + b"(?:Q" + put + b"|\x85" + put + b"|" + a0p + b"(?:\x86" + put + b"|" + a0p + b"\x87" + put + b"))?)")
        args = b"(?:" + arg + b"){0,8}t" + put + b"R" + put
        tensor = geta + put + b"\\(" + args
        # the same grammar's usual case, tried first (no alternatives to try and give up): a tensor as torch.save
        # writes it, _rebuild_tensor_v2((pid), offset, shape, stride, requires_grad, OrderedDict()); every part is
        # one of ``arg``'s (the persistent id a tuple of five ``a0p`` and Q, the sizes ``a0p``s and a tuple opcode or
        # ``tup``, the flag an ``a0p``, the hooks ``geta)R``), so it matches nothing ``tensor`` does not
        ip = b"(?:K.|M..|J....)" + put
        sizes = (b"(?:\\)" + put + b"|" + ip + b"(?:\x85" + put + b"|" + ip + b"(?:\x86" + put + b"|" + ip + b"\x87"
                 + put + b"))|\\((?:" + ip + b"){0,8}t" + put + b")")
        pid = (b"\\((?:(?:" + geta + b"|X(?:" + lengths(24, "<I") + b")|K.|M..|J....)" + put + b"){5}t" + put + b"Q"
               + put)
        usual = pid + ip + sizes + sizes + b"[\x88\x89]" + put + geta + b"\\)R" + put + b"t" + put + b"R" + put
        # the tensor's callable and mark read once: any other first argument passes on to ``args`` at one byte's cost
        pair = b"X(?:" + lengths(255, "<I") + b")" + put + geta + put + b"\\((?:" + usual + b"|" + args + b")"
        if grammar_only:
            return re.compile(b"(?:X(?:" + lengths(255, "<I") + b")" + put + tensor + b")+u", re.DOTALL)
        if len(_COMPILED) >= 64:
            _COMPILED.clear()
        rx = _COMPILED[key] = re.compile(b"(?>" + pair + b")+u", re.DOTALL)
        return rx


# the batch patterns of the memo layouts seen last (a file opened again, files written alike, need no compile)
_COMPILED: dict = {}


class _Stop(Exception):
    """The model reached something the unpickler itself rejects (it fails there, having built nothing worse)."""


def check_pickle_stream(file, strict: bool = False, walk: bool = True) -> bool:
    """:func:`check_hash_work` over what ``file`` holds from its position on (its position is left as it was).
    Returns whether the pickle spells a lone surrogate (its keys must then be made printable). Bytes that cannot be
    seen are not walked; ``strict``: they raise ``OSError`` instead (a walk made for another process must walk).
    ``walk=False``: only the surrogate answer, to the record's end (for a pickle walked elsewhere:
    ``torch_zip.precheck``)."""
    got = pickle_buffer(file)
    if got is None:
        if strict:
            raise OSError("the pickle's bytes could not be mapped, so they were not walked")
        return False
    buf, start, end, release = got
    try:
        stop = check_hash_work(buf, start, end) if walk else end
        return holds_surrogates(buf, start, stop)
    finally:
        if release is not None:
            release()
