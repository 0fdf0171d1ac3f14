"""First steps on the command line (issue 12, points 11, 12, 14, 15, 16) and terminal escapes in text output
(issue 13, class 5). Commands run in subprocesses, as a user runs them."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[2]
# a control byte a terminal acts on: C0 but TAB/LF, DEL, and C1 as UTF-8 encodes it
CONTROL_BYTES = re.compile(rb"[\x00-\x08\x0b-\x1f\x7f]|\xc2[\x80-\x9f]")


def run(*args, env=None, cwd=ROOT, timeout=120):
    e = dict(os.environ, PYTHONPATH=str(ROOT))
    e.update(env or {})
    for k in [k for k, v in e.items() if v is None]:
        del e[k]
    t = time.monotonic()
    r = subprocess.run([sys.executable, str(ROOT / "main.py"), *args], cwd=cwd, env=e, capture_output=True,
                       timeout=timeout)
    return r.returncode, r.stdout, r.stderr, time.monotonic() - t


NO_DISPLAY = {"DISPLAY": None, "WAYLAND_DISPLAY": None, "QT_QPA_PLATFORM": None}


# ---- point 11: an unknown command ----------------------------------------------------------------------------------

def test_misspelt_command_is_one_line_exit_2(tmp_path):
    rc, out, err, elapsed = run("inpsect", "x.pt", env=NO_DISPLAY, cwd=tmp_path)
    assert rc == 2 and out == b""
    lines = err.decode().splitlines()
    assert lines == ["error: unknown command 'inpsect' — did you mean 'inspect'? "
                     "(python main.py --help lists the commands)"]
    assert elapsed < 10


def test_a_folder_named_like_a_word_still_opens_in_the_window(tmp_path):
    (tmp_path / "inspct").mkdir()
    rc, _, err, _ = run("inspct", env=NO_DISPLAY, cwd=tmp_path)
    assert rc == 2 and err.decode().startswith("error: no display could be opened")   # the window path, not a typo
    rc, _, err, _ = run("bogus", env=NO_DISPLAY, cwd=tmp_path)
    assert rc == 2 and "unknown command 'bogus'" in err.decode() and "inspect, simulate" in err.decode()


def test_help_shows_the_window_options_beside_the_commands():
    from explorer.window_args import build_parser
    rc, out, _, _ = run("--help")
    text = out.decode()
    assert rc == 0
    for command in ("inspect", "simulate", "stats", "diff", "demo"):
        assert re.search(rf"^\s+{command}\s", text, re.M), command
    options = [s for a in build_parser()._actions if a.help != "==SUPPRESS==" for s in a.option_strings]
    assert {"--model", "--simulate", "--select", "--screenshot"} <= set(options)
    for option in options:
        assert option in text, option


# ---- point 12: no display ------------------------------------------------------------------------------------------

def test_no_display_is_one_line_exit_2_before_qt():
    rc, out, err, elapsed = run(env=NO_DISPLAY)
    lines = err.decode().splitlines()
    assert rc == 2 and len(lines) == 1, err
    assert lines[0].startswith("error: no display could be opened: DISPLAY is not set")
    assert "--screenshot" in lines[0] and "every command" in lines[0]
    assert b"Qt" not in err.replace(b"Qt's", b"") and elapsed < 10


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Qt's xcb plugin is Linux's")
def test_missing_xcb_libraries_are_those_the_plugin_cannot_load():
    """Checked against the dynamic loader's view of the installed plugin (ldd): every library it cannot find is
    named by its package, and every xcb library it needs is in our table."""
    import PySide6
    from explorer.app_entry import XCB_LIBRARIES, missing_xcb_packages
    plugin = Path(PySide6.__file__).parent / "Qt" / "plugins" / "platforms" / "libqxcb.so"
    ldd = subprocess.run(["ldd", str(plugin)], capture_output=True, text=True).stdout
    needed = dict(re.findall(r"^\s*(\S+) => (.*)$", ldd, re.M))
    for soname in needed:
        if soname.startswith(("libxcb", "libxkbcommon", "libX11-xcb")):
            assert soname in XCB_LIBRARIES, soname
    not_found = {s for s, where in needed.items() if where.strip().startswith("not found")}
    missing = set(missing_xcb_packages())
    assert {XCB_LIBRARIES[s] for s in not_found if s in XCB_LIBRARIES} <= missing
    found = {XCB_LIBRARIES[s] for s, where in needed.items() if s in XCB_LIBRARIES and s not in not_found}
    assert not (found & missing)


def test_unusable_display_is_one_line_and_screenshot_still_works(tmp_path):
    env = dict(NO_DISPLAY, DISPLAY=":4091")   # no X server there (and maybe no xcb libraries)
    rc, _, err, elapsed = run(env=env)
    lines = err.decode().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: no display could be opened"), err
    assert elapsed < 15
    out_png = tmp_path / "shot.png"
    rc, out, err, _ = run("demo:MyModel", "--screenshot", str(out_png), env=env, timeout=300)
    assert rc == 0, err
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_display_problem_rules(monkeypatch):
    from explorer import app_entry
    monkeypatch.setattr(app_entry.sys, "platform", "linux")
    assert app_entry.display_problem({"QT_QPA_PLATFORM": "offscreen"}) is None
    assert app_entry.display_problem({"WAYLAND_DISPLAY": "wayland-0"}) is None
    assert "DISPLAY is not set" in app_entry.display_problem({})
    monkeypatch.setattr(app_entry, "missing_xcb_packages", lambda: ["libxcb-cursor0"])
    assert "apt install libxcb-cursor0" in app_entry.display_problem({"DISPLAY": ":0"})
    monkeypatch.setattr(app_entry.sys, "platform", "darwin")
    assert app_entry.display_problem({}) is None


# ---- point 14: each suggestion once --------------------------------------------------------------------------------

def test_did_you_mean_names_each_key_once(tmp_path):
    m = nn.Sequential()
    m.add_module("conv1", nn.Conv2d(1, 2, 3))
    m.add_module("bn", nn.BatchNorm2d(2))
    torch.save(m.state_dict(), tmp_path / "tiny.pth")
    for target in (str(tmp_path / "tiny.pth"), "demo:MyBatchNormModel"):
        rc, _, err, _ = run("stats", target, "conv1.wieght")
        text = err.decode()
        assert rc == 2 and len(text.splitlines()) == 1
        named = re.findall(r"'([^']*)'", text.split("did you mean", 1)[1]) if "did you mean" in text else []
        assert named and len(named) == len(set(named)), text
        if target.endswith(".pth"):
            assert named[0] == "conv1.weight" and set(named) <= set(m.state_dict())


# ---- point 16: factories with literal arguments --------------------------------------------------------------------

MODELS_PY = '''
import torch.nn as nn
def build(hidden=8, depth=1):
    return nn.Sequential(*[nn.Linear(hidden, hidden) for _ in range(depth)])
class Net(nn.Module):
    def __init__(self, num_classes, sizes=(4,)):
        super().__init__()
        self.fc = nn.Linear(sizes[0], num_classes)
'''


def test_model_spec_with_literal_arguments(tmp_path):
    (tmp_path / "mymodels.py").write_text(MODELS_PY)
    ns: dict = {}
    exec(MODELS_PY, ns)   # the same factories, called by torch-side code directly
    for spec, model in (("mymodels.py:build(hidden=32, depth=2)", ns["build"](hidden=32, depth=2)),
                        ("mymodels:Net(10, sizes=[6])", ns["Net"](10, sizes=[6]))):
        rc, out, err, _ = run("inspect", spec, "--json", cwd=tmp_path)
        assert rc == 0, err
        got = {e["path"][0]: e["shape"] for e in json.loads(out)["entries"]}
        assert got == {k: list(v.shape) for k, v in model.state_dict().items()}


def test_model_spec_arguments_are_never_evaluated(tmp_path):
    (tmp_path / "mymodels.py").write_text(MODELS_PY)
    for spec, says in (("mymodels.py:build(__import__('os').system('touch CANARY'))", "is not a literal"),
                       ("mymodels.py:build(hidden=open('CANARY', 'w'))", "hidden=open('CANARY', 'w')\" is not a literal"),
                       ("mymodels.py:build(*[1])", "not allowed"), ("mymodels.py:build(**{'hidden': 2})", "not allowed"),
                       ("mymodels.py:build(hidden=1, hidden=2)", "given twice"),
                       ("mymodels.py:build(", "not valid Python")):
        rc, out, err, _ = run("inspect", spec, cwd=tmp_path)
        text = err.decode()
        assert rc == 2 and len(text.splitlines()) == 1 and says in text, (spec, text)
    assert not (tmp_path / "CANARY").exists()


# ---- point 15: what is not a tensor --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lightning(tmp_path_factory):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    opt = torch.optim.Adam(m.parameters(), lr=1e-3, betas=(0.9, 0.999))
    m(torch.randn(5, 3)).sum().backward()
    opt.step()
    path = tmp_path_factory.mktemp("ck") / "run.ckpt"
    torch.save({"epoch": 3, "global_step": 1200, "state_dict": m.state_dict(), "optimizer_states": [opt.state_dict()],
                "hyper_parameters": {"lr": 1e-3, "hidden": 32, "tags": ["a", "b"], "long": "x" * 500}}, path)
    return path, m, opt


def test_inspect_shows_values_and_one_optimizer_group(lightning):
    path, m, opt = lightning
    rc, out, _, _ = run("inspect", str(path))
    text = out.decode()
    assert rc == 0
    for line in ("  epoch: 3\n", "  global_step: 1200\n", "  hyper_parameters/lr: 0.001\n",
                 "  optimizer_states/0/param_groups/0/betas: (0.9, 0.999)\n",
                 "  optimizer_states/0/param_groups/0/params: [0, 1, 2, 3]\n"):
        assert line in text, line
    assert "  hyper_parameters/long: '" + "x" * 20 in text and "x" * 200 not in text   # cut
    n = len(opt.state_dict()["state"])
    assert f"  optimizer_states/0/state: {n} parameters, {3 * n} tensors (step, exp_avg, exp_avg_sq)\n" in text
    assert "state dicts found" not in text   # the per-parameter states are not offered as state dicts


def test_inspect_json_values_are_what_torch_loads(lightning):
    path, _, opt = lightning
    rc, out, _, _ = run("inspect", str(path), "--json")
    assert rc == 0
    d = json.loads(out)
    loaded = torch.load(path, weights_only=True)
    assert d["values"]
    for v in d["values"]:
        obj = loaded
        for part in v["path"]:
            obj = obj[int(part)] if isinstance(obj, list) else obj[part] if part in obj else obj[int(part)]
        assert not isinstance(obj, torch.Tensor)
        if "value" in v:
            assert v["value"] == (list(obj) if isinstance(obj, tuple) else obj), v
    paths = {tuple(v["path"]) for v in d["values"]}
    assert {("epoch",), ("hyper_parameters", "lr"), ("optimizer_states", "0", "param_groups", "0", "betas")} <= paths
    assert d["optimizer_states"] == [{"path": ["optimizer_states", "0", "state"], "parameters": len(opt.state),
                                      "tensors": 3 * len(opt.state), "slots": ["step", "exp_avg", "exp_avg_sq"]}]


def test_safetensors_metadata_and_flat_keys(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file
    sd = nn.Sequential(nn.Linear(2, 3), nn.Sequential(nn.Linear(3, 1))).state_dict()
    path = tmp_path / "m.safetensors"
    save_file(dict(sd), str(path), metadata={"format": "pt", "note": "trained 3 epochs"})
    with safe_open(str(path), "pt") as f:
        meta, keys = f.metadata(), list(f.keys())
    rc, out, _, _ = run("inspect", str(path), "--json")
    assert rc == 0 and json.loads(out)["metadata"] == meta
    rc, out, _, _ = run("inspect", str(path), "--flat")
    text = out.decode()
    assert "  note: 'trained 3 epochs'\n" in text
    listed = [line.split()[0] for line in text.split("state dict /:\n")[1].split("totals:")[0].splitlines()]
    assert sorted(listed) == sorted(keys) and "1.0.weight" in listed


# ---- issue 13 class 5: terminal escapes ----------------------------------------------------------------------------

EVIL = "evil\x1b[2J\x1b[1A\x1b[2K\x1b]52;c;SGVsbG8=\x07\r\x08\x9b\udc80"


@pytest.fixture(scope="module")
def hostile_files(tmp_path_factory):
    from tests.hostile.corpus import write_torch_zip
    d = tmp_path_factory.mktemp("esc")
    a = d / "a\x1b[2J.pt"   # the file name too
    torch.save({EVIL + ".weight": torch.ones(2), "ok.weight": torch.zeros(2)}, a)
    b = d / "b.pt"
    torch.save({EVIL + ".weight": torch.full((2,), 2.0), "ok.weight": torch.zeros(2)}, b)
    g = d / "global.pt"
    write_torch_zip(str(g), b"\x80\x02cos\x1b[1A\x1b[2K\nsys\x07tem\nq\x00.")   # a global name with escapes
    return a, b, g


def _assert_clean(out: bytes, err: bytes) -> None:
    for stream in (out, err):
        bad = CONTROL_BYTES.search(stream)
        assert bad is None, stream[max(0, bad.start() - 40):bad.end() + 40]


def test_no_control_byte_reaches_the_terminal(hostile_files):
    a, b, g = hostile_files
    # the output layer writes BEL and BS as \\a and \\b; an error message quoting the key with repr() as \\x07, \\x08
    shown = re.compile(r"evil\\x1b\[2J\\x1b\[1A\\x1b\[2K\\x1b\]52;c;SGVsbG8=\\(a|x07)\\r\\(b|x08)\\x9b\\udc80")
    cases = [(("inspect", str(a)), shown), (("inspect", str(a), "--flat"), shown),
             (("inspect", str(g)), re.compile(re.escape("os\\x1b[1A\\x1b[2K.sys\\atem"))),
             (("stats", str(a), EVIL + ".weight"), shown), (("stats", str(a), EVIL + ".wieght"), shown),
             (("diff", str(a), str(b)), shown),
             (("simulate", "--model", "demo:MyModel", "--checkpoint", str(a), "--no-strict"), shown),
             (("inspect", str(a) + "\x1b[2Jmissing"), re.compile(re.escape("\\x1b[2Jmissing")))]
    for args, want in cases:
        rc, out, err, _ = run(*args)
        assert rc in (0, 1, 2), (args, err)
        _assert_clean(out, err)
        assert want.search((out + err).decode()), (args, out, err)
        assert b"internal error" not in err and b"Traceback" not in err


def test_json_stays_json_with_every_key_exact(hostile_files):
    a, _, _ = hostile_files
    rc, out, err, _ = run("inspect", str(a), "--json")
    assert rc == 0, err
    _assert_clean(out, err)
    # every control character exact; a lone surrogate cannot be a key anywhere (no UTF-8 output can carry it): the
    # readers spell it with a backslash escape where the key is made, so `stats FILE 'evil…\\udc80.weight'` finds it
    spelled = EVIL.encode("utf-8", "backslashreplace").decode("utf-8")
    assert [e["path"][0] for e in json.loads(out)["entries"]] == [spelled + ".weight", "ok.weight"]


def test_undecodable_argument_is_one_clean_line(tmp_path):
    rc, out, err, _ = run("inspect", os.fsdecode(bytes(tmp_path) + b"/x\xff\x1b[2J.pt"))
    assert rc == 2 and len(err.splitlines()) == 1
    _assert_clean(out, err)
    assert b"\\udcff\\x1b[2J.pt" in err


def test_escape_controls_keeps_text_and_escapes_controls():
    from explorer.cli import escape_controls
    plain = "a.b  [3, 4] float32 é 💡\ttab\n"
    assert escape_controls(plain) is plain
    assert escape_controls("x\x1b[2J\r\x7f\x85\ud800é\n") == "x\\x1b[2J\\r\\x7f\\x85\\ud800é\n"


def _first_line_then_close(*args) -> tuple[str, int]:
    """``main.py ARGS | head -1``: the first line read, then the pipe closed while the command still writes; (that
    line, the command's exit status)."""
    with subprocess.Popen([sys.executable, str(ROOT / "main.py"), *map(str, args)], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT))) as proc:
        line = proc.stdout.readline()
        proc.stdout.close()
        err = proc.stderr.read()
        proc.wait(timeout=120)
    assert err == "", err
    return line, proc.returncode


