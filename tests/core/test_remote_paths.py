"""What a remote path is, how an index names its shards, the cache's bounds, and the missing-extra line."""
from __future__ import annotations

import os
import sys

import pytest

from explorer.core.remote import cache
from explorer.core.remote.backends import backend_for
from explorer.errors import MissingExtraError
from explorer.core.remote.urls import is_url, join, parse_hf


def test_is_url():
    for text in ("https://x.org/a.pt", "http://h/a", "hf://org/repo/m.safetensors", "s3://b/k", "gs://b/k",
                 "HTTPS://X/a"):
        assert is_url(text)
    for text in ("/tmp/a.pt", "C:\\a.pt", "a.pt", "file:///a.pt", "ftp://h/a", None, b"https://x"):
        assert not is_url(text)


def test_join_names_a_shard_next_to_its_index():
    assert join("https://h/m/model.safetensors.index.json", "model-00001-of-00002.safetensors") == \
        "https://h/m/model-00001-of-00002.safetensors"
    assert join("https://h/m/i.json?x=1", "a b.safetensors") == "https://h/m/a%20b.safetensors"
    assert join("hf://org/repo@v1/sub/i.json", "s.safetensors") == "hf://org/repo@v1/sub/s.safetensors"
    assert join("s3://bucket/ck/i.json", "d/s.safetensors") == "s3://bucket/ck/d/s.safetensors"
    for bad in ("../x", "/etc/passwd", "https://evil/x", "d/../../x"):
        with pytest.raises(ValueError):
            join("s3://bucket/ck/i.json", bad)
    with pytest.raises(ValueError):
        join("https://h/m/i.json", "../x")


def test_parse_hf():
    p = parse_hf("hf://datasets/org/data@refs%2Fpr%2F1/a/b.safetensors")
    assert (p.kind, p.repo, p.revision, p.path) == ("datasets", "org/data", "refs/pr/1", "a/b.safetensors")
    assert p.route("abc") == "/datasets/org/data/resolve/abc/a/b.safetensors"
    assert parse_hf("hf://org/repo/m.pt").route() == "/org/repo/resolve/main/m.pt"


def test_the_cache_evicts_least_recently_used_mirrors_but_never_one_in_use(tmp_path):
    entries = []
    for i in range(3):
        e = cache.Entry(tmp_path, cache.key_of(f"https://h/{i}", '"e"', 1 << 20), f"https://h/{i}", '"e"', 1 << 20,
                        1 << 15)
        with open(e.data_path, "r+b") as f:
            f.write(b"x" * (1 << 20))
        e.present[:] = True
        e.save()
        entries.append(e)
    for i, e in enumerate(entries):   # 0 is the oldest
        os.utime(tmp_path / f"{e.key}.json", (1000 + i, 1000 + i))
    freed = cache.evict(tmp_path, keep={entries[0].key}, limit=(2 << 20) + (64 << 10))
    left = {p.stem for p in tmp_path.glob("*.json")}
    assert left == {entries[0].key, entries[2].key} and freed >= 1 << 20
    again = cache.Entry(tmp_path, entries[2].key, "https://h/2", '"e"', 1 << 20, 1 << 15)
    assert again.present.all()


def test_two_processes_recording_blocks_of_one_mirror_keep_both(tmp_path):
    key = cache.key_of("https://h/a", '"e"', 1 << 20)
    one, two = (cache.Entry(tmp_path, key, "https://h/a", '"e"', 1 << 20, 1 << 15) for _ in range(2))
    one.present[0] = True
    one.save()
    two.present[5] = True
    two.save()
    three = cache.Entry(tmp_path, key, "https://h/a", '"e"', 1 << 20, 1 << 15)
    assert list(three.present.nonzero()[0]) == [0, 5]


def test_blocks_recorded_for_an_evicted_data_file_never_describe_its_replacement(tmp_path):
    key = cache.key_of("https://h/a", '"e"', 1 << 20)
    old = cache.Entry(tmp_path, key, "https://h/a", '"e"', 1 << 20, 1 << 15)
    old.present[:] = True
    old.save()
    held = os.open(old.data_path, os.O_RDWR)   # the other process's mirror holds its data file open
    try:
        cache.evict(tmp_path, keep=set(), limit=0)
        new = cache.Entry(tmp_path, key, "https://h/a", '"e"', 1 << 20, 1 << 15)
        old.save()                  # that process records its blocks after the eviction
        again = cache.Entry(tmp_path, key, "https://h/a", '"e"', 1 << 20, 1 << 15)
    finally:
        os.close(held)
    assert not new.present.any() and not again.present.any()


def test_an_unversioned_url_never_shares_a_key():
    assert cache.key_of("https://h/a", None, 10) != cache.key_of("https://h/a", None, 10)
    assert cache.key_of("https://h/a", '"1"', 10) == cache.key_of("https://h/a", '"1"', 10)
    assert cache.key_of("https://h/a", '"1"', 10) != cache.key_of("https://h/a", '"2"', 10)


def test_cache_size_from_the_environment(monkeypatch):
    monkeypatch.setenv(cache.SIZE_ENV, "2G")
    assert cache.max_bytes() == 2 << 30
    monkeypatch.setenv(cache.SIZE_ENV, "nonsense")
    assert cache.max_bytes() == cache.DEFAULT_MAX_BYTES


@pytest.mark.parametrize("url, module, extra", [("s3://b/k", "s3fs", "s3"), ("gs://b/k", "gcsfs", "gcs"),
                                                ("hf://o/r/f", "huggingface_hub", "remote")])
def test_a_missing_extra_is_one_line_naming_the_install(monkeypatch, url, module, extra):
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(MissingExtraError, match=rf'pip install -e "\.\[{extra}\]"'):
        backend_for(url)
