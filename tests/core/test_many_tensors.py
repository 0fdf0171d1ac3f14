"""Files with very many tensors (the hostile corpus has 10**6): listing costs a bounded amount of Python work per
tensor, and the bulk paths give exactly what the per-entry ones give.

The scaling tests count Python function calls (``sys.setprofile``), not seconds: deterministic on a busy machine.
Before the bulk paths, opening and listing a 10**6-tensor file made ~11 Python calls per tensor (12-18 s); now the
only one left is the unpickler's record constructor for a ``.pt`` and none for ``.safetensors``.
"""
from __future__ import annotations

import io
import json
import sys
import time
from collections import OrderedDict

import pytest
import torch

from explorer.commands.inspect import _numeric_names, inspect_json, render_text, write_inspect_json
from explorer.core.checkpoint import Checkpoint
from explorer.core.loaders import open_checkpoint
from explorer.core.tree import Tree
from tests.hostile import corpus as corpus_mod


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    """``many-N.pt`` / ``.safetensors`` as the hostile corpus writes them (flat, one shared storage), by N."""
    made = {}

    def make(n: int) -> dict[str, str]:
        if n not in made:
            root = tmp_path_factory.mktemp(f"many{n}")
            corpus_mod._many(corpus_mod.Corpus(str(root), False), n)
            made[n] = {ext: str(root / "files" / "many" / f"many-{n}.{ext}") for ext in ("pt", "safetensors")}
        return made[n]
    return make


def _python_calls(fn, exclude: tuple[str, ...] = ()) -> int:
    """Python function calls (frames entered, generator resumptions included) made by ``fn()``, but those of code
    in files whose path contains one of ``exclude``."""
    count = 0

    def prof(frame, event, arg):
        nonlocal count
        if event == "call" and not (exclude and any(x in frame.f_code.co_filename for x in exclude)):
            count += 1
    sys.setprofile(prof)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return count


def _listing(path: str) -> str:
    buf = io.StringIO()
    write_inspect_json(open_checkpoint(path), buf)
    return buf.getvalue()


@pytest.mark.parametrize("ext, per_tensor", [("pt", 1.2), ("safetensors", 0.05)])
def test_listing_python_work_per_tensor(many, ext, per_tensor):
    """``inspect --json``: opening and listing N more tensors costs at most ``per_tensor`` Python calls each."""
    small, large = many(2_000)[ext], many(12_000)[ext]
    _listing(small)  # imports, caches
    extra = _python_calls(lambda: _listing(large)) - _python_calls(lambda: _listing(small))
    assert extra / 10_000 <= per_tensor, f"{extra / 10_000:.2f} Python calls per tensor"


@pytest.mark.parametrize("ext", ["pt", "safetensors"])
def test_entries_python_work_per_tensor(many, ext):
    """Every entry as a TensorInfo (the window, ``diff``, ``stats``): three calls each (the record's constructor
    or maker, the two dataclasses' own ``__init__``), not one per step of a per-entry method chain (11 before)."""
    small, large = many(2_000)[ext], many(12_000)[ext]

    def listing(path):
        ck = open_checkpoint(path)
        list(ck.entries)
        ck.state_dict_infos()
    listing(small)
    extra = _python_calls(lambda: listing(large)) - _python_calls(lambda: listing(small))
    assert extra / 10_000 <= 4, f"{extra / 10_000:.2f} Python calls per tensor"


def test_hundred_thousand_tensors_in_seconds(many, capsys):
    """A coarse guard on top of the call counts: 10**5 tensors, both formats, in CPU time (the process's own, not
    the wall clock other processes share) well inside the bound (about 0.5 s each on a 2-core machine)."""
    from explorer.cli import main
    files = many(100_000)
    for ext in ("pt", "safetensors"):
        t = time.process_time()
        assert main(["inspect", files[ext], "--json"]) == 0
        elapsed = time.process_time() - t
        out = capsys.readouterr().out
        assert len(json.loads(out)["entries"]) == 100_000
        assert elapsed < 10, f"{ext}: {elapsed:.1f} s"


# ---- the bulk paths give what the per-entry ones give -----------------------------------------------------------------

def _sample_files(tmp_path) -> list[str]:
    from safetensors.torch import save_file
    files = []
    nested = {"model": OrderedDict([("a.weight", torch.nn.Parameter(torch.ones(2, 3))), ("a.bias", torch.zeros(3)),
                                    ("é \"q\" \\ {x}", torch.zeros(1, dtype=torch.bfloat16))]),
              "optimizer": {"state": {0: {"exp_avg": torch.zeros(2), "step": torch.tensor(3.0)}}, "x": [1, 2]},
              3: torch.arange(4), "meta": torch.empty(2, 5, device="meta"),
              "list": [torch.zeros(1), {"deep": torch.ones(2, 2).t()}],
              "10": torch.zeros(1), "2": torch.zeros(1)}
    torch.save(nested, tmp_path / "nested.pt")
    files.append(str(tmp_path / "nested.pt"))
    torch.save(torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.BatchNorm1d(3)), tmp_path / "module.pt")
    files.append(str(tmp_path / "module.pt"))
    torch.save(torch.ones(3), tmp_path / "one.pt")
    files.append(str(tmp_path / "one.pt"))
    shared = torch.zeros(10)
    torch.save({"10": shared[:2], "2": shared[2:5], "x": shared, "1": torch.zeros(0)}, tmp_path / "flat.pt")
    files.append(str(tmp_path / "flat.pt"))
    save_file({"a.b": torch.zeros(2, 3), "ü\n\"": torch.ones(4, dtype=torch.float16), "s": torch.tensor(1.0),
               "e": torch.empty(0, 2)}, str(tmp_path / "lib.safetensors"), metadata={"format": "pt"})
    files.append(str(tmp_path / "lib.safetensors"))
    return files


