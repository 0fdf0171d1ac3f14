"""The commands on checkpoints by URL (http://, hf:// through HF_ENDPOINT, s3:// through moto), against a real server
on 127.0.0.1: the same answers as on the local copy, ``transferred_bytes`` only when a side is remote, and one line
``error: URL: ...`` (exit 2) for each way a server can fail."""
from __future__ import annotations

import json
from collections import OrderedDict

import pytest
import torch
from safetensors.torch import save_file

from explorer.core.demo_models import MyBatchNormModel
from explorer.core.remote import backends, mirror
from remote_server import Server


def _state_dict(seed: int) -> OrderedDict:
    torch.manual_seed(seed)
    sd = OrderedDict(MyBatchNormModel().state_dict())
    sd["extra.big"] = torch.randn(1000, 300)          # 1.2 MB: never fetched by inspect
    sd["extra.half"] = torch.randn(64, 33).bfloat16()
    return sd


@pytest.fixture
def srv(tmp_path, monkeypatch):
    """A server holding m.safetensors, m.pt, a sharded checkpoint (index + two shards) and the same files under a Hub
    repository (``hf://org/repo``); the local copies lie in ``tmp_path/local``."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    monkeypatch.setattr(mirror, "BACKOFF", 0.01)
    monkeypatch.setattr(backends, "TIMEOUT", 5.0)
    local = tmp_path / "local"
    local.mkdir()
    sd = _state_dict(0)
    save_file(dict(sd), str(local / "m.safetensors"))
    torch.save(sd, local / "m.pt")
    keys = list(sd)
    save_file({k: sd[k] for k in keys[:3]}, str(local / "model-00001-of-00002.safetensors"))
    save_file({k: sd[k] for k in keys[3:]}, str(local / "model-00002-of-00002.safetensors"))
    weight_map = {k: f"model-0000{1 if i < 3 else 2}-of-00002.safetensors" for i, k in enumerate(keys)}
    (local / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": 1},
                                                                    "weight_map": weight_map}))
    with Server() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.base)
        for f in local.iterdir():
            server.served.files[f"/{f.name}"] = f.read_bytes()
            server.served.files[f"/org/repo/{f.name}"] = f.read_bytes()
        server.served.lfs.add("/org/repo/m.safetensors")
        server.local = local
        yield server
    mirror.close_all()


def _answer(cli, *args, url: str | None = None, local: str | None = None) -> tuple[int, dict]:
    """(exit status, the --json object) with the URL written as the local path and transferred_bytes taken out."""
    r = cli(*args, "--json")
    assert r.returncode in (0, 1), r.stderr
    out = r.stdout
    if url is not None:
        out = out.replace(json.dumps(url)[1:-1], json.dumps(local)[1:-1])
    obj = json.loads(out)
    return r.returncode, obj


def _same(cli, local_args: list, remote_args: list, url: str, local: str) -> dict:
    """Runs the command on the local copy and by URL; asserts equal answers; the remote answer's extra members."""
    code_l, want = _answer(cli, *local_args)
    assert "transferred_bytes" not in want
    code_r, got = _answer(cli, *remote_args, url=url, local=local)
    assert code_r == code_l
    moved = got.pop("transferred_bytes")
    assert got == want
    return {"transferred_bytes": moved}


# ---- the same answers ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["m.safetensors", "m.pt"])
def test_inspect_by_url_equals_the_local_file_and_reads_no_values(cli, srv, name):
    url, local = srv.url(f"/{name}"), str(srv.local / name)
    moved = _same(cli, ["inspect", local], ["inspect", url], url, local)["transferred_bytes"]
    size = len(srv.served.files[f"/{name}"])
    assert 0 < moved == srv.served.sent
    if name.endswith(".safetensors"):
        assert moved <= 2 * mirror.BLOCK < size          # the header only, never the 1.2 MB tensor
    text_l, text_r = cli("inspect", local), cli("inspect", url)
    assert text_r.returncode == 0 and text_r.stdout.replace(url, local) == text_l.stdout


