"""Reading checkpoints over HTTP through sparse mirrors, against a real server on 127.0.0.1."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from explorer.core.remote import backends, mirror
from explorer.errors import (RangeNotSupportedError, RemoteAccessError, RemoteNotFoundError,
                                         RemoteTruncatedError, RemoteUnavailableError)
from explorer.core.remote.mirror import Mirror
from explorer.errors import Cancelled, InputNotFoundError
from remote_server import Server


@pytest.fixture
def srv(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(mirror, "BACKOFF", 0.01)
    monkeypatch.setattr(backends, "TIMEOUT", 5.0)
    with Server() as server:
        yield server
    mirror.close_all()


def make_safetensors(path, seed=0):
    g = torch.Generator().manual_seed(seed)
    tensors = {"big": torch.randn(1000, 300, generator=g), "half": torch.randn(64, 33, generator=g).bfloat16(),
               "small": torch.arange(7, dtype=torch.int64)}
    save_file(tensors, str(path))
    return path.read_bytes()


def header_of(f):
    f.seek(0)
    n = struct.unpack("<Q", f.read(8))[0]
    return n, json.loads(f.read(n))


def tensor_through_maps(m: Mirror, n: int, entry: dict) -> np.ndarray:
    """What the readers' memory-map door does: ensure the slice, then map the mirror's local file."""
    a, b = entry["data_offsets"]
    mirror.ensure_local(m.local_path, 8 + n + a, b - a)
    return np.memmap(m.local_path, dtype=np.uint8, mode="c", shape=(m.size,))[8 + n + a:8 + n + b]


def test_header_and_one_tensor_read_through_the_mirror_equal_the_local_file(srv, tmp_path):
    data = make_safetensors(tmp_path / "m.safetensors")
    srv.served.files["/m.safetensors"] = data
    total = mirror.transferred_total()
    m = Mirror.open(srv.url("/m.safetensors"))
    assert m.size == len(data) and m.version == srv.served.etag("/m.safetensors")
    n, header = header_of(m.file())
    with open(tmp_path / "m.safetensors", "rb") as f:
        assert (n, header) == header_of(f)
    assert m.transferred <= mirror.BLOCK * 2           # the header, rounded to blocks
    for name in ("half", "small"):
        got = tensor_through_maps(m, n, header[name])
        a, b = header[name]["data_offsets"]
        assert got.tobytes() == data[8 + n + a:8 + n + b]
    local = load_file(str(tmp_path / "m.safetensors"))
    half = torch.from_numpy(np.array(tensor_through_maps(m, n, header["half"]))).view(torch.bfloat16)
    assert torch.equal(half.reshape(64, 33), local["half"])
    a, b = header["half"]["data_offsets"]
    assert m.transferred <= mirror.BLOCK * 2 + (b - a) + 2 * mirror.BLOCK + 64   # never the big tensor
    assert srv.served.sent == m.transferred == mirror.transferred_total() - total


def test_a_second_look_is_served_from_the_cache(srv, tmp_path):
    data = make_safetensors(tmp_path / "m.safetensors")
    srv.served.files["/m.safetensors"] = data
    m = Mirror.open(srv.url("/m.safetensors"))
    n, header = header_of(m.file())
    big = tensor_through_maps(m, n, header["big"]).tobytes()
    m.close()
    sent = srv.served.sent
    again = Mirror.open(srv.url("/m.safetensors"))
    assert again is not m and again.local_path == m.local_path
    assert header_of(again.file()) == (n, header)
    assert tensor_through_maps(again, n, header["big"]).tobytes() == big
    assert again.transferred == 0 and srv.served.sent == sent
    assert [r[0] for r in srv.served.requests[-1:]] == ["HEAD"]   # only the version check


def test_a_changed_file_is_fetched_again_never_served_stale(srv, tmp_path):
    srv.served.files["/m.safetensors"] = make_safetensors(tmp_path / "m.safetensors", seed=0)
    m = Mirror.open(srv.url("/m.safetensors"))
    n, header = header_of(m.file())
    old = tensor_through_maps(m, n, header["small"]).tobytes()
    new_data = make_safetensors(tmp_path / "m2.safetensors", seed=1)
    srv.served.files["/m.safetensors"] = new_data
    m2 = Mirror.open(srv.url("/m.safetensors"))
    assert m2.local_path != m.local_path and m2.version != m.version
    n2, header2 = header_of(m2.file())
    assert m2.transferred > 0
    a, b = header2["big"]["data_offsets"]
    assert tensor_through_maps(m2, n2, header2["big"]).tobytes() == new_data[8 + n2 + a:8 + n2 + b]
    assert old == tensor_through_maps(m, n, header["small"]).tobytes()   # the old mirror keeps its own bytes


def test_a_large_range_is_fetched_in_parallel_chunks_and_equals_the_file(srv, tmp_path, monkeypatch):
    monkeypatch.setattr(mirror, "CHUNK", 256 << 10)
    data = make_safetensors(tmp_path / "m.safetensors")
    srv.served.files["/m.safetensors"] = data
    m = Mirror.open(srv.url("/m.safetensors"))
    assert m.read(0, len(data)) == data
    gets = [r for r in srv.served.requests if r[0] == "GET"]
    assert len(gets) == -(-len(data) // (256 << 10)) and m.transferred == len(data)


def test_a_server_without_range_support_is_named_and_nothing_recorded(srv, tmp_path):
    srv.served.files["/m.safetensors"] = make_safetensors(tmp_path / "m.safetensors")
    srv.served.ranges = False
    m = Mirror.open(srv.url("/m.safetensors"))
    with pytest.raises(RangeNotSupportedError, match=r"http://127\.0\.0\.1:\d+/m\.safetensors: .*range requests"):
        m.file().read(8)
    assert m.transferred == 0 and m.missing([(0, 8)]) == [(0, 1)]


def test_without_range_support_the_whole_file_can_be_downloaded_with_progress(srv, tmp_path):
    data = make_safetensors(tmp_path / "m.safetensors")
    srv.served.files["/m.safetensors"] = data
    srv.served.ranges = False
    m = Mirror.open(srv.url("/m.safetensors"))
    with pytest.raises(Cancelled):
        m.download(should_stop=lambda: m.transferred > 0)
    assert m.missing([(0, len(data))]) != []          # a cancelled download records nothing
    seen = []
    m.progress = seen.append
    assert m.download() == len(data) and seen[-1] == m.transferred and len(seen) == 2   # two 1 MiB pieces
    requests = len(srv.served.requests)
    assert m.read(0, len(data)) == data and len(srv.served.requests) == requests


@pytest.mark.parametrize("status, error, words", [
    (403, RemoteAccessError, "access denied"), (401, RemoteAccessError, "access denied"),
    (404, RemoteNotFoundError, "not found"),
])
def test_http_errors_are_one_line_naming_the_url(srv, status, error, words):
    srv.served.status["/x.safetensors"] = status
    with pytest.raises(error) as e:
        Mirror.open(srv.url("/x.safetensors"))
    text = str(e.value)
    assert text.startswith(srv.url("/x.safetensors") + ":") and words in text and "\n" not in text


def test_not_found_is_an_input_not_found_error(srv):
    with pytest.raises(InputNotFoundError):
        Mirror.open(srv.url("/missing.pt"))


def test_a_truncated_body_is_retried_then_refused_and_never_recorded(srv, tmp_path):
    data = make_safetensors(tmp_path / "m.safetensors")
    srv.served.files["/m.safetensors"] = data
    m = Mirror.open(srv.url("/m.safetensors"))
    srv.served.truncate["/m.safetensors"] = 100
    with pytest.raises(RemoteTruncatedError, match="cut short"):
        m.read(0, 8)
    assert m.transferred == 0 and m.missing([(0, 8)]) == [(0, 1)]
    assert sum(r[0] == "GET" for r in srv.served.requests) == mirror.ATTEMPTS
    del srv.served.truncate["/m.safetensors"]
    assert m.read(0, 8) == data[:8]


def test_a_connection_dropped_mid_read_is_retried(srv, tmp_path):
    data = make_safetensors(tmp_path / "m.safetensors")
    srv.served.files["/m.safetensors"] = data
    m = Mirror.open(srv.url("/m.safetensors"))
    srv.served.fail_times["/m.safetensors"] = mirror.ATTEMPTS - 1
    assert m.read(100, 5000) == data[100:5100]


def test_a_server_that_died_is_one_clear_line_after_retries(srv, tmp_path):
    srv.served.files["/m.safetensors"] = make_safetensors(tmp_path / "m.safetensors")
    m = Mirror.open(srv.url("/m.safetensors"))
    srv.httpd.shutdown()
    srv.httpd.server_close()
    with pytest.raises(RemoteUnavailableError, match=r"/m\.safetensors: cannot connect .*tries"):
        m.read(0, 8)
    assert m.missing([(0, 8)]) == [(0, 1)]


def test_should_stop_cancels_before_any_request(srv, tmp_path):
    srv.served.files["/m.safetensors"] = make_safetensors(tmp_path / "m.safetensors")
    m = Mirror.open(srv.url("/m.safetensors"))
    gets = len(srv.served.requests)
    with pytest.raises(Cancelled):
        m.ensure([(0, 1 << 20)], should_stop=lambda: True)
    assert len(srv.served.requests) == gets and m.transferred == 0


def test_progress_reports_the_bytes_transferred(srv, tmp_path, monkeypatch):
    monkeypatch.setattr(mirror, "CHUNK", 256 << 10)
    data = make_safetensors(tmp_path / "m.safetensors")
    srv.served.files["/m.safetensors"] = data
    m = Mirror.open(srv.url("/m.safetensors"))
    seen = []
    m.progress = seen.append
    m.ensure([(0, len(data))])
    assert sorted(seen) == seen and seen[-1] == len(data) == m.transferred and len(seen) > 1


def test_a_zip_is_read_through_the_file_object(srv, tmp_path):
    torch.save({"w": torch.arange(10.0), "b": torch.ones(3)}, tmp_path / "m.pt")
    data = (tmp_path / "m.pt").read_bytes()
    srv.served.files["/m.pt"] = data
    import zipfile
    m = Mirror.open(srv.url("/m.pt"))
    with zipfile.ZipFile(m.file()) as z:
        names = z.namelist()
        pkl = z.read(next(n for n in names if n.endswith("data.pkl")))
    with zipfile.ZipFile(tmp_path / "m.pt") as z:
        assert names == z.namelist() and pkl == z.read(next(n for n in names if n.endswith("data.pkl")))


def test_a_server_refusing_head_is_asked_with_a_one_byte_range(srv, tmp_path):
    data = make_safetensors(tmp_path / "m.safetensors")
    srv.served.files["/m.safetensors"] = data
    srv.served.head = False
    m = Mirror.open(srv.url("/m.safetensors"))
    assert (m.size, m.version) == (len(data), srv.served.etag("/m.safetensors"))
    assert [r[0] for r in srv.served.requests] == ["HEAD", "GET"] and srv.served.requests[1][2] == "bytes=0-0"


def test_an_empty_file_and_ranges_beyond_the_end(srv):
    srv.served.files["/empty"] = b""
    srv.served.files["/short"] = b"abc"
    assert Mirror.open(srv.url("/empty")).file().read() == b""
    m = Mirror.open(srv.url("/short"))
    assert m.read(1, 100) == b"bc" and m.ensure([(10, 5), (-4, 2)]) == 0 and m.file().read() == b"abc"


def test_opened_asks_the_server_once_and_torch_reads_a_zip_directory_through_the_file(srv, tmp_path):
    torch.save({f"l{i}": torch.zeros(100_000) for i in range(20)}, tmp_path / "m.pt")
    srv.served.files["/m.pt"] = (tmp_path / "m.pt").read_bytes()
    m = mirror.opened(srv.url("/m.pt"))
    assert mirror.opened(srv.url("/m.pt")) is m and mirror.mirror_of(m.local_path) is m
    reader = torch._C.PyTorchFileReader(m.file())
    pkl = next(r for r in reader.get_all_records() if r.endswith("data.pkl"))
    assert len(reader.get_record(pkl)) > 0
    assert [r[0] for r in srv.served.requests].count("HEAD") == 1
    assert m.transferred <= 4 * mirror.BLOCK < m.size // 20


@pytest.mark.parametrize("etags,change", [(True, "same size"), (True, "longer"), (False, "same size"),
                                          (False, "longer"), ("date unmoved", "longer")])
def test_a_file_changed_between_reads_is_refused_never_mixed(srv, tmp_path, etags, change):
    """The server's file changes after the header was read and before a tensor is: with an ETag, or a server that
    sends only Last-Modified, or (a date that did not move: replaced within its second) a new size, the read is
    refused -- never the new file's bytes read into the old file's layout (values that are neither file's)."""
    from explorer.errors import RemoteChangedError
    srv.served.etags = etags is True
    srv.served.fixed_date = etags == "date unmoved"   # only the size can tell
    data = make_safetensors(tmp_path / "m.safetensors", seed=0)
    srv.served.files["/m.safetensors"] = data
    m = Mirror.open(srv.url("/m.safetensors"))
    n, header = header_of(m.file())
    if change == "same size":   # the same layout, other values (a retrained checkpoint saved over the old one)
        new = make_safetensors(tmp_path / "m2.safetensors", seed=1)
        assert len(new) == len(data)
    else:
        new = data + b"\0" * 64
    srv.served.files["/m.safetensors"] = new
    with pytest.raises(RemoteChangedError, match="changed on the server"):
        tensor_through_maps(m, n, header["big"])
