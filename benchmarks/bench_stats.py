"""Benchmark: everything the detail pane shows for one big tensor read from a file, against the memory-bandwidth
floor (one numpy pass summing the same bytes) and against what a user would write (numpy statistics +
numpy.histogram + numpy.percentile). Ratios are printed side by side from one run; the machine is shared, so
quote ratios, not times.

    python benchmarks/bench_stats.py [--n 100_000_000] [--repeat 3] [--dir /tmp]

Memory: the peak of anonymous resident memory (RssAnon, sampled every 2 ms) above the level before the call.
The file's pages mapped while reading are page cache (RssFile), reported separately: the OS reclaims them.
CPU: least user + system time of the repeats, all threads (the targets are on wall time; CPU times say how much
work each way does, which a loaded machine distorts much less).
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import threading
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from explorer.core.side import open_side  # noqa: E402
from explorer.core.stats import DEFAULT_PERCENTILES, tensor_stats, tensor_stats_steps  # noqa: E402


def rss() -> tuple[int, int]:
    anon = file = 0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                anon = int(line.split()[1]) * 1024
            elif line.startswith("RssFile:"):
                file = int(line.split()[1]) * 1024
    return anon, file


class PeakRss:
    def __enter__(self):
        self.base = rss()[0]
        self.peak = self.base
        self.stop = False
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()
        return self

    def _run(self):
        while not self.stop:
            self.peak = max(self.peak, rss()[0])
            time.sleep(0.002)

    def __exit__(self, *exc):
        self.stop = True
        self.t.join()
        self.peak = max(self.peak, rss()[0])

    @property
    def extra_mb(self) -> float:
        return (self.peak - self.base) / 2 ** 20


def make_file(path: str, n: int) -> None:
    from safetensors.torch import save_file
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, generator=g) * 0.02
    x[::1000] = 0.0
    save_file({"f32": x, "bf16": x.bfloat16(), "f16": x.half()}, path)
    del x


CPU: dict[str, float] = {}    # name -> least CPU time (user + system, every thread) of the repeats


def timed(fn, repeat: int, name: str = "") -> tuple[float, object]:
    """Least wall time of ``repeat`` calls (and, in CPU[name], the least CPU time: on a loaded machine wall times
    of a long multi-threaded call suffer more than those of a short single-threaded one; CPU times much less)."""
    best, cpu, out = float("inf"), float("inf"), None
    for _ in range(repeat):
        gc.collect()
        c0 = time.process_time()
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
        cpu = min(cpu, time.process_time() - c0)
    CPU[name] = cpu
    return best, out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000_000, help="elements (default 100M)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default=tempfile.gettempdir())
    ap.add_argument("--skip-user", action="store_true", help="skip the slow numpy baseline")
    args = ap.parse_args(argv)
    path = os.path.join(args.dir, f"bench_stats_{args.n}.safetensors")
    if not os.path.exists(path):
        print(f"writing {path} ...", flush=True)
        make_file(path, args.n)
    side = open_side(path)
    gb = args.n * 4 / 1e9
    print(f"{args.n:,} elements; float32 = {gb:.2f} GB; torch {torch.__version__}, numpy {np.__version__}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")

    def floor():  # one numpy pass summing the same bytes, from a fresh memory map
        return side.read_key("f32").numpy().sum()

    t_floor, _ = timed(floor, args.repeat, "floor")

    def ours(key, exact=True):
        return lambda: tensor_stats(side.read_key(key), bins=256, percentiles=DEFAULT_PERCENTILES, exact=exact)

    rows = []
    with PeakRss() as mem:
        t_exact, s = timed(ours("f32"), args.repeat, "exact")
    rows.append(("ours, float32, exact (2 passes)", t_exact, mem.extra_mb, "exact"))
    with PeakRss() as mem:
        t_fast, _ = timed(ours("f32", exact=False), args.repeat, "fast")
    rows.append(("ours, float32, estimated hist/pct (1 pass)", t_fast, mem.extra_mb, "fast"))
    # what the detail pane does: tensor_stats_steps -- pass 1's figures first, then the exact ones, one run
    first_looks = []

    def steps():
        t0 = time.perf_counter()
        it = tensor_stats_steps(side.read_key("f32"), bins=256, percentiles=DEFAULT_PERCENTILES)
        first = next(it)
        first_looks.append(time.perf_counter() - t0)
        final = next(it, first)
        assert not first.exact and final.exact
        return final
    with PeakRss() as mem:
        t_steps, _ = timed(steps, args.repeat, "steps")
    t_first = min(first_looks)
    rows.append(("detail pane, first look (pass 1)", t_first, mem.extra_mb, None))
    rows.append(("detail pane, exact (same run, pass 2)", t_steps, mem.extra_mb, "steps"))
    with PeakRss() as mem:
        t_bf16, sb = timed(ours("bf16"), args.repeat, "bf16")
    rows.append(("ours, bfloat16, exact (1 pass)", t_bf16, mem.extra_mb, "bf16"))
    with PeakRss() as mem:
        t_f16, _ = timed(ours("f16"), args.repeat, "f16")
    rows.append(("ours, float16, exact (1 pass)", t_f16, mem.extra_mb, "f16"))

    t_user = None
    if not args.skip_user:
        def user():
            a = side.read_key("f32").numpy()
            fin = a[np.isfinite(a)]
            out = (a.min(), a.max(), a.mean(), a.std(), np.linalg.norm(a), np.abs(a).max(), (a == 0).mean(),
                   np.isnan(a).sum(), np.isposinf(a).sum(), np.isneginf(a).sum(),
                   np.histogram(fin, bins=256), np.percentile(fin, DEFAULT_PERCENTILES))
            return out
        with PeakRss() as mem:
            t_user, u = timed(user, 1, "user")
        rows.append(("user: numpy stats + histogram + percentile", t_user, mem.extra_mb, "user"))
        ref_p = u[-1]
        got = np.array([s.percentiles[p] for p in DEFAULT_PERCENTILES])
        assert np.allclose(got, ref_p, rtol=1e-12, atol=0), (got, ref_p)   # exact: numpy's own percentiles
        assert s.mean == np.float64(u[2]) or abs(s.mean - float(u[2])) <= 1e-6 * abs(float(u[3]))
    # the histogram is exact: same counts as numpy.histogram on the same edges (checked on a 4M-element slice)
    part = side.read_key("f32")[: 4 << 20]
    h = tensor_stats(part).histogram
    assert np.array_equal(h.counts, np.histogram(part.double().numpy(), bins=h.edges)[0])

    c_floor = max(CPU["floor"], 1e-3)
    print(f"\n{'what':<46}{'time':>10}{'x floor':>10}{'extra MB':>10}{'cpu':>10}{'cpu x':>8}")
    print(f"{'floor: numpy sum of the float32 bytes':<46}{t_floor * 1e3:>8.0f}ms{1.0:>10.1f}{'':>10}"
          f"{c_floor * 1e3:>8.0f}ms{1.0:>8.1f}")
    for name, t, mb, key in rows:
        cpu = f"{CPU[key] * 1e3:>8.0f}ms{CPU[key] / c_floor:>8.1f}" if key else ""
        print(f"{name:<46}{t * 1e3:>8.0f}ms{t / t_floor:>10.1f}{mb:>10.1f}{cpu}")
    print()
    print(f"float32 exact vs floor:           {t_exact / t_floor:6.1f}x   (target <= 8x)   "
          f"CPU time: {CPU['exact'] / c_floor:.1f}x")
    print(f"float32 estimated vs floor:       {t_fast / t_floor:6.1f}x")
    print(f"detail pane first look vs floor:  {t_first / t_floor:6.1f}x   (every statistic exact; histogram and "
          f"percentiles estimated, marked ≈)")
    print(f"detail pane exact vs floor:       {t_steps / t_floor:6.1f}x   (replaces the first look)")
    if t_user:
        print(f"user way / ours (exact):          {t_user / t_exact:6.1f}x   (target >= 10x)  "
              f"CPU time: {CPU['user'] / CPU['exact']:.1f}x")
        print(f"user way / ours (estimated):      {t_user / t_fast:6.1f}x")
    print(f"bfloat16 / float32 exact:         {t_bf16 / t_exact:6.2f}x   (target <= 1.5x; bf16 is exact in 1 pass)")
    print(f"float16 / float32 exact:          {t_f16 / t_exact:6.2f}x")
    print(f"bfloat16 / float32 estimated:     {t_bf16 / t_fast:6.2f}x   (even against float32's fastest mode)")
    print(f"float16 / float32 estimated:      {t_f16 / t_fast:6.2f}x")
    print(f"peak extra anonymous memory:      {max(r[2] for r in rows if r[0].startswith('ours')):6.1f} MB "
          "(target <= ~64 MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