@pytest.mark.parametrize("name", ["m.safetensors", "m.pt"])
def test_stats_by_url_equals_the_local_file_and_fetches_that_tensor_only(cli, srv, name):
    url, local = srv.url(f"/{name}"), str(srv.local / name)
    moved = _same(cli, ["stats", local, "linear.weight"], ["stats", url, "linear.weight"], url, local)
    assert 0 < moved["transferred_bytes"] < 1_200_000 / 4
    _same(cli, ["stats", local, "extra.half"], ["stats", url, "extra.half"], url, local)


def test_diff_local_against_url_equals_local_against_local(cli, srv):
    url, local = srv.url("/m.safetensors"), str(srv.local / "m.safetensors")
    other = str(srv.local / "m.pt")
    code_l, want = _answer(cli, "diff", other, local)
    code_r, got = _answer(cli, "diff", other, url, url=url, local=local)
    assert code_l == code_r == 0 and got.pop("transferred_bytes") >= 1_200_000
    assert got == want and want["summary"]["identical"] == len(_state_dict(0))
    _, two_local = _answer(cli, "diff", other, local)
    assert "transferred_bytes" not in two_local


def test_simulate_with_a_checkpoint_by_url_equals_the_local_file(cli, srv):
    url, local = srv.url("/m.pt"), str(srv.local / "m.pt")
    code_l, want = _answer(cli, "simulate", "--model", "demo:MyBatchNormModel", "--checkpoint", local)
    code_r, got = _answer(cli, "simulate", "--model", "demo:MyBatchNormModel", "--checkpoint", url, url=url,
                          local=local)
    assert code_l == code_r == 1 and got == want      # extra.* are unexpected keys: strict loading raises
    assert "extra.big" in json.dumps(got)


def test_a_sharded_checkpoint_by_its_index_url(cli, srv):
    url = srv.url("/model.safetensors.index.json")
    local = str(srv.local / "model.safetensors.index.json")
    moved = _same(cli, ["inspect", local], ["inspect", url], url, local)["transferred_bytes"]
    paths = {p for _, p, _ in srv.served.requests}
    assert {"/model-00001-of-00002.safetensors", "/model-00002-of-00002.safetensors"} <= paths
    assert moved < 4 * mirror.BLOCK + 4096         # the index and two headers
    _same(cli, ["stats", local, "extra.half"], ["stats", url, "extra.half"], url, local)
    code, got = _answer(cli, "diff", str(srv.local / "m.safetensors"), url)
    assert code == 0 and got["summary"]["identical"] == len(_state_dict(0)) and got["transferred_bytes"] > 0


def test_a_missing_shard_is_one_line_naming_its_url(cli, srv):
    del srv.served.files["/model-00002-of-00002.safetensors"]
    r = cli("inspect", srv.url("/model.safetensors.index.json"))
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.splitlines() == [f"error: {srv.url('/model-00002-of-00002.safetensors')}: not found (HTTP 404) "
                                     "— check the URL as given"]


def test_hub_paths_through_hf_endpoint(cli, srv):
    local = str(srv.local / "m.safetensors")
    for url in ("hf://org/repo/m.safetensors", "hf://org/repo@main/m.safetensors"):
        _same(cli, ["inspect", local], ["inspect", url], url, local)
        _same(cli, ["stats", local, "extra.half"], ["stats", url, "extra.half"], url, local)
    assert any(p.startswith("/cdn/") for _, p, _ in srv.served.requests)    # the LFS redirect was followed
    index = "hf://org/repo/model.safetensors.index.json"
    _same(cli, ["inspect", str(srv.local / "model.safetensors.index.json")], ["inspect", index], index,
          str(srv.local / "model.safetensors.index.json"))


