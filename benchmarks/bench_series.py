"""Benchmark: a training run of 8 checkpoints of 64 MB each (float32, transformer-like shapes; one layer frozen, the
rest drifting), warm page cache.

    python benchmarks/bench_series.py [--mb 64] [--n 8] [--format pt|safetensors] [--threads 2]

Targets (issue 17): the series' figures ≤ 3× the time to read the files once with plain Python; extra memory at
peak ≤ 2 tensors' worth per worker (anonymous memory sampled while measuring: the tensors themselves are views of
the memory-mapped files); a second open of the same series (from the cache) ≤ 0.2× the first. The machine is
shared: quote ratios, not times.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from explorer.core.series.run import open_series  # noqa: E402


def shapes_for(total_bytes: int) -> list[tuple[str, tuple[int, ...]]]:
    d = 512
    layer = [("attn.qkv.weight", (3 * d, d)), ("attn.qkv.bias", (3 * d,)), ("attn.proj.weight", (d, d)),
             ("mlp.fc1.weight", (4 * d, d)), ("mlp.fc1.bias", (4 * d,)), ("mlp.fc2.weight", (d, 4 * d)),
             ("ln.weight", (d,)), ("ln.bias", (d,))]
    per_layer = sum(torch.Size(s).numel() for _, s in layer) * 4
    n = max(1, round(total_bytes / per_layer))
    return [(f"layers.{i}.{name}", shape) for i in range(n) for name, shape in layer]


def make_run(folder: str, n: int, mb: int, fmt: str) -> list[str]:
    g = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(s, generator=g) * 0.02 for k, s in shapes_for(mb * 2**20)}
    paths = []
    for step in range(n):
        for i, k in enumerate(sd):
            if not k.startswith("layers.0."):   # layer 0 frozen
                sd[k] = sd[k] + 1e-3 * torch.randn(sd[k].shape, generator=g)
        path = os.path.join(folder, f"step_{(step + 1) * 1000}.{fmt}")
        if fmt == "safetensors":
            from safetensors.torch import save_file
            save_file(sd, path)
        else:
            torch.save(sd, path)
        paths.append(path)
    return paths


def read_plain(paths: list[str]) -> tuple[float, float]:
    """(wall, CPU) seconds to read every file once, 16 MB at a time."""
    t0, c0 = time.perf_counter(), time.process_time()
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while f.read(16 << 20):
                pass
    return time.perf_counter() - t0, time.process_time() - c0


def _anon_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    return 0


class PeakAnon:
    """Anonymous resident memory sampled every millisecond: its peak above the level at the start."""

    def __enter__(self):
        self.base = self.peak = _anon_kb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, _anon_kb())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.extra = (self.peak - self.base) * 1024
        return False


def series_once(paths, threads, use_cache):
    """(wall, CPU of every thread) seconds to open and measure the series, and the result."""
    t0, c0 = time.perf_counter(), time.process_time()
    with open_series(paths) as s:
        result = s.measure(threads=threads, use_cache=use_cache)
    return time.perf_counter() - t0, time.process_time() - c0, result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=64)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--format", choices=("pt", "safetensors"), default="pt")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        os.environ["XDG_CACHE_HOME"] = os.path.join(folder, "cache")
        paths = make_run(folder, args.n, args.mb, args.format)
        os.sync()   # the files just written are flushed now, not by the kernel's writeback in the middle of the pairs
        largest = max(torch.Size(s).numel() for _, s in shapes_for(args.mb * 2**20)) * 4
        read_plain(paths)   # warm the page cache
        series_once(paths, args.threads, use_cache=False)   # warm
        pairs = []   # (plain, series) measured one after the other: the machine is shared, a pair sees one load
        for _ in range(args.repeat):
            pairs.append((read_plain(paths), series_once(paths, args.threads, use_cache=False)[:2]))
        with PeakAnon() as mem:   # apart: the sampling thread costs time
            series_once(paths, args.threads, use_cache=False)
        first, _, result = series_once(paths, args.threads, use_cache=True)    # measures and stores
        second, _, again = series_once(paths, args.threads, use_cache=True)   # from the cache
        assert again.cached and not result.cached
        frozen = result.frozen
    budget = 2 * largest * args.threads
    ratios = sorted(b[0] / a[0] for a, b in pairs)
    ratio, cache_ratio = ratios[len(ratios) // 2], second / first
    plain, uncached = min(a[0] for a, _ in pairs), min(b[0] for _, b in pairs)
    cpu_ratio = min(b[1] for _, b in pairs) / min(a[1] for a, _ in pairs)
    print(f"{args.n} checkpoints of {args.mb} MB ({args.format}), {len(result.tracks)} keys, {args.threads} threads")
    print(f"read the files once (plain Python): {plain:.3f} s (best of {args.repeat})")
    print(f"series, measured: {uncached:.3f} s (best); median ratio of {args.repeat} pairs {ratio:.2f}x the plain read "
          f"(all: {', '.join(f'{r:.2f}' for r in ratios)})  (target <= 3x: "
          f"{'met' if ratio <= 3 else 'NOT met'})")
    print(f"CPU time (all threads; what the machine's other load does not change): {cpu_ratio:.2f}x the plain read")
    print(f"extra anonymous memory at peak: {mem.extra / 2**20:.1f} MB; 2 tensors per worker = {budget / 2**20:.1f} MB "
          f"(largest tensor {largest / 2**20:.1f} MB)  (target: {'met' if mem.extra <= budget else 'NOT met'})")
    print(f"second open from the cache: {second:.3f} s vs first {first:.3f} s -> {cache_ratio:.3f}x  (target <= 0.2x: "
          f"{'met' if cache_ratio <= 0.2 else 'NOT met'})")
    layer0 = sum(1 for k in result.tracks if k.key.startswith("layers.0."))
    print(f"frozen keys found: {len(frozen)} (layer 0, frozen, has {layer0})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
