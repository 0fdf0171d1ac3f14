"""How fast the load simulation is, against ``torch.load(path, mmap=True, weights_only=True)`` alone.

    python benchmarks/bench_simulate.py [--big] [--flat] [--cpu-time] [--tensors 2000] [--dir /tmp/sde-bench-sim]
                                        [--keep] [--repeat 5]

Generates a model of ``--tensors`` tensors (Linear layers: weight + bias) and its checkpoint (``.pt``, and a
``.safetensors`` twin), ~128 MB by default, ~2 GB with ``--big``. Then times, in this process, medians of
``--repeat`` runs:

- ``torch.load(path, mmap=True, weights_only=True)`` -- the baseline;
- the structural simulation from the path: open the checkpoint + ``simulate_load(..., compare_values=False)`` (keys,
  shapes, raise or not, error text); the target of issue 3 is to finish before the baseline (ratio < 1);
- the full simulation with the value comparison (one run), against reading the file's bytes once.
"""
from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


CLOCK = time.perf_counter


def median_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        gc.collect()
        t0 = CLOCK()
        fn()
        times.append(CLOCK() - t0)
    return statistics.median(times)


def build_model(n_tensors: int, big: bool, flat: bool = False):
    """A transformer-shaped model of ``n_tensors`` tensors (20 per block: q, k, v, o, fc1, fc2, gate, up Linear
    weights and biases, two LayerNorms), or with ``flat`` 1,000 Linear layers in one Sequential (torch's own
    ``load_state_dict`` is quadratic in the number of children of one module: the worst case)."""
    import torch
    import torch.nn as nn
    d = 720 if big else 128  # 2 GB: 100 blocks x ~20 MiB; default ~64 MB

    class TBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.ModuleDict({n: nn.Linear(d, d) for n in ("q", "k", "v", "o")})
            self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.mlp = nn.ModuleDict({"fc1": nn.Linear(d, 2 * d), "fc2": nn.Linear(2 * d, d),
                                      "gate": nn.Linear(d, d), "up": nn.Linear(d, d)})

    class TNet(nn.Module):
        def __init__(self, blocks):
            super().__init__()
            self.layers = nn.ModuleList([TBlock() for _ in range(blocks)])

    with torch.device("meta"):
        if flat:
            dd = 512 if big else 128
            model = nn.Sequential(*[nn.Linear(2 * dd, dd) for _ in range(n_tensors // 2)])
        else:
            model = TNet(max(1, n_tensors // 20))
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            p.fill_(float(i % 97) / 97)
    return model


def read_all_bytes(path: str) -> int:
    n = 0
    with open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 24)
            if not chunk:
                return n
            n += len(chunk)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--big", action="store_true", help="a ~2 GB checkpoint (default ~128 MB)")
    ap.add_argument("--tensors", type=int, default=2000)
    ap.add_argument("--dir", default="/tmp/sde-bench-sim")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--flat", action="store_true", help="one Sequential of 1,000 Linear layers (worst case)")
    ap.add_argument("--cpu-time", action="store_true",
                    help="time with this process's CPU time instead of wall time (steadier on a busy machine)")
    args = ap.parse_args(argv)
    global CLOCK
    if args.cpu_time:
        CLOCK = time.process_time

    import torch
    from safetensors.torch import save_file

    from explorer.core import open_checkpoint
    from explorer.core.simulate.run import simulate_load

    os.makedirs(args.dir, exist_ok=True)
    t0 = time.perf_counter()
    model = build_model(args.tensors, args.big, args.flat)
    sd = model.state_dict()
    # a realistic mix: a third of the tensors differ, a few are fp16
    ck = {}
    for i, (k, v) in enumerate(sd.items()):
        if i % 3 == 0:
            v = v + 1
        if i % 50 == 0:
            v = v.half()
        ck[k] = v
    pt = os.path.join(args.dir, "sim.pt")
    st = os.path.join(args.dir, "sim.safetensors")
    torch.save(ck, pt)
    save_file({k: v.contiguous() for k, v in ck.items()}, st)
    del ck
    size = os.path.getsize(pt)
    print(f"model: {args.tensors} tensors, checkpoint {size / 2**20:.0f} MiB ({time.perf_counter() - t0:.1f}s to "
          f"generate)")
    try:
        for path in (pt, st):
            print(f"\n== {os.path.basename(path)}")
            read_all_bytes(path)  # warm the page cache for every contender alike
            t_load = median_time(lambda: torch.load(path, mmap=True, weights_only=True), args.repeat)
            print(f"torch.load(mmap=True, weights_only=True):        {t_load * 1000:8.1f} ms")

            def structural():
                rep = simulate_load(model, open_checkpoint(path), compare_values=False, suggest=False)
                assert not rep.raises
            t_struct = median_time(structural, args.repeat)
            print(f"structural simulation (open + simulate):         {t_struct * 1000:8.1f} ms   "
                  f"ratio {t_struct / t_load:.2f}x of torch.load")
            opened = open_checkpoint(path)
            t_struct_only = median_time(
                lambda: simulate_load(model, opened, compare_values=False, suggest=False), args.repeat)
            print(f"  of which simulate_load on an open checkpoint:  {t_struct_only * 1000:8.1f} ms")
            t_read = median_time(lambda: read_all_bytes(path), 1)
            calls = []
            t1 = CLOCK()
            rep = simulate_load(model, open_checkpoint(path), progress=lambda d, t: calls.append(d), suggest=False)
            t_full = CLOCK() - t1
            print(f"full simulation with value comparison:           {t_full * 1000:8.1f} ms   "
                  f"({len(rep.changed_keys)} changed, {len(calls)} progress calls); reading the file once: "
                  f"{t_read * 1000:.1f} ms")
    finally:
        if not args.keep:
            shutil.rmtree(args.dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