@pytest.mark.parametrize("folder", ["hf://org/repo/", "hf://org/repo", "hf://org/repo@main"])
def test_a_hub_folder_is_listed_and_its_index_opened(cli, srv, folder):
    code, got = _answer(cli, "inspect", folder)
    assert code == 0 and got["path"] == folder.rstrip("/") + "/model.safetensors.index.json"
    assert len(got["entries"]) == len(_state_dict(0))


def test_a_plain_http_folder_cannot_be_listed(cli, srv):
    url = srv.url("/")
    assert "cannot be listed" in _one_error_line(cli("inspect", url), url)


def test_the_command_line_as_a_process(cli, srv):
    url, local = srv.url("/m.safetensors"), str(srv.local / "m.safetensors")
    r = cli.sub("inspect", url, "--json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.replace(url, local))
    assert got.pop("transferred_bytes") > 0
    assert got == json.loads(cli.sub("inspect", local, "--json").stdout)
    r = cli.sub("stats", srv.url("/nope.safetensors"), "w")
    assert r.returncode == 2 and r.stderr == f"error: {srv.url('/nope.safetensors')}: not found (HTTP 404) — check " \
                                             "the URL as given\n"


# ---- failures: exit 2, one line naming the URL ---------------------------------------------------------------------

def _one_error_line(r, url: str) -> str:
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {url}: "), lines
    return lines[0]


def test_not_found_and_access_denied(cli, srv):
    url = srv.url("/gone.pt")
    assert "not found (HTTP 404)" in _one_error_line(cli("inspect", url), url)
    srv.served.status["/m.pt"] = 403
    url = srv.url("/m.pt")
    assert "access denied (HTTP 403)" in _one_error_line(cli("stats", url, "linear.weight"), url)
    assert "access denied (HTTP 403)" in _one_error_line(cli("diff", str(srv.local / "m.pt"), url), url)


def test_a_server_without_range_support(cli, srv):
    srv.served.ranges = False
    url = srv.url("/m.safetensors")
    line = _one_error_line(cli("inspect", url), url)
    assert "does not support range requests" in line and "--download" in line


@pytest.mark.parametrize("name", ["m.safetensors", "m.pt"])
def test_download_fetches_a_file_whole_once_when_the_server_has_no_ranges(cli, srv, name):
    srv.served.ranges = False
    url, local = srv.url(f"/{name}"), str(srv.local / name)
    size = (srv.local / name).stat().st_size
    r = cli("inspect", url, "--download", "--json")
    assert r.returncode == 0, r.stderr
    assert f"does not support range requests; downloading the whole file ({size:,} bytes) once" in r.stderr
    got = json.loads(r.stdout.replace(json.dumps(url)[1:-1], json.dumps(local)[1:-1]))
    assert got.pop("transferred_bytes") == size
    _, want = _answer(cli, "inspect", local)
    assert got == want
    # the values come from the downloaded copy: no request more, the same statistics as the local file
    before = len(srv.served.requests)
    _same(cli, ["stats", local, "extra.half"], ["stats", url, "extra.half", "--download"], url, local)
    assert [m for m, _, _ in srv.served.requests[before:] if m == "GET"] == []


def test_a_truncated_answer(cli, srv):
    srv.served.truncate["/m.safetensors"] = 100
    url = srv.url("/m.safetensors")
    assert "cut short" in _one_error_line(cli("inspect", url, "--json"), url)


def test_a_server_dying_mid_read(cli, srv):
    url = srv.url("/m.safetensors")
    srv.served.die_after = 1                          # the header's block, then nothing
    line = _one_error_line(cli("diff", str(srv.local / "m.safetensors"), url, "--json"), url)
    assert "tries" in line and "try again" in line


def test_a_server_dying_during_stats(cli, srv):
    url = srv.url("/m.pt")
    r = cli("inspect", url)
    assert r.returncode == 0
    srv.served.die_after = srv.served.gets
    assert "tries" in _one_error_line(cli("stats", url, "extra.big"), url)


# ---- s3:// through moto ---------------------------------------------------------------------------------------------

@pytest.fixture
def s3(tmp_path, monkeypatch):
    import boto3
    import fsspec
    from moto.server import ThreadedMotoServer
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                 "AWS_ENDPOINT_URL": f"http://{host}:{port}", "XDG_CACHE_HOME": str(tmp_path / "cache")}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    fsspec.filesystem("s3").clear_instance_cache()
    client = boto3.client("s3", endpoint_url=f"http://{host}:{port}")
    client.create_bucket(Bucket="ckpt")
    save_file(dict(_state_dict(1)), str(tmp_path / "m.safetensors"))
    client.put_object(Bucket="ckpt", Key="run/m.safetensors", Body=(tmp_path / "m.safetensors").read_bytes())
    yield tmp_path / "m.safetensors"
    mirror.close_all()
    fsspec.filesystem("s3").clear_instance_cache()
    server.stop()


