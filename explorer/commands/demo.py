"""Run a demo headless: ``demo batchnorm`` replays the scripted BatchNorm sequence with real torch and prints, per step,
the action, the observed buffers and one sentence saying what changed (``--json`` for teaching material)."""
from __future__ import annotations

import os
import subprocess
import sys

from . import print_json
from ..core.bn_demo import BatchNormDemo, run_default_sequence
from ..core.bn_observe import SIDES, VARIANTS
from ..errors import ExplorerError


def add_arguments(p):
    p.add_argument("name", choices=["batchnorm"], help="which demo (only 'batchnorm' for now)")
    p.add_argument("--variant", choices=list(VARIANTS), default="linear",
                   help="linear: the article's MyBatchNormModel (Linear + BatchNorm1d); conv: Conv2d + BatchNorm2d")
    p.add_argument("--seed", type=int, default=0, help="seed of the models' initial weights and of the input batches")
    p.add_argument("--json", action="store_true", help="print one JSON object (the list of steps) instead of text")
    p.add_argument("--script", metavar="OUT.py",
                   help="also write a torch-only Python script that replays the sequence and asserts every buffer")
    p.add_argument("--screenshot", metavar="OUT.png",
                   help="render the demo window offscreen after the sequence and save it as a PNG (needs PySide6; "
                        "runs `python -m explorer.qt.demo_view` in a child process, so this command never loads Qt)")


def _vec(v) -> str:
    return "None" if v is None else "[" + ", ".join(f"{x:+.4f}" for x in v) + "]"


def render_text(demo: BatchNormDemo, out) -> None:
    w = out.write
    w(f"BatchNorm demo: {demo.variant.model_class.__name__} (variant {demo.variant.name}), seed {demo.seed}\n")
    for i, step in enumerate(demo.history, 1):
        w(f"\nstep {i}: {step.label}\n")
        for side in SIDES:
            a, b = step.after.get(side), step.before.get(side)
            if a is None:
                continue
            for name, s in a.modules.items():
                prev = b.modules[name] if b is not None else None
                mode = "train" if s.training else "eval"
                w(f"  {side} {name}  ({mode} mode, momentum {s.momentum}, "
                  f"track_running_stats {s.track_running_stats})\n")
                for key in ("running_mean", "running_var"):
                    before = getattr(prev, key) if prev is not None else None
                    after = getattr(s, key)
                    arrow = "unchanged" if before == after else f"was {_vec(before)}"
                    w(f"    {key:<20} {_vec(after)}  ({arrow})\n")
                nb = prev.num_batches_tracked if prev is not None else None
                w(f"    {'num_batches_tracked':<20} {s.num_batches_tracked}"
                  f"  ({'unchanged' if nb == s.num_batches_tracked else f'was {nb}'})\n")
        w(f"  => {step.sentence}\n")


def take_screenshot(path: str, variant: str, seed: int) -> None:
    """Render the window in a child process: the command line itself never imports Qt."""
    package_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
    env.setdefault("QT_QPA_PLATFORM", "offscreen")
    r = subprocess.run([sys.executable, "-m", "explorer.qt.demo_view", os.path.abspath(path), "--variant", variant,
                        "--seed", str(seed)], env=env, capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        raise ExplorerError(f"the screenshot {path!r} could not be made: {lines[-1] if lines else r.returncode}")


def run(args) -> int:
    demo = run_default_sequence(args.variant, args.seed)
    if args.script:
        demo.save_script(args.script)
    if args.screenshot:
        take_screenshot(args.screenshot, args.variant, args.seed)
    if args.json:
        print_json(demo.to_json())
    else:
        render_text(demo, sys.stdout)
    return 0
