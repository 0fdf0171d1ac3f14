"""Benchmark: ``simulate --model hf:DIR --checkpoint DIR`` of a 70B Llama-shaped sharded safetensors checkpoint,
and the same with a ``file.py:make`` spec whose factory calls ``LlamaForCausalLM(config)``, each under a 16 GB
address-space limit (``RLIMIT_AS``), against targets of 10 s wall time and 2 GB peak RSS; and ``inspect DIR`` of the same folder against a bare Python
process that reads the shards' headers (issue 15: listing is as fast as reading the headers, torch is not imported).

    python benchmarks/bench_scale.py [--dir /tmp/bench_scale] [--shards 30] [--runs 1] [--model-budget SIZE]
                                     [--inspect-runs 5] [--skip-simulate]

The folder holds a Llama-3-70B ``config.json`` and ``model-000NN-of-000MM.safetensors`` shards with real headers
(every tensor's dtype, shape and offsets, the keys transformers' ``LlamaForCausalLM`` has) and holes for the data:
each shard is extended to its full size with ``truncate``, so 141 GB of bf16 take a few MB of disk. The model is too
big for the default budget, so it is built on the meta device (never allocated) and the values are not compared: no
byte of data is read. The command runs in its own process; its wall time and peak RSS (``ru_maxrss`` of that child)
are printed. ``inspect`` and the header reader run alternately, ``--inspect-runs`` times each; the best and median
wall times of both and their ratio are printed.
"""
from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

LLAMA_70B = dict(model_type="llama", architectures=["LlamaForCausalLM"], hidden_size=8192, intermediate_size=28672,
                 num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8, vocab_size=128256,
                 max_position_embeddings=131072, rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False,
                 torch_dtype="bfloat16", hidden_act="silu")
TARGET_SECONDS = 10.0
TARGET_RSS = 2 * 2 ** 30
ADDRESS_SPACE = 16 * 2 ** 30   # the simulate runs' RLIMIT_AS: a 70B model allocated for real fails under it


def llama_layout(c: dict) -> list[tuple[str, tuple[int, ...]]]:
    """The state-dict keys and shapes of ``LlamaForCausalLM`` for config ``c``, in its order (what transformers
    builds: a run that loads with no missing or unexpected key, no size mismatch and no dtype cast proves it)."""
    h, inter, heads, kv = c["hidden_size"], c["intermediate_size"], c["num_attention_heads"], c["num_key_value_heads"]
    hd = h // heads
    out = [("model.embed_tokens.weight", (c["vocab_size"], h))]
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out += [(p + "self_attn.q_proj.weight", (heads * hd, h)), (p + "self_attn.k_proj.weight", (kv * hd, h)),
                (p + "self_attn.v_proj.weight", (kv * hd, h)), (p + "self_attn.o_proj.weight", (h, heads * hd)),
                (p + "mlp.gate_proj.weight", (inter, h)), (p + "mlp.up_proj.weight", (inter, h)),
                (p + "mlp.down_proj.weight", (h, inter)), (p + "input_layernorm.weight", (h,)),
                (p + "post_attention_layernorm.weight", (h,))]
    return out + [("model.norm.weight", (h,)), ("lm_head.weight", (c["vocab_size"], h))]


def write_sparse_shard(path: str, tensors: list[tuple[str, tuple[int, ...]]], dtype: str = "BF16",
                       itemsize: int = 2) -> int:
    """A safetensors file with a real header and a hole for the data; returns its size."""
    header, at = {}, 0
    for name, shape in tensors:
        n = itemsize
        for s in shape:
            n *= s
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [at, at + n]}
        at += n
    header["__metadata__"] = {"format": "pt"}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        f.truncate(8 + len(blob) + at)
    return 8 + len(blob) + at


def make_checkpoint(folder: str, shards: int) -> tuple[int, int]:
    """(bytes of tensor data, keys) of the sparse checkpoint written in ``folder`` (kept when already there)."""
    os.makedirs(folder, exist_ok=True)
    layout = llama_layout(LLAMA_70B)
    sizes = [2 * _numel(s) for _, s in layout]
    total = sum(sizes)
    index_path = os.path.join(folder, "model.safetensors.index.json")
    if not os.path.exists(index_path):
        per, groups, cur, acc = total / shards, [], [], 0
        for item, size in zip(layout, sizes):
            if cur and acc + size > per * (len(groups) + 1) and len(groups) < shards - 1:
                groups.append(cur)
                cur = []
            cur.append(item)
            acc += size
        groups.append(cur)
        weight_map = {}
        for i, group in enumerate(groups, 1):
            name = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
            write_sparse_shard(os.path.join(folder, name), group)
            weight_map.update((k, name) for k, _ in group)
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump(LLAMA_70B, f)
        with open(index_path + ".tmp", "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f)
        os.replace(index_path + ".tmp", index_path)
    return total, len(layout)


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def timed(cmd: list[str], address_space: int | None = None) -> tuple[float, int, int, str]:
    """(wall seconds, peak RSS bytes of that process, exit status, stdout) of one command run in its own process,
    under an ``address_space`` limit (bytes) when given.
    (Linux counts into a child's peak RSS this process's own peak at the fork: keep this process small.)"""
    env = {**os.environ, "PYTHONPATH": ROOT}

    def limit():
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env,
                                preexec_fn=limit if address_space is not None else None)
        _, status, usage = os.wait4(proc.pid, 0)   # the child's own rusage: its peak RSS, not the largest child's
        wall = time.perf_counter() - t0
        proc.returncode = rc = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        text = out.read().decode("utf-8", "replace")
        if rc not in (0, 1):
            sys.stderr.write(err.read().decode("utf-8", "replace"))
    return wall, usage.ru_maxrss * 1024, rc, text


