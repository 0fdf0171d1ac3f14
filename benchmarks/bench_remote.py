"""Benchmark: reading a checkpoint by URL through sparse mirrors, against a local server with a latency per request.

    python benchmarks/bench_remote.py [--latency 0.02] [--shards 28] [--pt-gb 1.9] [--dir /tmp]

A "70B" checkpoint (Llama-3-70B's tensor names and shapes, bfloat16, 28 safetensors shards and their index) is
generated sparse: headers written, tensor bytes left as holes, except one tensor filled with random values. The
server (tests/core/remote_server.py) answers Range requests on 127.0.0.1 after ``--latency`` seconds each.
Figures: the index and every shard header read through mirrors in parallel (bytes, seconds; targets ≤ 2 MB,
≤ 2 s), the same again from the cache (0 bytes), one tensor's statistics (bytes ≤ its bytes + 1 MB, and equal to
the figures of the local file), and a torch-zip ``.pt``'s central directory and ``data.pkl`` (target ≤ 8 MB).
"""
from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import tempfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests", "core"))

from explorer.core.remote import mirror  # noqa: E402
from explorer.core.remote.mirror import Mirror  # noqa: E402
from explorer.core.remote.urls import join  # noqa: E402
from explorer.core.stats import tensor_stats  # noqa: E402
from remote_server import Server  # noqa: E402

HIDDEN, INTER, VOCAB, KV, LAYERS = 8192, 28672, 128256, 1024, 80
STATS_KEY = "model.layers.0.self_attn.k_proj.weight"


def llama70b() -> list[tuple[str, list[int]]]:
    out = [("model.embed_tokens.weight", [VOCAB, HIDDEN])]
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        out += [(p + "input_layernorm.weight", [HIDDEN]), (p + "post_attention_layernorm.weight", [HIDDEN]),
                (p + "self_attn.q_proj.weight", [HIDDEN, HIDDEN]), (p + "self_attn.k_proj.weight", [KV, HIDDEN]),
                (p + "self_attn.v_proj.weight", [KV, HIDDEN]), (p + "self_attn.o_proj.weight", [HIDDEN, HIDDEN]),
                (p + "mlp.gate_proj.weight", [INTER, HIDDEN]), (p + "mlp.up_proj.weight", [INTER, HIDDEN]),
                (p + "mlp.down_proj.weight", [HIDDEN, INTER])]
    return out + [("model.norm.weight", [HIDDEN]), ("lm_head.weight", [VOCAB, HIDDEN])]


def write_sparse_checkpoint(folder: str, shards: int) -> tuple[dict, int]:
    """The shards (headers, holes, one tensor of random values) and the index; (weight map, total bytes)."""
    tensors = llama70b()
    total = sum(2 * int(np.prod(s)) for _, s in tensors)
    per_shard, groups, cur, size = total / shards, [], [], 0
    for name, shape in tensors:
        cur.append((name, shape))
        size += 2 * int(np.prod(shape))
        if size >= per_shard * (len(groups) + 1) and len(groups) < shards - 1:
            groups.append(cur)
            cur = []
    groups.append(cur)
    weight_map = {}
    for k, group in enumerate(groups, 1):
        fname = f"model-{k:05d}-of-{len(groups):05d}.safetensors"
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for name, shape in group:
            n = 2 * int(np.prod(shape))
            header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + n]}
            offset += n
            weight_map[name] = fname
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        with open(os.path.join(folder, fname), "wb") as f:
            f.write(struct.pack("<Q", len(raw)) + raw)
            if STATS_KEY in header:
                a, b = header[STATS_KEY]["data_offsets"]
                f.seek(8 + len(raw) + a)
                values = torch.randn((b - a) // 2, generator=torch.Generator().manual_seed(0)).bfloat16()
                f.write(values.view(torch.uint8).numpy().tobytes())
            f.truncate(8 + len(raw) + offset)
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f)
    return weight_map, total


def read_header(url: str) -> tuple[Mirror, int, dict]:
    m = Mirror.open(url)
    f = m.file()
    n = struct.unpack("<Q", f.read(8))[0]
    return m, n, json.loads(f.read(n))


def tree_by_url(index_url: str) -> tuple[int, float, dict]:
    """Index + every shard header through mirrors, shards in parallel: (bytes transferred, seconds, headers)."""
    before, t0 = mirror.transferred_total(), time.perf_counter()
    index = Mirror.open(index_url)
    weight_map = json.loads(index.read(0, index.size))["weight_map"]
    shards = sorted(set(weight_map.values()))
    with ThreadPoolExecutor(len(shards)) as pool:
        headers = dict(zip(shards, pool.map(lambda s: read_header(join(index_url, s)), shards)))
    return mirror.transferred_total() - before, time.perf_counter() - t0, headers


def stats_json(t: torch.Tensor) -> dict:
    return tensor_stats(t).to_json(STATS_KEY, list(t.shape), "BF16")


