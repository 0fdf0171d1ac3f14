"""Run every reader and the commands ``inspect``, ``stats``, ``diff``, ``simulate`` over the hostile corpus.

    python -m tests.hostile.harness [--quick] [--json OUT] [--keep DIR] [--only CATEGORY] [--real N]

Each (input, command) runs in its own process, with a time limit (10 s) and a memory cap (``RLIMIT_AS``, 4 GB
above the harness's own address space); its peak RSS comes from ``wait4``. Python and torch start once: the harness
imports them, then forks one child per run (a fork server), so 1,000 runs cost seconds, not an hour of start-up.
The child runs exactly what ``python main.py ...`` runs (``explorer.cli.main``), or, for the ``read`` op, the
reader registry directly (open, list every entry, rank, read every tensor's values, materialise the default state
dict on the meta device). ``--real N`` also runs N inputs through a fresh ``python main.py`` to show the two agree.

Per run it checks:
- exit 2 with exactly one stderr line ``error: ...`` that is not ``internal error`` (an exception that is not an
  ``ExplorerError`` reached the top) and no ``Traceback``; or exit 0 (``simulate``: 0 or 1) with a correct result:
  where the corpus knows the tensors (``entries``) the listing must match them, where it names hostile globals
  (``refs``) they must be listed as references, and inputs that must fail (``expect="error"``) must not succeed;
- no code executed: no marker file appears, the canary file is not deleted, and no audit event of a process, shell,
  browser, socket or write to the corpus is raised in the child (``sys.addaudithook``);
- no crash (a signal), no hang (killed at the time limit), memory bounded (peak RSS growth under 1 GB, plus 1 KiB
  for each tensor the file really holds: ``Input.tensors``, written by the corpus, never read from the file), and at
  most
  1,024 open files (the usual desktop limit);
- no input changed (every corpus file hashed before and after the whole run).

Tests run as root, which reads any file: permission-denied inputs run their child as ``nobody`` (setuid 65534).
Exit status 0 when every run is clean; the table is printed either way.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, ROOT)

from tests.hostile import corpus as corpus_mod  # noqa: E402

OPS = ("read", "inspect", "inspect-json", "stats", "diff", "simulate")
# quick mode: every input is read and listed; the commands that add code paths run where they matter
QUICK_OPS = {
    "valid": OPS, "keys": OPS, "many-tensors": OPS, "hostile-pickle": ("read", "inspect-json", "simulate"),
    "filesystem": ("read", "inspect-json", "stats", "simulate"), "sharded": ("read", "inspect-json", "diff"),
    "zip-structure": ("read", "inspect-json", "stats", "diff"), "bomb": ("read", "inspect-json", "simulate"),
    # a hang or a balloon may hide in any command; names with controls matter where text is printed
    "hang": OPS, "balloon": OPS, "hf-cache": OPS, "messages": OPS,
    "terminal": ("inspect", "inspect-json", "stats", "diff", "simulate"),
}
TEXT_OPS = ("inspect", "stats", "diff", "simulate")   # text output: no terminal control may reach it
MAX_ERROR_LINE = 1000      # characters of an error line: a key or path it quotes is cut
QUICK_DEFAULT = ("read", "inspect-json", "stats")
TIMEOUT = 10.0
MEM_CAP = 4 << 30          # RLIMIT_AS headroom above the fork server's own address space
MEM_BUDGET = 1 << 30       # peak RSS growth above the fork server's that counts as unbounded
# ... plus this much per tensor the corpus wrote into the input (10**6 tiny tensors): memory that grows with what the
# file really holds is not driven by a size it merely claims. torch.load itself holds ~0.86 KB per tensor of a state
# dict (10**5 views of one storage: +84 MB with map_location="meta", +92 MB with mmap=True)
MEM_PER_TENSOR = 1 << 10
ALONE_TENSORS = 100_000    # runs on inputs holding at least this many tensors run with no other run beside them
NOBODY = 65534
DANGER_EVENTS = {"os.system", "subprocess.Popen", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
                 "pty.spawn", "webbrowser.open", "socket.connect", "socket.bind", "os.remove", "os.rmdir",
                 "shutil.rmtree", "os.rename", "os.truncate", "os.kill", "os.killpg", "ctypes.dlopen",
                 "os.startfile", "os.putenv", "os.unsetenv"}
SEVERITY = ("code-exec", "crash", "hang", "memory", "unclean", "terminal", "wrong")


@dataclass
class Run:
    input: str
    category: str
    op: str
    rc: int | None = None
    signal: int | None = None
    seconds: float = 0.0
    peak_mb: float = 0.0
    grow_mb: float = 0.0
    stderr: str = ""
    stdout_head: str = ""
    problems: list = field(default_factory=list)   # [(kind, detail)]
    outcome: str = ""                              # "result" | "clean-error" | first problem kind

    def to_json(self):
        return {k: getattr(self, k) for k in ("input", "category", "op", "rc", "signal", "seconds", "peak_mb",
                                               "grow_mb", "stderr", "stdout_head", "problems", "outcome")}


def argv_for(op: str, inp, bases: dict) -> list[str]:
    path = inp.path
    if op == "inspect":
        return ["inspect", path]
    if op == "inspect-json":
        return ["inspect", path, "--json"]
    if op == "stats":
        return ["stats", path, inp.key]
    if op == "diff":
        return ["diff", path, bases["zip"]]
    if op == "simulate":
        return ["simulate", "--model", "demo:MyBatchNormModel", "--checkpoint", path]
    raise ValueError(op)


# ---- the child ------------------------------------------------------------------------------------------------------

def exercise(path: str) -> dict:
    """Everything a window does with an input, in-process: open it, list every entry, rank the state dicts, read
    every tensor's values (up to 2,000, each under 256 MB), materialise the default state dict on the meta device.
    Only :class:`~explorer.errors.ExplorerError` may escape; one unreadable tensor is an error of that tensor."""
    from explorer.core.loaders import open_checkpoint
    from explorer.core.gc_pause import gc_paused
    from explorer.errors import ExplorerError
    with gc_paused():   # as the window's open worker (explorer.qt.compare.load_side_data) opens and lists
        ck = open_checkpoint(path)
        # the harness's own copy of the listing (JSON arrays): a tuple each, no list per entry
        entries = [(e.path, e.shape, e.dtype) for e in ck.entries]
        for ref in ck.state_dicts:
            ck.state_dict_infos(ref.path)
    read = 0
    for e in ck.entries:
        if read >= 2000:
            break
        if e.device == "meta" or e.nbytes > 256 << 20:
            continue
        try:
            ck.read(e.path).clone()  # touch every byte of the mapping
            read += 1
        except ExplorerError:
            pass
    if ck.default_state_dict is not None:
        ck.load_object(device="meta")
        ck.module_classes()
    return {"format": ck.format, "entries": entries, "references": list(ck.references)}


def _read_all(path: str) -> int:
    """The ``read`` op of a child: :func:`exercise`, printed as JSON; an ExplorerError is one line and exit 2.
    It runs as every command of ``main.py`` does (``explorer.cli.main``): with the cyclic GC off. With 10**6
    entries alive, each full collection during the value reads walks millions of objects (the window reads values
    in its compute process, away from that heap)."""
    from explorer.core.gc_pause import gc_paused
    from explorer.errors import ExplorerError
    try:
        with gc_paused():
            print(json.dumps(exercise(path)))
        return 0
    except ExplorerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _child(task: dict, files: dict, env: dict) -> None:
    """In the forked child: sandbox, run one op, exit with its status. Never returns."""
    rc = 1
    try:
        os.setpgid(0, 0)
        for fd, name in ((1, "out"), (2, "err")):
            f = os.open(files[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(f, fd)
            os.close(f)
        audit = open(files["audit"], "w", buffering=1)
        root = env["root"]
        danger = DANGER_EVENTS

        def hook(event, args):
            if event in danger or event.startswith("os.exec") or event.startswith("os.spawn"):
                audit.write(f"{event} {str(args)[:200]!r}\n")
            elif event == "open" and len(args) >= 3:
                p, mode, flags = args[0], args[1], args[2]
                writing = (isinstance(mode, str) and any(ch in mode for ch in "wax+")) or (
                    isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC))
                if writing and isinstance(p, (str, bytes)) and os.fsdecode(p).startswith(root):
                    audit.write(f"write {os.fsdecode(p)!r}\n")

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        # the usual desktop soft limit, whatever this machine's is: a reader must not need a descriptor per tensor
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, nofile[0]), nofile[1]))
        limit = env["as_limit"]
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        os.environ["BROWSER"] = env["browser"]
        os.chdir(env["scratch"])
        if task["nobody"]:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
        sys.addaudithook(hook)
        sys.argv = ["main.py", *task["argv"]]
        if task["op"] == "read":
            rc = _read_all(task["path"])
        else:
            from explorer.cli import main
            rc = main(task["argv"])
        rc = 0 if rc is None else int(rc)
    except SystemExit as e:  # what the interpreter would do with it
        code = e.code
        if code is None:
            rc = 0
        elif isinstance(code, int):
            rc = code
        else:
            print(code, file=sys.stderr)
            rc = 1
    except BaseException:  # an uncaught exception: the interpreter prints the traceback and exits 1
        try:
            traceback.print_exc()
        except BaseException:
            pass
        rc = 1
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        pass
    os._exit(rc & 0xFF)


# ---- the fork server ----------------------------------------------------------------------------------------------

def _status(pid: int) -> dict:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmSize", "VmRSS"):
                out[k] = int(v.split()[0]) * 1024
    return out


def _warm_up() -> None:
    """Import everything a run needs once, in the server, without running a torch op (no threads before fork)."""
    import torch  # noqa: F401
    import explorer.cli as cli
    cli.build_parser()
    from explorer.core.loaders import _ensure_builtin
    _ensure_builtin()
    import explorer.core.simulate.run  # noqa: F401
    import explorer.core.diff  # noqa: F401
    import explorer.core.stats  # noqa: F401
    import explorer.core.demo_models  # noqa: F401
    import explorer.core.tree  # noqa: F401
    # as the window does once torch is imported (explorer.qt.compare.freeze_heap): what start-up allocated is out
    # of the cyclic GC's reach, in every forked run
    import gc
    gc.freeze()


def _hash_tree(root: str, skip: tuple[str, ...]) -> dict[str, tuple]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if dirpath.startswith(skip):
            dirnames[:] = []
            continue
        out[dirpath] = ("dir", tuple(sorted(dirnames + filenames)))
        for name in filenames:
            p = os.path.join(dirpath, name)
            try:
                st = os.lstat(p)
            except OSError:
                continue
            if not os.path.isfile(p) or os.path.islink(p):
                out[p] = ("other", st.st_mode)
                continue
            h = hashlib.sha256()
            try:
                with open(p, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
            except OSError:
                pass
            out[p] = (h.hexdigest(), st.st_size, st.st_mtime_ns, st.st_mode)
    return out


def run_all(manifest: dict, ops: tuple, workers: int, timeout: float, log=print) -> tuple[list[Run], dict]:
    root = manifest["root"]
    bases = manifest["bases"]
    markers, canary = manifest["markers"], manifest["canary"]
    scratch = os.path.join(root, "scratch")
    runs_dir = os.path.join(root, "runs")
    os.makedirs(runs_dir, exist_ok=True)
    os.chmod(runs_dir, 0o755)
    st = _status(os.getpid())
    env = {"root": root + os.sep, "browser": manifest["browser"], "scratch": scratch,
           "as_limit": st["VmSize"] + MEM_CAP}
    base_rss = st["VmRSS"]
    tasks = []
    for inp in manifest["inputs"]:
        for op in _ops_for(inp, ops):
            tasks.append({"input": inp, "op": op, "path": inp.path, "nobody": inp.nobody,
                          "argv": argv_for(op, inp, bases) if op != "read" else [inp.path]})
    skip = (runs_dir, scratch, markers)
    before = _hash_tree(root, skip)
    runs: list[Run] = []
    running: dict[int, tuple] = {}
    queue = list(reversed(tasks))
    seen_markers: set[str] = set()
    t0 = time.monotonic()
    while queue or running:
        while queue and len(running) < workers:
            # a run on an input with very many tensors (~1 GB, memory-bound) takes the machine alone: two of them at
            # once on 2 cores took ~40% longer each, and the time limit would measure the neighbour, not the input
            if running and (queue[-1]["input"].tensors >= ALONE_TENSORS
                            or any(t["input"].tensors >= ALONE_TENSORS for t, *_ in running.values())):
                break
            task = queue.pop()
            n = len(runs) + len(running)
            files = {k: os.path.join(runs_dir, f"{n}.{k}") for k in ("out", "err", "audit")}
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                _child(task, files, env)
            running[pid] = (task, files, time.monotonic(), False)
        reaped = False
        for pid in list(running):
            task, files, start, killed = running[pid]
            try:
                wpid, status, ru = os.wait4(pid, os.WNOHANG)
            except ChildProcessError:
                wpid, status, ru = pid, 0, None
            if wpid == 0:
                if not killed and time.monotonic() - start > timeout:
                    try:
                        os.killpg(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    running[pid] = (task, files, start, True)
                continue
            reaped = True
            del running[pid]
            try:
                os.killpg(pid, signal.SIGKILL)  # anything the run left behind
            except (ProcessLookupError, PermissionError):
                pass
            run = _collect(task, files, status, ru, time.monotonic() - start, killed, base_rss)
            new_markers = set(os.listdir(markers)) - seen_markers
            if new_markers:
                seen_markers |= new_markers
                run.problems.append(("code-exec", f"marker files appeared: {sorted(new_markers)}"))
            if not os.path.exists(canary):
                run.problems.append(("code-exec", "the canary file was deleted"))
                os.makedirs(os.path.dirname(canary), exist_ok=True)
                open(canary, "w").close()
            _classify(run)
            runs.append(run)
            if len(runs) % 500 == 0:
                log(f"  ... {len(runs)}/{len(tasks)} runs, {time.monotonic() - t0:.0f} s")
        if not reaped:
            time.sleep(0.002)
    after = _hash_tree(root, skip)
    changed = sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))
    return runs, {"seconds": time.monotonic() - t0, "changed_inputs": changed, "base_rss_mb": base_rss / 2 ** 20}


def _ops_for(inp, ops) -> tuple:
    """``ops`` is a tuple (every input runs it) or ``"quick"`` (by category; an input may narrow it further)."""
    if ops != "quick":
        return ops
    if inp.quick_ops:
        return tuple(inp.quick_ops)
    return QUICK_OPS.get(inp.category, QUICK_DEFAULT)


def _collect(task, files, status, ru, seconds, killed, base_rss) -> Run:
    inp = task["input"]
    run = Run(inp.name, inp.category, task["op"], seconds=round(seconds, 3))
    if os.WIFSIGNALED(status):
        run.signal = os.WTERMSIG(status)
    elif os.WIFEXITED(status):
        run.rc = os.WEXITSTATUS(status)
    if ru is not None:
        run.peak_mb = round(ru.ru_maxrss / 1024, 1)
        run.grow_mb = round(max(0.0, ru.ru_maxrss * 1024 - base_rss) / 2 ** 20, 1)
    err = _read_text(files["err"], 20000)
    # a JSON answer is read whole (10**6 entries are ~100 MB; cut at 64 MB it would not parse); other output's head
    out = _read_text(files["out"], 1 << 30 if task["op"] in ("read", "inspect-json") else 1 << 26)
    audit = _read_text(files["audit"], 20000)
    run.stderr = err[:2000]
    run.stdout_head = out[:300]
    files_raw = {k: _read_raw(files[k], 1 << 26) if task["op"] in TEXT_OPS else b"" for k in ("out", "err")}
    for f in files.values():
        try:
            os.remove(f)
        except OSError:
            pass
    if killed:
        run.problems.append(("hang", f"killed after {TIMEOUT:.0f} s"))
        return run
    if run.signal is not None:
        run.problems.append(("crash", f"killed by signal {signal.Signals(run.signal).name}: {err[-300:]!r}"))
        return run
    if audit.strip():
        run.problems.append(("code-exec", f"audit events: {audit.strip()[:400]}"))
    budget = MEM_BUDGET + MEM_PER_TENSOR * inp.tensors
    if run.grow_mb * 2 ** 20 > budget:
        run.problems.append(("memory", f"peak RSS grew by {run.grow_mb:.0f} MB (budget {budget / 2 ** 20:.0f} MB)"))
    if task["op"] in TEXT_OPS:
        found = control_bytes(files_raw["out"] + b"\n" + files_raw["err"])
        if found:
            run.problems.append(("terminal", f"{len(found)} terminal control characters in text output, e.g. "
                                             f"{found[:8]!r}"))
    ok_rcs = (0, 1) if task["op"] in ("simulate", "diff") else (0,)   # diff: 1 when the files differ
    if "Traceback" in err or "Traceback" in out[:20000]:
        run.problems.append(("unclean", "traceback: " + _last_line(err)))
    elif run.rc == 2:
        lines = err.splitlines()
        if len(lines) != 1 or not err.endswith("\n"):
            run.problems.append(("unclean", f"{len(lines)} stderr lines: {err[:300]!r}"))
        elif not lines[0].startswith("error: "):
            run.problems.append(("unclean", f"stderr is not an error line: {lines[0][:300]!r}"))
        elif lines[0].startswith("error: internal error"):
            run.problems.append(("unclean", lines[0][:300]))
        elif len(lines[0]) > MAX_ERROR_LINE:
            run.problems.append(("unclean", f"an error line of {len(lines[0]):,} characters: {lines[0][:200]!r}"))
        elif inp.expect == "ok":
            run.problems.append(("wrong", f"a valid input was refused: {lines[0][:300]}"))
        elif inp.bad_error and inp.bad_error in lines[0]:
            run.problems.append(("wrong", f"misleading error ({inp.bad_error!r}): {lines[0][:300]}"))
        else:
            run.outcome = "clean-error"
    elif run.rc in ok_rcs:
        _check_result(run, task, inp, out)
        if not run.problems:
            run.outcome = "result"
    else:
        run.problems.append(("unclean", f"exit status {run.rc}: {_last_line(err)}"))
    return run


def _check_result(run: Run, task: dict, inp, out: str) -> None:
    if inp.expect == "error":
        run.problems.append(("wrong", "a broken input was accepted (exit %d): %r" % (run.rc, out[:200])))
        return
    if task["op"] not in ("read", "inspect-json"):
        return
    try:
        data = json.loads(out)
    except ValueError as e:
        run.problems.append(("wrong", f"output is not one JSON object ({e})"))
        return
    if inp.entries is not None:
        got = [[e["path"], e["shape"], e["dtype"]] if isinstance(e, dict) else e for e in data.get("entries", [])]
        want = [list(e) for e in inp.entries]
        if got != want:
            diff = next(((i, g, w) for i, (g, w) in enumerate(zip(got, want)) if g != w), None)
            run.problems.append(("wrong", f"listed {len(got)} tensors, expected {len(want)}; first difference "
                                          f"{str(diff)[:300]}"))
    for ref in inp.refs or ():
        if ref not in data.get("references", []):
            run.problems.append(("wrong", f"reference {ref!r} not listed (got {data.get('references')!r:.200})"))


def _classify(run: Run) -> None:
    if run.problems:
        kinds = [k for k, _ in run.problems]
        run.outcome = next(k for k in SEVERITY if k in kinds)


_CONTROL = None


def control_bytes(data: bytes) -> list[str]:
    """The terminal controls in output bytes: C0 controls but newline and tab, DEL, C1 controls (U+0080..U+009F),
    and raw bytes 0x80..0x9f that are not part of UTF-8 text (a C1 control to an 8-bit terminal). ESC is C0."""
    global _CONTROL
    if _CONTROL is None:
        import re
        _CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\udc80-\udc9f]")
    return _CONTROL.findall(data.decode("utf-8", "surrogateescape"))


def _read_raw(path: str, limit: int) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(limit)
    except OSError:
        return b""


def _read_text(path: str, limit: int) -> str:
    try:
        with open(path, "rb") as f:
            return f.read(limit).decode("utf-8", "replace")
    except OSError:
        return ""


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


# ---- real subprocesses (agreement with the fork server) -------------------------------------------------------------

def real_runs(manifest: dict, names: list[str], timeout: float = 120) -> list[dict]:
    out = []
    by_name = {i.name: i for i in manifest["inputs"]}
    procs = []
    for name in names:
        inp = by_name.get(name)
        if inp is None:
            continue
        argv = [sys.executable, os.path.join(ROOT, "main.py"), "inspect", inp.path, "--json"]
        procs.append((name, subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                             cwd=os.path.join(manifest["root"], "scratch"))))
    for name, p in procs:
        try:
            so, se = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            so, se = p.communicate()
        out.append({"input": name, "rc": p.returncode, "stderr": se[-500:], "stdout_head": so[:300]})
    return out


# ---- the table ------------------------------------------------------------------------------------------------------

def table(runs: list[Run], meta: dict) -> str:
    cats: dict[str, dict] = {}
    for r in runs:
        c = cats.setdefault(r.category, {"inputs": set(), "runs": 0, "result": 0, "clean-error": 0, "unclean": 0,
                                         "wrong": 0, "code-exec": 0, "crash": 0, "hang": 0, "memory": 0,
                                         "terminal": 0,
                                         "peak": 0.0, "grow": 0.0, "slowest": 0.0})
        c["inputs"].add(r.input)
        c["runs"] += 1
        c[r.outcome] = c.get(r.outcome, 0) + 1
        c["peak"] = max(c["peak"], r.peak_mb)
        c["grow"] = max(c["grow"], r.grow_mb)
        c["slowest"] = max(c["slowest"], r.seconds)
    head = (f"{'category':<20} {'inputs':>6} {'runs':>6} {'results':>7} {'clean err':>9} {'unclean':>7} "
            f"{'wrong':>5} {'code exec':>9} {'crashes':>7} {'hangs':>5} {'mem':>4} {'ctrl':>4} {'peak RSS MB':>11} "
            f"{'(+growth)':>9} {'slowest s':>9}")
    lines = [head, "-" * len(head)]
    tot = {"inputs": 0, "runs": 0}
    for name, c in cats.items():
        lines.append(f"{name:<20} {len(c['inputs']):>6} {c['runs']:>6} {c['result']:>7} {c['clean-error']:>9} "
                     f"{c['unclean']:>7} {c['wrong']:>5} {c['code-exec']:>9} {c['crash']:>7} {c['hang']:>5} "
                     f"{c['memory']:>4} {c['terminal']:>4} {c['peak']:>11.0f} {c['grow']:>9.0f} {c['slowest']:>9.2f}")
        tot["inputs"] += len(c["inputs"])
        for k in ("runs", "result", "clean-error", "unclean", "wrong", "code-exec", "crash", "hang", "memory",
                  "terminal"):
            tot[k] = tot.get(k, 0) + c[k]
    peak = max((r.peak_mb for r in runs), default=0)
    grow = max((r.grow_mb for r in runs), default=0)
    slow = max((r.seconds for r in runs), default=0)
    lines.append("-" * len(head))
    lines.append(f"{'TOTAL':<20} {tot['inputs']:>6} {tot['runs']:>6} {tot['result']:>7} {tot['clean-error']:>9} "
                 f"{tot['unclean']:>7} {tot['wrong']:>5} {tot['code-exec']:>9} {tot['crash']:>7} {tot['hang']:>5} "
                 f"{tot['memory']:>4} {tot['terminal']:>4} {peak:>11.0f} {grow:>9.0f} {slow:>9.2f}")
    lines.append(f"inputs changed by the runs: {len(meta['changed_inputs'])}; fork-server RSS "
                 f"{meta['base_rss_mb']:.0f} MB (growth = peak RSS above it); {meta['seconds']:.1f} s of runs")
    return "\n".join(lines)


def failures(runs: list[Run]) -> list[Run]:
    return [r for r in runs if r.problems]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a representative subset (CI)")
    ap.add_argument("--json", metavar="OUT", help="write every run and the summary as JSON")
    ap.add_argument("--keep", metavar="DIR", help="generate the corpus in DIR and keep it")
    ap.add_argument("--only", metavar="CATEGORY", action="append", help="only these categories")
    ap.add_argument("--ops", default=None, help="comma-separated ops (default: %s)" % ",".join(OPS))
    ap.add_argument("--workers", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    ap.add_argument("--timeout", type=float, default=TIMEOUT)
    ap.add_argument("--real", type=int, default=None, help="also run N inputs through a fresh python main.py")
    ap.add_argument("--max-failures", type=int, default=60, help="failures printed in full")
    args = ap.parse_args(argv)
    t_start = time.monotonic()
    root = os.path.abspath(args.keep) if args.keep else tempfile.mkdtemp(prefix="hostile-corpus-")
    os.makedirs(root, exist_ok=True)
    os.chmod(root, 0o755)  # the unprivileged (permission) runs must reach their inputs
    _warm_up()
    # the corpus is generated in a forked child: generation runs torch ops, the server must not before forking
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            corpus_mod.build(root, quick=args.quick)
        except BaseException:
            traceback.print_exc()
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        print("corpus generation failed", file=sys.stderr)
        return 3
    manifest = corpus_mod.load_manifest(root)
    if args.only:
        manifest["inputs"] = [i for i in manifest["inputs"] if i.category in args.only]
    t_gen = time.monotonic() - t_start
    ops = tuple(args.ops.split(",")) if args.ops else ("quick" if args.quick else OPS)
    real_names = []
    n_real = args.real if args.real is not None else (2 if args.quick else 4)
    if n_real:
        real_names = ["valid-zip", "zip:os.system", "truncated:zip@1", "safetensors:length=2^63"][:n_real]
    print(f"corpus: {len(manifest['inputs'])} inputs ({'quick' if args.quick else 'full'}) in {root}, "
          f"generated in {t_gen:.1f} s; ops: {ops if ops == 'quick' else ', '.join(ops)}; {args.workers} workers, {args.timeout:.0f} s limit")
    real_started = time.monotonic()
    runs, meta = run_all(manifest, ops, args.workers, args.timeout)
    real = real_runs(manifest, real_names) if real_names else []
    real_seconds = time.monotonic() - real_started - meta["seconds"]
    print(table(runs, meta))
    bad = failures(runs)
    by_kind: dict[str, int] = {}
    for r in bad:
        by_kind[r.outcome] = by_kind.get(r.outcome, 0) + 1
    if bad:
        print(f"\n{len(bad)} failing runs ({', '.join(f'{v} {k}' for k, v in by_kind.items())}):")
        for r in bad[:args.max_failures]:
            detail = "; ".join(f"{k}: {d}" for k, d in r.problems)
            print(f"  [{r.outcome}] {r.input} :: {r.op} (rc={r.rc}, signal={r.signal}, {r.seconds:.2f} s) -- "
                  f"{detail[:400]}")
        if len(bad) > args.max_failures:
            print(f"  ... and {len(bad) - args.max_failures} more (--json for all)")
    for p in meta["changed_inputs"][:20]:
        print(f"  input changed: {p}")
    for r in real:
        print(f"real `python main.py inspect --json` on {r['input']}: exit {r['rc']} "
              f"{(r['stderr'].strip().splitlines() or [''])[-1][:200]}")
    total = time.monotonic() - t_start
    print(f"total {total:.1f} s (corpus {t_gen:.1f} s, runs {meta['seconds']:.1f} s, "
          f"real subprocesses {max(0.0, real_seconds):.1f} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"runs": [r.to_json() for r in runs], "changed_inputs": meta["changed_inputs"],
                       "real": real, "seconds": total, "quick": args.quick,
                       "inputs": [i.to_json() for i in manifest["inputs"]]}, f)
    if not args.keep:
        _rmtree(root)
    return 1 if bad or meta["changed_inputs"] else 0


def _rmtree(root: str) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            try:
                os.chmod(os.path.join(dirpath, d), 0o755)
            except OSError:
                pass
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
