"""The bulk paths of opening and listing a torch.save file give exactly what the careful per-entry ones give.

Listing describes the storages of a zip pickle column-wise, from their raw persistent ids (no ``StorageRef`` each,
``PickleContext.storage_columns``); the per-storage resolution is kept for anything irregular. Each test lists a
file both ways (the bulk path switched off by a monkeypatch) and compares, including files whose persistent ids
disagree for one key, where the first one resolved decides what every tensor of that key shows.
"""
from __future__ import annotations

import io
import pickle
from collections import OrderedDict

import pytest
import torch

from explorer.core.checkpoint import Checkpoint
from explorer.core.loaders import open_checkpoint
from explorer.core.loaders.torch_zip import unpickle
from explorer.core.safe_pickle.stand_ins import PickleContext


class _Storage:
    """A storage as torch.save's persistent id names it: ``('storage', type, key, location, numel)``."""

    def __init__(self, *pid):
        self.pid = pid


class _Tensor:
    def __init__(self, storage, shape, offset=0, stride=None):
        self.args = (storage, offset, tuple(shape), tuple(stride or _contiguous(shape)), False, OrderedDict())

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, self.args


def _contiguous(shape):
    out, acc = [], 1
    for s in reversed(shape):
        out.append(acc)
        acc *= s
    return tuple(reversed(out))


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        return obj.pid if isinstance(obj, _Storage) else None


def _open(obj, label="mem.pt") -> Checkpoint:
    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump(obj)
    buf.seek(0)
    root, refs = unpickle(buf, label, None)
    return Checkpoint(label, "torch-zip", root, refs)


def _both_ways(monkeypatch, make):
    """(infos listed the bulk way, infos listed the careful way, the two checkpoints)."""
    fast = make()
    fast_infos = list(fast.entries)
    with monkeypatch.context() as m:
        m.setattr(PickleContext, "storage_columns", lambda self, pids: None)
        slow = make()
        slow_infos = list(slow.entries)
    return fast_infos, slow_infos, fast, slow


F = torch.FloatStorage
H = torch.HalfStorage
U = torch.UntypedStorage


@pytest.mark.parametrize("name,obj", [
    ("distinct", {"a": _Tensor(_Storage("storage", F, "0", "cpu", 4), (4,)),
                  "b": _Tensor(_Storage("storage", H, "1", "cuda:0", 6), (2, 3))}),
    ("shared", {"a": _Tensor(_Storage("storage", F, "0", "cpu", 8), (4,)),
                "b": _Tensor(_Storage("storage", F, "0", "cpu", 8), (4,), offset=4),
                "c": _Tensor(_Storage("storage", F, "1", "cpu", 8), (2, 2), stride=(1, 2)),
                "d": _Tensor(_Storage("storage", F, "2", "cpu", 2), (2,))}),
    ("mostly-shared", {"a": _Tensor(_Storage("storage", F, "0", "cpu", 8), (4,)),
                       "b": _Tensor(_Storage("storage", F, "0", "cpu", 8), (4,), offset=4),
                       "c": _Tensor(_Storage("storage", F, "0", "cpu", 8), (2, 2), stride=(1, 2))}),
    ("untyped", {"a": _Tensor(_Storage("storage", U, "0", "cpu", 16), (4,))}),
    ("conflicting", {"a": _Tensor(_Storage("storage", F, "0", "cpu", 4), (4,)),
                     "b": _Tensor(_Storage("storage", F, "0", "cpu", 400), (4,))}),
    ("invalid-second", {"a": _Tensor(_Storage("storage", F, "0", "cpu", 4), (4,)),
                        "b": _Tensor(_Storage("storage", F, "0", "cpu", -1), (4,))}),
    ("int-key", {"a": _Tensor(_Storage("storage", F, 0, "cpu", 4), (4,))}),
    ("nested", {"model": {"a": _Tensor(_Storage("storage", F, "0", "cpu", 4), (4,))},
                "ema": {"a": _Tensor(_Storage("storage", F, "0", "cpu", 12), (4,))}}),
])
def test_bulk_listing_is_the_careful_one(monkeypatch, name, obj):
    fast, slow, fast_ck, slow_ck = _both_ways(monkeypatch, lambda: _open(obj))
    assert fast == slow
    ctx = fast_ck._recs[0]._ctx
    assert (not ctx.refs and len(ctx.listed) > 0) == (name in ("distinct", "shared", "untyped"))  # the bulk way?
    assert list(fast_ck.entry_columns()) == list(slow_ck.entry_columns())
    # a value read after listing resolves the storage the listing showed
    for info in fast:
        ref = fast_ck.record(info.path).storage
        assert (ref.nbytes, ref.device, ref.key) == (info.location.storage_nbytes, info.device,
                                                     info.location.storage_key)


def test_invalid_first_id_still_fails(monkeypatch):
    obj = {"a": _Tensor(_Storage("storage", F, "0", "cpu", -1), (4,))}
    from explorer.errors import CorruptFileError
    with pytest.raises(CorruptFileError, match="invalid size"):
        list(_open(obj).entries)