def run_simulate(folder: str, spec: str, extra: list[str]) -> tuple[float, int, int, str]:
    """(wall seconds, peak RSS bytes, exit status, stdout) of ``main.py simulate --model SPEC --checkpoint DIR``,
    under the :data:`ADDRESS_SPACE` limit."""
    return timed([sys.executable, os.path.join(ROOT, "main.py"), "simulate", "--model", spec, "--checkpoint", folder,
                  *extra], address_space=ADDRESS_SPACE)


# a model spec whose factory builds the model itself, as users write them (no meta device of its own)
FACTORY = """import json, os
import transformers


def make():
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "config.json")) as f:
        config = transformers.LlamaConfig(**json.load(f))
    return transformers.LlamaForCausalLM(config)
"""


def factory_spec(folder: str) -> str:
    """``FOLDER/llama_factory.py:make`` (written beside the checkpoint's ``config.json``)."""
    path = os.path.join(folder, "llama_factory.py")
    with open(path, "w") as f:
        f.write(FACTORY)
    return f"{path}:make"


# the floor: a bare Python process that reads every shard's header (8 bytes of length, then that much JSON)
READ_HEADERS = """import json, os, struct, sys
n = 0
for name in sorted(os.listdir(sys.argv[1])):
    if name.endswith(".safetensors"):
        with open(os.path.join(sys.argv[1], name), "rb") as f:
            n += len(json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))) - 1
print(n)
"""


# the floor for a torch.save zip: a bare Python process that reads its central directory and its data.pkl (no unpickling)
READ_ZIP = """import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    pkl = [n for n in z.namelist() if n.endswith("/data.pkl")][0]
    print(len(z.read(pkl)) > 0, len(z.namelist()))
"""


def make_big_pt(folder: str) -> str:
    """A ~2 GB torch.save file of 2,000 float32 tensors of 512 x 512 (written once, kept in ``folder``)."""
    path = os.path.join(folder, "big_2k.pt")
    os.makedirs(folder, exist_ok=True)
    if not os.path.exists(path):
        # written by another process: this one must stay small. A child's peak RSS (``timed``) starts from its
        # parent's peak at the fork (Linux keeps the old address space's high-water mark across exec): 2 GB of
        # tensors made here read as a 2 GB peak of every command timed after
        subprocess.run([sys.executable, "-c", MAKE_BIG_PT, path], check=True)
    return path


MAKE_BIG_PT = """import os, sys, torch
sd = {f"layers.{i // 8}.block.{i % 8}.weight": torch.full((512, 512), float(i)) for i in range(2000)}
torch.save(sd, sys.argv[1] + ".tmp")
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
"""