def test_s3_by_url_equals_the_local_file(cli, s3):
    url, local = "s3://ckpt/run/m.safetensors", str(s3)
    assert _same(cli, ["inspect", local], ["inspect", url], url, local)["transferred_bytes"] <= 2 * mirror.BLOCK
    _same(cli, ["stats", local, "linear.weight"], ["stats", url, "linear.weight"], url, local)
    code, got = _answer(cli, "diff", local, url)
    assert code == 0 and got["summary"]["identical"] == len(_state_dict(1))
    code, folder = _answer(cli, "inspect", "s3://ckpt/run/")
    assert code == 0 and folder["path"] == url
    missing = "s3://ckpt/run/nope.safetensors"
    assert "not found" in _one_error_line(cli("inspect", missing), missing)


# ---- a torch.distributed.checkpoint folder by URL -------------------------------------------------------------------

@pytest.fixture
def dcp_srv(srv, tmp_path):
    """A DCP checkpoint (``.metadata`` + ``__0_0.distcp``) saved by torch, served over HTTP and under the Hub."""
    import warnings

    import torch.distributed.checkpoint as dcp
    folder = tmp_path / "local_dcp"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(dict(_state_dict(3)), checkpoint_id=str(folder), no_dist=True)
    for f in folder.iterdir():
        srv.served.files[f"/dcp/{f.name}"] = f.read_bytes()
        srv.served.files[f"/org/repo/dcp/{f.name}"] = f.read_bytes()
    srv.dcp = folder
    return srv


def test_a_dcp_checkpoint_by_the_url_of_its_metadata_equals_the_local_folder(cli, dcp_srv):
    local = str(dcp_srv.dcp)
    url = dcp_srv.url("/dcp/.metadata")
    code_l, want = _answer(cli, "inspect", local)
    code_r, got = _answer(cli, "inspect", url)
    assert code_r == code_l == 0 and got.pop("transferred_bytes") > 0
    assert got["entries"] == want["entries"] and got["format"] == want["format"] == "torch-dcp"
    # values are read by range, the same as from the local folder (and as torch loads them)
    for key in ("extra.half", "extra.big"):
        code_l, want = _answer(cli, "stats", local, key)
        _, got = _answer(cli, "stats", url, key)
        got.pop("transferred_bytes")
        assert {k: v for k, v in got.items() if k != "path"} == {k: v for k, v in want.items() if k != "path"}


def test_a_dcp_checkpoint_by_a_hub_folder_url(cli, dcp_srv):
    code, got = _answer(cli, "inspect", "hf://org/repo/dcp/")
    _, want = _answer(cli, "inspect", str(dcp_srv.dcp))
    assert code == 0 and got["format"] == "torch-dcp" and got["entries"] == want["entries"]


def test_a_hub_folder_is_listed_once_per_command(cli, dcp_srv):
    for folder in ("hf://org/repo/", "hf://org/repo/dcp/"):
        mirror.close_all()
        before = len(dcp_srv.served.requests)
        code, _ = _answer(cli, "inspect", folder)
        listings = [p for _, p, _ in dcp_srv.served.requests[before:] if "/tree/" in p]
        assert code == 0 and len(listings) == 1, listings