def test_a_read_before_listing_decides_as_before(monkeypatch):
    """Reading ``b`` first makes its id the one key "0" stands for; the listing then says so for ``a`` too."""
    obj = {"a": _Tensor(_Storage("storage", F, "0", "cpu", 4), (4,)),
           "b": _Tensor(_Storage("storage", F, "0", "cpu", 400), (4,))}

    def make():
        ck = _open(obj)
        ck.record(("b",)).storage
        return ck
    fast, slow, _, _ = _both_ways(monkeypatch, make)
    assert fast == slow
    assert {i.location.storage_nbytes for i in fast} == {1600}


def test_listing_chunks_agree(monkeypatch):
    """State dicts listed one after the other (separate bulk calls) see the storage the first listing took."""
    obj = {"model": {"a": _Tensor(_Storage("storage", F, "0", "cpu", 4), (4,))},
           "ema": {"a": _Tensor(_Storage("storage", F, "0", "cpu", 12), (4,))}}

    def make():
        ck = _open(obj)
        ck.state_dict_infos("ema")
        return ck
    fast_ck = make()
    with monkeypatch.context() as m:
        m.setattr(PickleContext, "storage_columns", lambda self, pids: None)
        slow_ck = make()
    for entry in ("model", "ema"):
        assert fast_ck.state_dict_infos(entry) == slow_ck.state_dict_infos(entry)


def test_real_file_with_views_and_tied_weights(monkeypatch, tmp_path):
    w = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    sd = {"emb.weight": w, "head.weight": w, "half": w[2:], "t": w.t(), "h": torch.ones(3, dtype=torch.float16),
          "meta": torch.empty(2, device="meta"), "i": torch.tensor([1, 2], dtype=torch.int64)}
    path = str(tmp_path / "tied.pt")
    torch.save({"state_dict": sd, "epoch": 3}, path)
    fast, slow, fast_ck, _ = _both_ways(monkeypatch, lambda: open_checkpoint(path))
    assert fast == slow
    for info in fast:
        if info.has_data:
            assert torch.equal(fast_ck.read(info.path), sd[info.path[-1]])


# ---- the hash-work walk's batch pattern ------------------------------------------------------------------------

def _layouts(i: int):
    base = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    cases = [torch.tensor(1.5), torch.zeros(3), torch.zeros(2, 3), base, base.reshape(1, 2, 3, 4),
             base.reshape(1, 1, 2, 3, 4), base[1], base.transpose(0, 2), torch.zeros(0, 5), torch.zeros(300),
             torch.zeros(1, 70_000, dtype=torch.int8), torch.ones(2, dtype=torch.bool), torch.zeros(2).requires_grad_(),
             torch.zeros(3, dtype=torch.float16), base.flatten()[5:9]]
    return cases[i % len(cases)]


def test_usual_tensor_pattern_stays_inside_the_grammar(monkeypatch):
    """The batch pattern tries torch.save's usual tensor first: whatever a batch it accepts, the grammar alone
    (whose every string hashes within the bound) accepts too, and real pickles are still checked at once."""
    from explorer.core.safe_pickle import hash_work as H
    import zipfile
    sd = {("k" * (i % 250)) + str(i): _layouts(i) for i in range(3000)}
    sd["p"] = torch.nn.Parameter(torch.zeros(2))   # not the usual shape: its batch is walked
    buf = io.BytesIO()
    torch.save({"state_dict": sd, "nested": {"x": sd[next(iter(sd))]}}, buf)
    with zipfile.ZipFile(buf) as z:
        pkl = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    checked = []
    orig = H._TorchBatches.match

    def match(self, data, pos, end):
        stop = orig(self, data, pos, end)
        if stop is not None:
            checked.append((pos, stop, self._compile(grammar_only=True)))
        return stop
    monkeypatch.setattr(H._TorchBatches, "match", match)
    assert H.check_hash_work(pkl) == len(pkl)
    assert sum(stop - pos for pos, stop, _ in checked) > len(pkl) // 2   # most of the pickle checked at once
    for pos, stop, grammar in checked:
        assert grammar.fullmatch(pkl, pos, stop) is not None


@pytest.mark.parametrize("pid", [("storage",), ("storage", F), ("storage", F, ["0"], "cpu", 4), [1, 2, 3, 4, 5]])
def test_malformed_ids_fail_as_before(monkeypatch, pid):
    obj = {"a": _Tensor(_Storage(*pid) if isinstance(pid, tuple) else _Storage(pid), (4,))}
    from explorer.errors import CorruptFileError
    with pytest.raises(CorruptFileError) as fast:
        list(_open(obj).entries)
    with monkeypatch.context() as m:
        m.setattr(PickleContext, "storage_columns", lambda self, pids: None)
        with pytest.raises(CorruptFileError) as slow:
            list(_open(obj).entries)
    assert str(fast.value) == str(slow.value)
