"""Benchmark: the statistics engine of two source trees side by side (e.g. the torch engine of another checkout
against this one's numpy engine), on the same file, interleaved round by round; medians of the rounds.

    python benchmarks/bench_stats_engines.py --other /path/to/other/checkout [--n 33554432] [--rounds 5]

Each round times, in a fresh subprocess per tree, ``tensor_stats`` of float32 (exact, and estimated: 1 pass),
bfloat16 and float16 keys of a safetensors file (values read as the tree's ``stats`` command reads them: numpy
views when the tree has ``Checkpoint.read_key_array`` and its engine takes them, else torch tensors). The machine
may be shared: the rounds alternate between the trees so that both see the same load, and medians are printed.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = [("f32", True), ("f32", False), ("bf16", True), ("f16", True)]

CHILD = r"""
import gc, json, sys, time
root, path, repeat = sys.argv[1], sys.argv[2], int(sys.argv[3])
sys.path.insert(0, root)
from explorer.core.side import open_side
from explorer.core import stats as S
side = open_side(path)
numpy_engine = "torch" not in sys.modules   # the engine module imported no torch: it takes numpy values
read = side.read_key_array if numpy_engine else side.read_key
out = {}
for key, exact in json.loads(sys.argv[4]):
    best = []
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        S.tensor_stats(read(key), bins=256, exact=exact)
        best.append(time.perf_counter() - t0)
    out[f"{key}/{'exact' if exact else 'estimated'}"] = best
print(json.dumps({"numpy_engine": numpy_engine, "times": out}))
"""


def make_file(path: str, n: int) -> None:
    import torch
    from safetensors.torch import save_file
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, generator=g) * 0.02
    x[::1000] = 0.0
    save_file({"f32": x, "bf16": x.bfloat16(), "f16": x.half()}, path)


def run_tree(root: str, path: str, repeat: int) -> dict:
    r = subprocess.run([sys.executable, "-c", CHILD, root, path, str(repeat), json.dumps(CASES)],
                       capture_output=True, text=True, check=True, env=dict(os.environ, PYTHONPATH=root))
    return json.loads(r.stdout)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--other", required=True, help="the other source tree (a checkout holding explorer/)")
    ap.add_argument("--n", type=int, default=32 << 20, help="elements (default 32M)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3, help="calls per key per round (each one counted)")
    ap.add_argument("--dir", default=tempfile.gettempdir())
    args = ap.parse_args(argv)
    path = os.path.join(args.dir, f"bench_stats_{args.n}.safetensors")
    if not os.path.exists(path):
        print(f"writing {path} ...", flush=True)
        make_file(path, args.n)
    trees = {"other": os.path.abspath(args.other), "this": HERE}
    times: dict[str, dict[str, list[float]]] = {t: {} for t in trees}
    kinds = {}
    for r in range(args.rounds):
        for name in (("other", "this") if r % 2 == 0 else ("this", "other")):
            got = run_tree(trees[name], path, args.repeat)
            kinds[name] = "numpy" if got["numpy_engine"] else "torch"
            for case, ts in got["times"].items():
                times[name].setdefault(case, []).extend(ts)
    print(f"{args.n:,} elements, {args.rounds} rounds x {args.repeat} calls, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"other = {trees['other']} ({kinds['other']} engine); this = {trees['this']} ({kinds['this']} engine)")
    print(f"{'case':<16}{'other median':>14}{'this median':>14}{'this/other':>12}   (min other / this)")
    for case in times["this"]:
        a, b = statistics.median(times["other"][case]), statistics.median(times["this"][case])
        print(f"{case:<16}{a * 1e3:>12.1f}ms{b * 1e3:>12.1f}ms{b / a:>12.2f}   "
              f"({min(times['other'][case]) * 1e3:.1f} / {min(times['this'][case]) * 1e3:.1f} ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
