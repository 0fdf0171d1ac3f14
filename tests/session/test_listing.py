"""A file parsed once: the window's side made from the parse process's listing is the side the window's own parse
gives -- key for key, field for field -- and opens the file itself only when asked for more."""
from __future__ import annotations

import json
import os
import time
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file, save_file

from explorer.core.side import Side, open_side
from explorer.errors import FileChangedError
from explorer.session import listing as L
from explorer.session.compare import load_side_data
from explorer.session.parse_guard import open_guarded


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 3, 3)
        self.bn = torch.nn.BatchNorm2d(3)
        self.head = torch.nn.Linear(3, 2)

    def forward(self, x):
        return self.head(self.bn(self.conv(x)).mean((2, 3)))


def corpus(tmp_path) -> dict[str, str]:
    """Checkpoints of the shapes users open: flat, nested with an optimizer, legacy, views of one storage, a meta
    tensor, a whole pickled model, safetensors, a sharded folder."""
    torch.manual_seed(0)
    files = {}
    net = Net()
    sd = net.state_dict()
    files["flat.pt"] = sd
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.randn(1, 2, 5, 5)).sum().backward()
    opt.step()
    files["nested.pt"] = {"model": sd, "optimizer": opt.state_dict(), "epoch": 3, "ema": {"w": torch.ones(2)}}
    base = torch.arange(24.0)
    files["views.pt"] = {"a": base, "b": base[4:10], "c": base.view(4, 6)[:, 1], "half": torch.ones(3).half(),
                         "meta": torch.empty(5, 7, device="meta"), "i8": torch.arange(4, dtype=torch.int8)}
    files["model.pt"] = net
    out = {}
    for name, obj in files.items():
        out[name] = str(tmp_path / name)
        torch.save(obj, out[name])
    out["legacy.pt"] = str(tmp_path / "legacy.pt")
    torch.save(sd, out["legacy.pt"], _use_new_zipfile_serialization=False)
    plain = {k: v.contiguous() for k, v in sd.items()}
    out["st.safetensors"] = str(tmp_path / "st.safetensors")
    save_file(plain, out["st.safetensors"])
    shards = tmp_path / "shards"
    shards.mkdir()
    keys = list(plain)
    weight_map = {}
    for i, part in enumerate((keys[: len(keys) // 2], keys[len(keys) // 2:])):
        name = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({k: plain[k] for k in part}, str(shards / name))
        weight_map.update(dict.fromkeys(part, name))
    (shards / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    out["shards"] = str(shards)
    return out


def test_a_listed_side_is_the_side_the_window_would_parse(tmp_path):
    for name, path in corpus(tmp_path).items():
        real = load_side_data(path)
        listing = L.listing_of(path, open_side(path))
        listed = L.side_data_of(listing)
        assert list(listed.infos.items()) == list(real.infos.items()), name   # same keys, same order, same fields
        assert listed.entry == tuple(real.entry) and listed.classes == real.classes, name
        assert listed.nbytes == real.nbytes and listed.label == real.label and not listed.is_model, name
        side, true = listed.side, real.side
        assert (side.format, side.references, side.state_dicts, side.default_state_dict) == \
            (true.format, true.references, true.state_dicts, true.default_state_dict), name
        assert not side.is_opened, name      # all of that without opening the file in this process


def test_the_parse_process_lists_a_state_dict_without_making_a_tensorinfo(tmp_path):
    """A state dict whose entries lie together (most files) is listed from the reader's columns: no TensorInfo is
    made there, and the window's side is the same, field for field (views, a meta tensor, nested, safetensors)."""
    bulk = 0
    for name, path in corpus(tmp_path).items():
        side = open_side(path)
        listing = L.listing_of(path, side)
        entries = getattr(side, "entries", None)
        if entries is not None and listing.entry is not None and \
                side.state_dict_info_columns(listing.entry) is not None:
            L._LISTINGS.clear()
            side = open_side(path)
            listing = L.listing_of(path, side)
            assert not side.entries.made_any(0, len(side.entries)), name
            bulk += 1
        assert list(L.side_data_of(listing).infos.items()) == list(load_side_data(path).infos.items()), name
    assert bulk == 7     # every one of them


def test_a_listed_side_opens_the_file_for_values_and_other_state_dicts(tmp_path):
    path = corpus(tmp_path)["nested.pt"]
    data = L.side_data_of(L.listing_of(path, open_side(path)))
    side, true = data.side, open_side(path)
    assert getattr(side, "tree", None) is None and not hasattr(side, "no_such_thing")   # probes open nothing
    assert isinstance(side, Side)          # nor does asking whether it is a side (runtime protocol check)
    assert not side.is_opened
    loaded = torch.load(path, weights_only=False)
    for key in data.infos:
        assert torch.equal(side.read_key(key, data.entry), loaded["model"][key])
    assert side.is_opened
    assert dict(side.state_dict_infos(("ema",))) == dict(true.state_dict_infos(("ema",)))
    assert side.resolve_entry("ema") == ("ema",)
    side.close()


def test_a_file_changed_after_its_listing_is_said_never_read_as_listed(tmp_path):
    path = tmp_path / "a.pt"
    torch.save({"w": torch.ones(3)}, path)
    data = L.side_data_of(L.listing_of(str(path), open_side(str(path))))
    time.sleep(0.01)
    torch.save({"w": torch.ones(300), "other": torch.zeros(2)}, path)
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    with pytest.raises(FileChangedError, match=str(path).replace("\\", "\\\\") + ": the file changed"):
        data.side.read_key("w", data.entry)


def test_a_shard_saved_again_in_place_is_a_changed_folder(tmp_path):
    """A sharded folder is unchanged only while every file in it is: a shard saved again under its own name (the
    folder's own time and size stay as they were) is not shown from the listing of what it held before."""
    folder = corpus(tmp_path)["shards"]
    first = L.listing_of(folder, open_side(folder))
    data = L.side_data_of(first)
    shard = os.path.join(folder, "model-00001-of-00002.safetensors")
    before = os.stat(folder)
    old = load_file(shard)
    save_file({k: torch.zeros(7) for k in old}, shard)       # rewritten in place: same name, other shapes
    os.utime(folder, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(folder).st_mtime_ns == before.st_mtime_ns
    with pytest.raises(FileChangedError, match="the file changed"):
        data.side.read_key(next(iter(old)), data.entry)
    again = L.listing_of(folder, open_side(folder))
    assert again is not first
    assert {k: i.shape for k, i in L.side_data_of(again).infos.items() if k in old} == dict.fromkeys(old, (7,))


def test_chunks_and_tensors_without_data_round_trip(tmp_path, monkeypatch):
    path = corpus(tmp_path)["views.pt"]
    infos = load_side_data(path).infos
    assert infos["meta"].location is None and infos["a"].location is not None    # a tensor saved without data
    monkeypatch.setattr(L, "CHUNK", 2)
    chunks = L.encode(infos)
    assert len(chunks) == -(-len(infos) // 2)
    assert list(L.decode(chunks).items()) == list(infos.items())


def test_a_listing_is_sent_ahead_a_chunk_at_a_time(tmp_path, monkeypatch):
    """Each chunk goes out as soon as it is made (the window decodes it while the next is made), a re-open's too; the
    listing returned then holds none, and the side decoded as they came is the window's own, field for field."""
    monkeypatch.setattr(L, "CHUNK", 2)
    streamed = 0
    for name, path in corpus(tmp_path).items():
        want = load_side_data(path).infos
        side = open_side(path)
        made = []     # the runs of keys whose fields were made (listed in bulk), when each chunk went out
        if getattr(side, "_columns_of", None) is not None:
            side._columns_of = lambda a, b, make=side._columns_of: (made.append(a), make(a, b))[1]
        for _ in range(2):    # made, then kept (a re-open)
            got, at_send = L.Received(), []
            listing = L.listing_of(path, side, send=lambda chunk: (at_send.append(len(made)), got(chunk)))
            assert listing.chunks is None and got.chunks == -(-len(want) // 2), name
            assert list(L.side_data_of(replace(listing, chunks=got)).infos.items()) == list(want.items()), name
            if made and len(at_send) > 1 and at_send[-1] > at_send[0]:
                assert at_send == list(range(1, len(at_send) + 1)), name   # chunk k sent before run k + 1 was made
                streamed += 1
        assert len(L._LISTINGS[L.stamp_of(path)].chunks) == got.chunks, name   # what a later open is sent
    assert streamed >= 5


def test_the_window_decodes_an_open_s_listing_as_it_arrives(tmp_path, monkeypatch):
    path = str(tmp_path / "many.pt")
    torch.save({f"m{i // 10}.p{i % 10}": torch.full((1,), float(i)) for i in range(L.CHUNK * 2 + 5)}, path)
    arrived = []
    real = L.Received.__call__
    monkeypatch.setattr(L.Received, "__call__", lambda self, chunk: (arrived.append(len(chunk)), real(self, chunk)))
    data = open_guarded(path)
    assert len(arrived) == 3                    # three chunks, each decoded on arrival, none in the answer
    assert type(data.side) is L.ListedSide and list(data.infos.items()) == list(load_side_data(path).infos.items())


def test_the_window_uses_the_parse_process_listing_and_parses_nothing_itself(tmp_path):
    path = corpus(tmp_path)["flat.pt"]
    data = open_guarded(path)              # the window's open: parsed in the parse process, listed from there
    assert type(data.side) is L.ListedSide and not data.side.is_opened
    assert list(data.infos.items()) == list(load_side_data(path).infos.items())
    again = open_guarded(path, data.entry)    # the same state dict named: still the listing
    assert type(again.side) is L.ListedSide


def test_a_state_dict_too_large_to_send_is_listed_by_the_window_itself(tmp_path, monkeypatch):
    path = corpus(tmp_path)["flat.pt"]
    monkeypatch.setattr(L, "LISTING_MAX", 2)
    assert L.listing_of(path, open_side(path)) is None
    assert L.listing_of(path, open_side("demo:MyBatchNormModel")) is None      # a model is never listed


def test_statistics_of_a_listed_file_are_computed_where_it_is_open(tmp_path, monkeypatch):
    """A file of many tensors the window only knows from its listing: even a small tensor's statistics come from the
    compute process (which opens the file itself), not from a parse here; once opened here, or for a file of a few
    tensors (parsed here in milliseconds), here as usual."""
    from explorer.session import jobs
    from explorer.session.compare import Comparison
    from explorer.session.detail_compute import compute_detail, compute_detail_isolated
    path = corpus(tmp_path)["flat.pt"]
    data = L.side_data_of(L.listing_of(path, open_side(path)))
    comp = Comparison(data, None)
    row = comp.rows["bn.running_mean"]
    assert jobs.detail_job(row, comp) is compute_detail     # a few tensors: here
    monkeypatch.setattr(jobs, "OPEN_HERE_MAX", 2)
    assert jobs.detail_job(row, comp) is compute_detail_isolated
    got = compute_detail_isolated(comp, "bn.running_mean")
    true = torch.load(path)["bn.running_mean"]
    assert not data.side.is_opened and got.left.stats.numel == 3
    assert got.left.stats.mean == pytest.approx(float(true.mean()), rel=1e-6)
    data.side.read_key("bn.running_mean", data.entry)
    assert jobs.detail_job(row, comp) is compute_detail


def test_a_simulated_load_into_a_model_reads_a_listed_side_as_the_file(tmp_path):
    """Simulate load with a listed checkpoint: the same report (raise, message, keys, changed values) as with the
    checkpoint opened directly -- and as torch itself says."""
    from explorer.core.simulate.run import simulate_load
    path = corpus(tmp_path)["nested.pt"]
    data = L.side_data_of(L.listing_of(path, open_side(path)))
    for strict in (True, False):
        model = Net()
        model.head = torch.nn.Linear(3, 5)          # a size mismatch: torch raises
        got = simulate_load(model, data.side, entry=data.entry, strict=strict)
        want = simulate_load(model, open_side(path), entry=data.entry, strict=strict)
        assert got.to_json() == want.to_json()
        with pytest.raises(RuntimeError) as torch_says:
            model.load_state_dict(torch.load(path)["model"], strict=strict)
        assert got.raises and got.error_message == str(torch_says.value)


def test_a_listed_side_is_out_of_the_collectors_reach_before_it_runs_again(tmp_path):
    """The window's side of a listing (10**5-10**6 objects) is frozen before the collector runs again: left in its
    young generation, the first collection after the decode walks every one of them (a 200 ms GUI-thread stall for
    10**6 tensors, on whichever thread allocates next)."""
    import gc
    path = tmp_path / "a.pt"
    torch.save({f"blocks.{i}.w": torch.zeros(2) for i in range(20_000)}, path)
    listing = L.listing_of(str(path), open_side(str(path)))
    runs = []
    gc.collect()
    frozen = gc.get_freeze_count()
    gc.callbacks.append(lambda phase, info: runs.append(info["generation"]) if phase == "start" else None)
    try:
        assert gc.isenabled()
        data = L.side_data_of(listing)
    finally:
        gc.callbacks.pop()
    assert len(data.infos) == 20_000
    assert runs == []                                   # no collection walked them
    assert gc.get_freeze_count() - frozen >= 20_000     # they are out of its reach


def test_the_parse_process_keeps_what_it_parses_out_of_the_collectors_walks(tmp_path):
    """``probe`` (what the parse process runs) lists a file with the collector paused and freezes what it keeps: the
    files it holds open were walked by every later collection (40-130 ms of each open of a 50k-tensor file)."""
    import gc
    from explorer.session.parse_guard import probe
    path = tmp_path / "p.pt"
    torch.save({f"blocks.{i}.w": torch.zeros(2) for i in range(20_000)}, path)
    runs = []
    gc.collect()
    frozen = gc.get_freeze_count()
    gc.callbacks.append(lambda phase, info: runs.append(info["generation"]) if phase == "start" else None)
    try:
        listed = probe(str(path))
    finally:
        gc.callbacks.pop()
    assert listed.count == 20_000 and gc.isenabled()
    assert runs == []
    assert gc.get_freeze_count() - frozen >= 20_000


def test_the_parse_process_keeps_the_files_used_last(tmp_path, monkeypatch):
    """Its caches drop the least recently used file first: one the user keeps coming back to, between opens of
    many others, is never parsed again."""
    from explorer.session import detail_compute
    monkeypatch.setattr(L, "_LISTINGS", {})
    monkeypatch.setattr(detail_compute, "_SIDES", {})
    paths = []
    for i in range(12):
        paths.append(str(tmp_path / f"f{i}.pt"))
        torch.save({f"w{i}": torch.ones(i + 1)}, paths[-1])
    home = paths[0]
    first = L.listing_of(home, detail_compute.open_cached(home))
    side = detail_compute.open_cached(home)
    for other in paths[1:]:
        L.listing_of(other, detail_compute.open_cached(other))
        assert detail_compute.open_cached(home) is side           # back to it after each other file
        assert L.listing_of(home, side) is first
    assert len(L._LISTINGS) <= 9 and len(detail_compute._SIDES) <= 9
    assert L.stamp_of(paths[1]) not in L._LISTINGS                 # the one left longest is gone