def remote_stats(headers: dict, shard: str) -> tuple[int, int, bool]:
    """(bytes transferred, the tensor's bytes, equal to the local figures) for one tensor's statistics."""
    m, n, header = headers[shard]
    a, b = header[STATS_KEY]["data_offsets"]
    before = mirror.transferred_total()
    mirror.ensure_local(m.local_path, 8 + n + a, b - a)
    raw = np.memmap(m.local_path, dtype=np.uint8, mode="c", shape=(m.size,))[8 + n + a:8 + n + b]
    remote = stats_json(torch.from_numpy(raw).view(torch.bfloat16).reshape(header[STATS_KEY]["shape"]))
    return mirror.transferred_total() - before, b - a, remote


def zip_tree(srv: Server, folder: str, gb: float) -> tuple[int, int, float]:
    """A torch-zip ``.pt`` of ``gb`` GB: (bytes transferred to list it and read data.pkl, file bytes, seconds)."""
    n = 200
    per = int(gb * 1e9 / n / 4)
    path = os.path.join(folder, "model.pt")
    torch.save({f"layer{i}.weight": torch.empty(per) for i in range(n)}, path)
    srv.served.disk["/pt/model.pt"] = path
    before, t0 = mirror.transferred_total(), time.perf_counter()
    m = Mirror.open(srv.url("/pt/model.pt"))
    with zipfile.ZipFile(m.file()) as z:
        pkl = z.read(next(x for x in z.namelist() if x.endswith("/data.pkl")))
    assert pkl
    return mirror.transferred_total() - before, m.size, time.perf_counter() - t0


def command_json(*args: str) -> tuple[dict, float]:
    """(the --json answer, seconds) of ``python main.py ARGS --json``, run in this process."""
    import contextlib
    import io
    from explorer.cli import main as cli_main
    out, t0 = io.StringIO(), time.perf_counter()
    with contextlib.redirect_stdout(out):
        code = cli_main([*args, "--json"])
    if code not in (0, 1):
        raise SystemExit(f"{args}: exit {code}")
    return json.loads(out.getvalue()), time.perf_counter() - t0


def commands_by_url(srv: Server, folder: str, index_url: str, weight_map: dict) -> None:
    """The wired path: ``inspect URL`` and ``stats URL KEY`` through the readers, from a cold cache."""
    os.environ["XDG_CACHE_HOME"] = os.path.join(folder, "cold-cache")
    mirror.close_all()
    got, secs = command_json("inspect", index_url)
    print(f"python main.py inspect INDEX_URL --json: {len(got['entries'])} tensors, "
          f"{got['transferred_bytes'] / 1e6:.2f} MB transferred, {secs:.2f} s   [targets: <= 2 MB, <= 2 s]")
    got, secs = command_json("stats", index_url, STATS_KEY)
    moved = got.pop("transferred_bytes")
    local, _ = command_json("stats", os.path.join(folder, "ckpt", "model.safetensors.index.json"), STATS_KEY)
    print(f"python main.py stats INDEX_URL {STATS_KEY} --json: {moved / 1e6:.2f} MB transferred, {secs:.2f} s; "
          f"equal to the local file's answer: {got == local}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--latency", type=float, default=0.02)
    ap.add_argument("--shards", type=int, default=28)
    ap.add_argument("--pt-gb", type=float, default=1.9, help="size of the torch-zip file; 0 skips it")
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        os.environ["XDG_CACHE_HOME"] = os.path.join(tmp, "cache")
        folder = os.path.join(tmp, "ckpt")
        os.mkdir(folder)
        weight_map, total = write_sparse_checkpoint(folder, args.shards)
        with Server() as srv:
            for name in os.listdir(folder):
                srv.served.disk[f"/m/{name}"] = os.path.join(folder, name)
            srv.served.latency = args.latency
            index_url = srv.url("/m/model.safetensors.index.json")
            print(f"checkpoint: {len(weight_map)} tensors, {total / 1e9:.1f} GB in {args.shards} shards; "
                  f"latency {args.latency * 1000:.0f} ms per request")
            nbytes, secs, headers = tree_by_url(index_url)
            print(f"tree by URL (index + {len(headers)} shard headers): {nbytes / 1e6:.2f} MB transferred, "
                  f"{secs:.2f} s, {len(srv.served.requests)} requests   [targets: <= 2 MB, <= 2 s]")
            mirror.close_all()
            nbytes2, secs2, headers = tree_by_url(index_url)
            print(f"second look (from the cache): {nbytes2} bytes transferred, {secs2:.2f} s (one HEAD per file)")
            shard = weight_map[STATS_KEY]
            got, tensor_bytes, remote = remote_stats(headers, shard)
            from safetensors import safe_open
            with safe_open(os.path.join(folder, shard), "pt") as f:
                local = stats_json(f.get_tensor(STATS_KEY))
            print(f"statistics of {STATS_KEY} ({tensor_bytes / 1e6:.1f} MB): {got / 1e6:.2f} MB transferred "
                  f"[target: <= {(tensor_bytes + 1e6) / 1e6:.1f} MB]; equal to the local figures: {remote == local}")
            commands_by_url(srv, tmp, index_url, weight_map)
            if args.pt_gb > 0:
                zbytes, zsize, zsecs = zip_tree(srv, tmp, args.pt_gb)
                print(f"torch-zip .pt of {zsize / 1e9:.2f} GB: directory + data.pkl {zbytes / 1e6:.2f} MB "
                      f"transferred, {zsecs:.2f} s   [target: <= 8 MB]")
        mirror.close_all()


if __name__ == "__main__":
    main()