def test_output_cut_short_by_its_reader_keeps_the_answer(tmp_path):
    """``diff A B | head -1`` and ``simulate ... | head -1``: the reader goes away while the command writes (output
    far larger than the pipe holds); the exit status is still the command's answer (1: the files differ, the load
    would raise), never 0 -- a script with ``pipefail`` must not read a failing check as a pass."""
    a = {f"layers.{i}.weight": torch.full((2,), float(i)) for i in range(3000)}
    b = {k: v + 1 for k, v in a.items()}
    torch.save(a, tmp_path / "a.pt")
    torch.save(b, tmp_path / "b.pt")
    line, rc = _first_line_then_close("diff", tmp_path / "a.pt", tmp_path / "b.pt")
    assert line and rc == 1, (line, rc)
    (tmp_path / "m.py").write_text("import torch.nn as nn\ndef make():\n    return nn.ModuleDict({'layers': "
                                   "nn.ModuleList([nn.Linear(3, 1, bias=False) for _ in range(3000)])})\n")
    line, rc = _first_line_then_close("simulate", "--model", f"{tmp_path / 'm.py'}:make", "--checkpoint",
                                      tmp_path / "a.pt")
    assert line and rc == 1, (line, rc)
    full = subprocess.run([sys.executable, str(ROOT / "main.py"), "simulate", "--model", f"{tmp_path / 'm.py'}:make",
                           "--checkpoint", str(tmp_path / "a.pt")], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)
    assert full.returncode == 1 and len(full.stdout) > 200_000, (full.returncode, len(full.stdout))


