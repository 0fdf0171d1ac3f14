"""``hf://`` paths through ``HF_ENDPOINT`` pointing at a local server that answers the Hub's routes."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from explorer.core.remote import mirror
from explorer.errors import RemoteAccessError, RemoteNotFoundError
from explorer.core.remote.mirror import Mirror, list_folder
from remote_server import Server

COMMIT2 = "fedcba9876543210fedcba9876543210fedcba98"


@pytest.fixture
def hub(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    monkeypatch.setattr(mirror, "BACKOFF", 0.01)
    with Server() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.base)
        save_file({"w": torch.arange(5000, dtype=torch.float32)}, str(tmp_path / "model.safetensors"))
        server.served.files["/org/repo/model.safetensors"] = (tmp_path / "model.safetensors").read_bytes()
        server.served.files["/org/repo/config.json"] = b'{"hidden_size": 8}'
        server.served.files["/org/repo/sub/other.bin"] = b"x"
        server.served.lfs.add("/org/repo/model.safetensors")
        yield server
    mirror.close_all()


def test_an_lfs_file_is_read_at_the_commit_the_hub_named_with_the_token_kept_off_the_cdn(hub):
    data = hub.served.files["/org/repo/model.safetensors"]
    m = Mirror.open("hf://org/repo/model.safetensors")
    assert m.size == len(data) and m.version == hub.served.etag("/org/repo/model.safetensors")
    assert m.read(0, len(data)) == data
    paths = [r[1] for r in hub.served.requests]
    assert paths[0] == "/org/repo/resolve/main/model.safetensors"
    assert f"/org/repo/resolve/{hub.served.commit}/model.safetensors" in paths
    assert "/cdn/org/repo/model.safetensors" in paths
    sent = list(zip(paths, hub.served.auth))
    assert sent[0] == ("/org/repo/resolve/main/model.safetensors", "Bearer hf_test_token")
    assert {auth for path, auth in sent if path.startswith("/cdn/")} == {None}   # another host: the token stays home


def test_reads_after_the_first_go_straight_to_where_the_hub_redirected(hub, monkeypatch):
    monkeypatch.setattr(mirror, "CHUNK", 64 << 10)
    data = hub.served.files["/org/repo/model.safetensors"]
    m = Mirror.open("hf://org/repo/model.safetensors")
    m.read(0, 8)
    m.read(0, len(data))
    resolves = [r for r in hub.served.requests if r[0] == "GET" and "/resolve/" in r[1]]
    cdn = [r for r in hub.served.requests if r[1].startswith("/cdn/")]
    assert len(resolves) == 1 and len(cdn) == 1 + -(-(len(data) - mirror.BLOCK) // (64 << 10))


def test_a_small_file_and_a_revision(hub):
    m = Mirror.open("hf://org/repo@v1.0/config.json")
    assert m.read(0, 100) == b'{"hidden_size": 8}'
    assert hub.served.requests[0][1] == "/org/repo/resolve/v1.0/config.json"


def test_a_new_commit_with_the_same_file_reuses_the_cache(hub):
    data = hub.served.files["/org/repo/model.safetensors"]
    first = Mirror.open("hf://org/repo/model.safetensors")
    first.read(0, len(data))
    first.close()
    hub.served.commit = COMMIT2
    again = Mirror.open("hf://org/repo/model.safetensors")
    assert again.read(0, len(data)) == data and again.transferred == 0


def test_listing_a_repo_folder(hub):
    assert list_folder("hf://org/repo") == ["hf://org/repo/config.json", "hf://org/repo/model.safetensors"]
    assert list_folder("hf://org/repo/sub") == ["hf://org/repo/sub/other.bin"]


def test_hub_errors_name_the_token_and_the_url(hub):
    hub.served.status["/org/private/resolve/main/model.safetensors"] = 401
    with pytest.raises(RemoteAccessError, match=r"^hf://org/private/model\.safetensors: .*HF_TOKEN"):
        Mirror.open("hf://org/private/model.safetensors")
    with pytest.raises(RemoteNotFoundError, match=r"^hf://org/repo/nope\.safetensors: not found"):
        Mirror.open("hf://org/repo/nope.safetensors")
    with pytest.raises(RemoteNotFoundError, match="hf://ORG/REPO"):
        Mirror.open("hf://justone")
