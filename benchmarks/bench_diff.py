"""Benchmark: diff of two large checkpoints against reading both files once (the floor), and against what a user
would write instead (``torch.load`` both, loop with ``torch.equal`` and compute the differences).

    python benchmarks/bench_diff.py [--gb 1] [--format pt|safetensors] [--repeat 2] [--dir /tmp]

Three files of ``--gb`` GB each (float32, transformer-like shapes, written once and kept): A, B = A with every
other tensor perturbed (the rest bit-identical), and C = a byte copy of A. Ratios are printed side by side; the
machine is shared, so quote ratios, not times.
"""
from __future__ import annotations

import argparse
import gc
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from explorer.core.diff import diff_sides  # noqa: E402
from explorer.core.records import CHANGED, IDENTICAL  # noqa: E402
from explorer.core.side import open_side  # noqa: E402
from explorer.core.health import health_scan  # noqa: E402


def shapes_for(total_bytes: int) -> list[tuple[str, tuple[int, ...]]]:
    d = 2048
    layer = [("attn.qkv.weight", (3 * d, d)), ("attn.qkv.bias", (3 * d,)), ("attn.proj.weight", (d, d)),
             ("attn.proj.bias", (d,)), ("mlp.fc1.weight", (4 * d, d)), ("mlp.fc1.bias", (4 * d,)),
             ("mlp.fc2.weight", (d, 4 * d)), ("mlp.fc2.bias", (d,)), ("ln1.weight", (d,)), ("ln1.bias", (d,)),
             ("ln2.weight", (d,)), ("ln2.bias", (d,))]
    per_layer = sum(int(np.prod(s)) for _, s in layer) * 4
    n_layers = max(1, round(total_bytes / per_layer))
    return [(f"layers.{i}.{name}", shape) for i in range(n_layers) for name, shape in layer]


def write(path: str, sd: dict, fmt: str) -> None:
    if fmt == "safetensors":
        from safetensors.torch import save_file
        save_file(sd, path)
    else:
        torch.save(sd, path)


def make_files(folder: str, gb: float, fmt: str) -> tuple[str, str, str]:
    a, b, c = (os.path.join(folder, f"bench_diff_{gb:g}gb_{x}.{fmt}") for x in "abc")
    if all(os.path.exists(p) for p in (a, b, c)):
        return a, b, c
    g = torch.Generator().manual_seed(0)
    sd_a, sd_b = {}, {}
    for i, (key, shape) in enumerate(shapes_for(int(gb * 1e9))):
        t = torch.randn(shape, generator=g) * 0.02
        sd_a[key] = t
        sd_b[key] = t + 1e-4 * torch.randn(shape, generator=g) if i % 2 else t
    print(f"writing {a}, {b}, {c} ...", flush=True)
    write(a, sd_a, fmt)
    write(b, sd_b, fmt)
    del sd_a, sd_b
    shutil.copyfile(a, c)
    return a, b, c


def read_both_once(pa: str, pb: str) -> float:
    """The floor: every tensor of both files read once (one numpy pass summing its bytes, from a fresh map)."""
    total = 0.0
    for p in (pa, pb):
        side = open_side(p)
        for key in side.state_dict_infos():
            total += float(side.read_key(key).numpy().sum())
    return total


def user_way(pa: str, pb: str) -> dict:
    a = torch.load(pa, weights_only=True, map_location="cpu") if pa.endswith(".pt") else _st_load(pa)
    b = torch.load(pb, weights_only=True, map_location="cpu") if pb.endswith(".pt") else _st_load(pb)
    out = {}
    for k, ta in a.items():
        tb = b.get(k)
        if tb is None or ta.shape != tb.shape:
            out[k] = "differs"
        elif torch.equal(ta, tb):
            out[k] = "identical"
        else:
            d = (tb.double() - ta.double())
            out[k] = (d.abs().max().item(), d.abs().mean().item(), (d.norm() / ta.double().norm()).item(),
                      torch.nn.functional.cosine_similarity(ta.double().flatten(), tb.double().flatten(), 0).item())
    return out


def _st_load(p):
    from safetensors.torch import load_file
    return load_file(p)


def timed(fn, repeat):
    best, out = float("inf"), None
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=1.0, help="size of each checkpoint in GB (default 1; the issue: 2)")
    ap.add_argument("--format", choices=("pt", "safetensors"), default="pt")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--dir", default=tempfile.gettempdir())
    ap.add_argument("--skip-user", action="store_true")
    args = ap.parse_args(argv)
    pa, pb, pc = make_files(args.dir, args.gb, args.format)
    size = os.path.getsize(pa) / 1e9
    print(f"A, B, C: {size:.2f} GB each, {len(shapes_for(int(args.gb * 1e9)))} tensors, {args.format}; "
          f"torch {torch.__version__}, {os.cpu_count()} CPUs")
    read_both_once(pa, pb)  # warm the page cache (all three files: C must not come from disk)
    read_both_once(pc, pc)
    t_floor, _ = timed(lambda: read_both_once(pa, pb), args.repeat)
    t_changed, rep = timed(lambda: diff_sides(open_side(pa), open_side(pb)), args.repeat)
    t_ident, rep_c = timed(lambda: diff_sides(open_side(pa), open_side(pc)), args.repeat)
    s = rep.summary
    assert s[CHANGED] == len(rep.keys) // 2 and s[IDENTICAL] == len(rep.keys) - s[CHANGED], s
    assert rep_c.summary[IDENTICAL] == len(rep_c.keys)
    t_read_a, _ = timed(lambda: read_both_once(pa, pa) / 2, args.repeat)
    t_read_a /= 2
    t_health, flags = timed(lambda: health_scan(open_side(pa)), args.repeat)
    assert len(flags) == len(rep.keys)
    rows = [("floor: read both files once (numpy sum)", t_floor),
            ("ours: diff A vs B (half the tensors changed)", t_changed),
            ("ours: diff A vs C (identical files)", t_ident)]
    t_user = None
    if not args.skip_user:
        t_user, u = timed(lambda: user_way(pa, pb), 1)
        rows.append(("user: torch.load both + torch.equal loop", t_user))
        for k in rep.keys[:6]:
            if k.status == CHANGED:
                assert abs(k.max_abs_diff - u[k.key][0]) <= 1e-12 * max(1.0, u[k.key][0]), k.key
    print(f"\n{'what':<48}{'time':>10}{'x floor':>10}")
    for name, t in rows:
        print(f"{name:<48}{t * 1e3:>8.0f}ms{t / t_floor:>10.2f}")
    print(f"{'health_scan(A): flags of every tensor':<48}{t_health * 1e3:>8.0f}ms{t_health / t_read_a:>10.2f}"
          "  (x reading A once)")
    print()
    print(f"diff (changed) vs reading both files once:   {t_changed / t_floor:5.2f}x  (target <= 3x)")
    print(f"diff (identical) vs reading both files once: {t_ident / t_floor:5.2f}x  (target: at least as fast as "
          "the diff, <= 3x)")
    if t_user:
        print(f"user way / ours (changed):   {t_user / t_changed:5.1f}x faster")
        print(f"user way / ours (identical): {t_user / t_ident:5.1f}x faster")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