def test_streamed_json_is_json_dumps(tmp_path, many):
    for path in _sample_files(tmp_path) + list(many(2_000).values()):
        want = json.dumps(inspect_json(open_checkpoint(path))) + "\n"
        assert _listing(path) == want, path


def test_bulk_entries_equal_per_entry(tmp_path, many):
    for path in _sample_files(tmp_path) + list(many(2_000).values()):
        one_by_one = open_checkpoint(path)
        each = [one_by_one.entries[i] for i in range(len(one_by_one.entries))]  # one at a time
        bulk = open_checkpoint(path)
        assert list(bulk.entries) == each, path
        for ref in bulk.state_dicts:
            infos = bulk.state_dict_infos(ref.path)
            want = OrderedDict((one_by_one._paths[i][-1], each[i]) for i in one_by_one._by_parent[ref.path])
            assert list(infos.items()) == list(want.items()), (path, ref.path)
        assert [tuple(p) for p in bulk._paths] == [i.path for i in each]
        assert [bulk._paths[i] for i in range(-len(each), len(each))] == [i.path for i in each] * 2


def test_flat_text_tree_is_the_tree_order():
    for keys in (["10", "2", "a", "1", "b", "03"], ["x", "1"], ["b", "a"], [], ["", "7", "5"]):
        assert _numeric_names(list(keys)) == [n.name for n in Tree(keys).root.children]


def test_flat_text_listing_matches_the_tree(tmp_path):
    """``inspect`` of a flat state dict (no dotted keys: no tree is built) prints what the tree walk prints."""
    torch.save({"10": torch.zeros(1), "2": torch.zeros(2, dtype=torch.int64), "a": torch.zeros(0),
                "1": torch.nn.Parameter(torch.ones(3))}, tmp_path / "flat.pt")
    ck = open_checkpoint(tmp_path / "flat.pt")
    buf = io.StringIO()
    render_text(ck, buf)
    lines = buf.getvalue().splitlines()
    start = lines.index("state dict /:") + 1
    names = [line.split()[0] for line in lines[start:start + 4]]
    assert names == ["a", "1", "2", "10"] or names == _numeric_names(["10", "2", "a", "1"])
    assert names == _numeric_names(["10", "2", "a", "1"])
    assert "parameter" in lines[start + names.index("1")]


def test_ordered_dict_order_is_the_dict_order():
    """The walk iterates a checkpoint's OrderedDicts through dict's own iterator (10x faster): the same order as
    long as nothing reorders them, which the unpickler and the readers never do."""
    od = OrderedDict((str(i), i) for i in range(100))
    del od["5"]
    od["5"] = 5
    od["7"] = -7
    assert list(dict.keys(od)) == list(od.keys()) and list(dict.values(od)) == list(od.values())


def test_unresolvable_storage_still_raises_when_listed(tmp_path):
    """The column listing resolves each storage as ``entries`` does: a bad persistent id is a clean error."""
    from explorer.core.safe_pickle.records import TensorRecord
    from explorer.core.safe_pickle.stand_ins import PickleContext
    from explorer.errors import CorruptFileError
    ctx = PickleContext(None, "bad.pt")
    rec = ctx.tensor_v2(("storage", None, "0", "cpu", -1), 0, (1,), (1,))
    ck = Checkpoint("bad.pt", "torch-zip", {"a": rec})
    with pytest.raises(CorruptFileError):
        list(ck.entry_columns())
    with pytest.raises(CorruptFileError):
        list(Checkpoint("bad.pt", "torch-zip", {"a": rec}).entries)
    assert isinstance(rec, TensorRecord)


@pytest.mark.parametrize("ext, per_tensor", [("pt", 4.5), ("safetensors", 3.5)])
def test_diff_and_text_listing_python_work_per_tensor(many, ext, per_tensor):
    """``diff`` both ways against a file with other keys and the ``inspect`` text tree: a bounded number of Python
    calls per tensor (column-wise state dicts, one KeyDiff each, no TensorInfo each). (Tensors both files hold are
    read and compared one by one: ~70 calls each, not bounded here.) Before: 16 (.pt) and 22 (.safetensors)."""
    from explorer.commands import diff as diff_cmd
    from explorer.core.diff import diff_sides
    small, large = many(2_000)[ext], many(12_000)[ext]
    other = many(2_000)["pt"]

    def work(path):
        a, b = open_checkpoint(path), open_checkpoint(other)
        diff_cmd.render_text(diff_sides(a, b), io.StringIO())
        diff_cmd.render_text(diff_sides(b, a), io.StringIO())
        render_text(a, io.StringIO())
    work(small)
    extra = _python_calls(lambda: work(large)) - _python_calls(lambda: work(small))
    assert extra / 10_000 <= per_tensor, f"{extra / 10_000:.2f} Python calls per tensor"


def test_state_dict_columns_equal_the_infos(many):
    for path in many(2_000).values():
        ck = open_checkpoint(path)
        cols = ck.state_dict_columns()
        infos = open_checkpoint(path).state_dict_infos()
        assert cols == (list(infos), [i.shape for i in infos.values()], [i.dtype for i in infos.values()],
                        [i.nbytes for i in infos.values()], [i.kind for i in infos.values()],
                        [i.device for i in infos.values()])