def bench_inspect_pt(path: str, runs: int) -> None:
    """``main.py inspect FILE.pt`` against :data:`READ_ZIP`, alternately ``runs`` times each."""
    walls, floors = [], []
    for _ in range(runs):
        wall, _, rc, out = timed([sys.executable, os.path.join(ROOT, "main.py"), "inspect", path])
        if rc != 0 or "totals: 2000 tensors" not in out:
            print(f"inspect {path}: exit {rc}, not the listing of 2000 tensors")
            return
        walls.append(wall)
        floors.append(timed([sys.executable, "-c", READ_ZIP, path])[0])
    median, f_median = sorted(walls)[len(walls) // 2], sorted(floors)[len(floors) // 2]
    print(f"inspect of a 2 GB .pt (2,000 tensors): median {median:.3f} s; a bare Python process reading its zip "
          f"directory and data.pkl: median {f_median:.3f} s -> {median / f_median:.1f}x (target <= 10x)")


def bench_inspect(folder: str, keys: int, runs: int) -> bool:
    """``main.py inspect DIR`` against :data:`READ_HEADERS`, alternately ``runs`` times each; prints the figures and
    returns whether both gave an answer (``inspect`` listed every tensor and imported no torch)."""
    inspect_cmd = [sys.executable, "-X", "importtime", os.path.join(ROOT, "main.py"), "inspect", folder]
    floor_cmd = [sys.executable, "-c", READ_HEADERS, folder]
    walls, floors, peaks = [], [], []
    for _ in range(runs):
        wall, peak, rc, out = timed(inspect_cmd[:1] + inspect_cmd[3:])
        if rc != 0 or f"totals: {keys} tensors" not in out:
            print(f"inspect DIR: exit {rc}, not the listing of {keys} tensors")
            return False
        walls.append(wall)
        peaks.append(peak)
        wall, _, rc, out = timed(floor_cmd)
        if rc != 0 or out.split() != [str(keys)]:
            print(f"reading the headers: exit {rc}, {out.strip()!r} tensors instead of {keys}")
            return False
        floors.append(wall)
    with tempfile.TemporaryFile() as err:   # once more, to see what it imported
        subprocess.run(inspect_cmd, stdout=subprocess.DEVNULL, stderr=err, env={**os.environ, "PYTHONPATH": ROOT})
        err.seek(0)
        imported = {line.rsplit(b"|", 1)[1].strip() for line in err if line.startswith(b"import time:")}
    best, median = min(walls), sorted(walls)[len(walls) // 2]
    f_best, f_median = min(floors), sorted(floors)[len(floors) // 2]
    print(f"inspect DIR: best {best:.3f} s, median {median:.3f} s of {runs}, peak RSS {max(peaks) / 2 ** 20:.0f} MB; "
          f"torch imported: {'yes' if b'torch' in imported else 'no'}, numpy: {'yes' if b'numpy' in imported else 'no'}")
    print(f"a bare Python process reading the {sum(n.endswith('.safetensors') for n in os.listdir(folder))} shard "
          f"headers: best {f_best:.3f} s, median {f_median:.3f} s -> inspect takes {median / f_median:.1f}x (medians), "
          f"{best / f_best:.1f}x (bests)")
    if os.environ.get("PYTHONDONTWRITEBYTECODE"):
        print("  note: PYTHONDONTWRITEBYTECODE is set: modules without a cached .pyc are compiled on every run")
    return True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default=os.path.join("/tmp", "bench_scale_llama70b"))
    ap.add_argument("--shards", type=int, default=30)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--model-budget", default=None, help="passed to simulate (default: its own)")
    ap.add_argument("--inspect-runs", type=int, default=5, help="runs of inspect and of the header reader each")
    ap.add_argument("--skip-simulate", action="store_true", help="only the inspect figures")
    ap.add_argument("--big-pt", default=os.path.join("/tmp", "bench_scale_big_pt"), metavar="DIR",
                    help="where the 2 GB .pt for the inspect ratio is kept ('' skips it)")
    ap.add_argument("--window", action="store_true",
                    help="also the window's figures (open -> tree painted, GUI stalls, RSS over 10 re-opens)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    total, keys = make_checkpoint(args.dir, args.shards)
    disk = sum(os.stat(os.path.join(args.dir, n)).st_blocks * 512 for n in os.listdir(args.dir))
    print(f"checkpoint: {args.dir}: {keys} tensors, {total / 1e9:.1f} GB of bf16 in {args.shards} sparse shards "
          f"({disk / 1e6:.1f} MB on disk; written/checked in {time.perf_counter() - t0:.1f} s)")
    if args.inspect_runs and not bench_inspect(args.dir, keys, args.inspect_runs):
        return 2
    if args.inspect_runs and args.big_pt:
        bench_inspect_pt(make_big_pt(args.big_pt), args.inspect_runs)
    if args.window:      # the window's figures: benchmarks/bench_window_scale.py, in its own process (offscreen Qt)
        subprocess.run([sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                     "bench_window_scale.py"), "--reopens", "10"], check=False)
    if args.skip_simulate:
        return 0
    extra = ["--json"] + (["--model-budget", args.model_budget] if args.model_budget else [])
    worst = 0
    specs = (("hf:DIR", f"hf:{args.dir}"), ("DIR/llama_factory.py:make", factory_spec(args.dir)))
    for i, (name, spec) in ((i, named) for i in range(args.runs) for named in specs):
        wall, peak, rc, out = run_simulate(args.dir, spec, extra)
        try:
            rep = json.loads(out)
        except ValueError:
            print(f"run {i + 1}: simulate --model {name}: exit {rc}, no JSON answer")
            return 2
        ok = rc == 0 and wall <= TARGET_SECONDS and peak <= TARGET_RSS
        worst |= not ok
        print(f"run {i + 1}: simulate --model {name} --checkpoint DIR, under a {ADDRESS_SPACE / 2 ** 30:.0f} GB "
              f"address-space limit: {wall:.2f} s (target <= {TARGET_SECONDS:.0f} s), peak RSS {peak / 2 ** 30:.2f} GB "
              f"(target <= {TARGET_RSS / 2 ** 30:.0f} GB) -> {'OK' if ok else 'OVER TARGET'}")
        casts = sum(1 for k in rep["keys"] if k.get("dtype_cast"))
        print(f"  exit {rc}; raises={rep['raises']}, missing={len(rep['missing_keys'])}, "
              f"unexpected={len(rep['unexpected_keys'])}, keys={len(rep['keys'])}, dtype casts={casts}")
        if "model_not_materialized" in rep:
            print(f"  {rep['model_not_materialized']}")
    return 1 if worst else 0


if __name__ == "__main__":
    sys.exit(main())
