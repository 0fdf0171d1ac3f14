"""``s3://`` through s3fs against moto's S3 server on 127.0.0.1."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from explorer.core.remote import mirror
from explorer.errors import RemoteNotFoundError
from explorer.core.remote.mirror import Mirror, list_folder


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
    save_file({"w": torch.randn(300, 200), "b": torch.arange(9.0)}, str(tmp_path / "m.safetensors"))
    data = (tmp_path / "m.safetensors").read_bytes()
    client.put_object(Bucket="ckpt", Key="run/m.safetensors", Body=data)
    client.put_object(Bucket="ckpt", Key="run/config.json", Body=b"{}")
    yield data
    mirror.close_all()
    fsspec.filesystem("s3").clear_instance_cache()
    server.stop()


def test_a_safetensors_file_in_a_bucket_is_read_in_ranges(s3):
    m = Mirror.open("s3://ckpt/run/m.safetensors")
    assert m.size == len(s3) and m.version
    assert m.read(0, 8) == s3[:8] and m.transferred == mirror.BLOCK
    assert m.read(0, len(s3)) == s3 and m.transferred == len(s3)
    assert list_folder("s3://ckpt/run/") == ["s3://ckpt/run/config.json", "s3://ckpt/run/m.safetensors"]
    with pytest.raises(RemoteNotFoundError, match=r"^s3://ckpt/run/nope: not found"):
        Mirror.open("s3://ckpt/run/nope")