def test_first_mistakes_are_named_for_what_they_are(tmp_path):
    """A new user's first wrong inputs, each one line (exit 2) saying what the input is and what to do, not a
    generic or wrong diagnosis: a zip that torch never wrote is not "truncated"; a .safetensors file whose header
    length is wrong says so; a URL of a scheme no reader serves is not "no such file"; a file that is one tensor
    says how to name it; a missing entry names the entries there are; a screenshot into a missing folder names the
    file asked for (not a temporary file)."""
    import struct
    import zipfile
    with zipfile.ZipFile(tmp_path / "notes.zip", "w") as z:
        z.writestr("a.txt", "hello")
    (tmp_path / "bad.safetensors").write_bytes(struct.pack("<Q", 10 ** 12) + b"{}")
    torch.save(torch.ones(3), tmp_path / "one.pt")
    torch.save({"model": nn.BatchNorm1d(5).state_dict(), "ema": nn.BatchNorm1d(5).state_dict()},
               tmp_path / "two.pt")
    cases = [
        (["inspect", str(tmp_path / "notes.zip")], ["a zip archive", "none of them a data.pkl", "right file"],
         ["truncated"]),
        (["inspect", str(tmp_path / "bad.safetensors")], ["header claims 1000000000000 bytes"], ["not a checkpoint"]),
        (["inspect", "ftp://example.org/x.pt"], ["ftp:// is not a place", "http(s)://"], ["no such file"]),
        (["stats", str(tmp_path / "one.pt"), "x"], ["one tensor", "'/'"], []),
        (["simulate", "--model", "demo:MyBatchNormModel", "--checkpoint", str(tmp_path / "two.pt"), "--entry",
          "emma"], ["no entry 'emma'", "'model', 'ema'"], []),
        ([str(tmp_path / "one.pt"), "--screenshot", str(tmp_path / "nodir" / "x.png")],
         [str(tmp_path / "nodir" / "x.png")], [".tmp-"]),
    ]
    torch.save({"": torch.ones(2), "b": torch.ones(2)}, tmp_path / "emptykey.pt")   # a key "" is no one-tensor file
    cases.append((["stats", str(tmp_path / "emptykey.pt"), "zzzzzz"], ["no tensor 'zzzzzz'"], ["one tensor"]))
    for args, said, unsaid in cases:
        rc, out, err, _ = run(*args, env={"QT_QPA_PLATFORM": "offscreen"})
        lines = [ln for ln in err.decode().strip().splitlines() if "propagateSizeHints" not in ln]   # Qt's own
        assert rc == 2 and len(lines) == 1, (args, rc, lines)
        line = lines[0]
        assert all(s in line for s in said) and not any(s in line for s in unsaid), (args, line)


def test_an_error_said_to_a_closed_stderr_keeps_its_exit_status(tmp_path):
    """``diff MISSING B 2>&1 | true``: the reader of stderr is gone before the error line is written; the exit status
    is still 2 (a bad input), not 1 (the files differ) from an exception escaping the error handler."""
    torch.save({"w": torch.ones(2)}, tmp_path / "b.pt")
    with subprocess.Popen([sys.executable, str(ROOT / "main.py"), "diff", str(tmp_path / "missing.pt"),
                           str(tmp_path / "b.pt")], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          env=dict(os.environ, PYTHONPATH=str(ROOT))) as proc:
        proc.stderr.close()   # before the child (a fresh Python, well over 50 ms to start) writes anything
        assert proc.wait(timeout=120) == 2
