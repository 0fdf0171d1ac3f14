"""``python main.py inspect``: its JSON schema, and one clear line (exit 2) for every unreadable input."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file

from explorer.cli import main as cli_main
from explorer.core.loaders import open_checkpoint
from explorer.errors import ExplorerError

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args):
    return subprocess.run([sys.executable, "main.py", *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def inspect_in_process(capsys, *args) -> tuple[int, str, str]:
    code = cli_main(["inspect", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def sd():
    torch.manual_seed(0)
    m = nn.Sequential(OrderedDict(fc1=nn.Linear(3, 4), bn=nn.BatchNorm1d(4), fc2=nn.Linear(4, 2)))
    return m.state_dict()


# ---- the JSON schema -----------------------------------------------------------------------------------------------

def _check_schema(out: dict) -> None:
    assert set(out) >= {"path", "format", "entries", "state_dicts", "default_state_dict", "references"}
    assert isinstance(out["path"], str) and isinstance(out["format"], str)
    for e in out["entries"]:
        assert set(e) >= {"path", "shape", "dtype", "nbytes"}
        assert isinstance(e["path"], list) and all(isinstance(p, str) for p in e["path"])
        assert isinstance(e["shape"], list) and all(isinstance(s, int) for s in e["shape"])
        assert isinstance(e["dtype"], str) and not e["dtype"].startswith("torch.")
        assert isinstance(e["nbytes"], int)
    for r in out["state_dicts"]:
        assert set(r) >= {"path", "tensors"} and isinstance(r["tensors"], int)
        assert all(isinstance(p, str) for p in r["path"])
    assert out["default_state_dict"] is None or all(isinstance(p, str) for p in out["default_state_dict"])
    assert all(isinstance(r, str) for r in out["references"])


def test_json_flat_state_dict(tmp_path, sd, capsys):
    path = tmp_path / "flat.pt"
    torch.save(sd, path)
    code, stdout, _ = inspect_in_process(capsys, path, "--json")
    assert code == 0
    out = json.loads(stdout)
    _check_schema(out)
    assert out["path"] == str(path) and out["format"] == "torch-zip"
    assert out["entries"][0]["path"] == ["fc1.weight"]
    assert [e["path"] for e in out["entries"]] == [[k] for k in sd]
    assert [e["shape"] for e in out["entries"]] == [list(v.shape) for v in sd.values()]
    assert [e["nbytes"] for e in out["entries"]] == [v.numel() * v.element_size() for v in sd.values()]
    assert out["state_dicts"] == [{"path": [], "tensors": len(sd)}]
    assert out["default_state_dict"] == [] and out["references"] == []


def test_json_nested_lists_and_ranking(tmp_path, sd, capsys):
    opt_state = {"state": {0: {"step": torch.tensor(1.0), "exp_avg": torch.zeros(4, 3)}},
                 "param_groups": [{"lr": 0.1, "params": [0]}]}
    path = tmp_path / "nested.ckpt"
    torch.save({"epoch": 2, "state_dict": sd, "optimizer_states": [opt_state], "ema": [sd["fc1.weight"]]}, path)
    code, stdout, _ = inspect_in_process(capsys, path, "--json")
    assert code == 0
    out = json.loads(stdout)
    _check_schema(out)
    paths = [e["path"] for e in out["entries"]]
    assert paths[: len(sd)] == [["state_dict", k] for k in sd]
    assert ["optimizer_states", "0", "state", "0", "exp_avg"] in paths  # list indices and int keys as strings
    assert ["ema", "0"] in paths
    assert out["default_state_dict"] == ["state_dict"]
    assert out["state_dicts"][0] == {"path": ["state_dict"], "tensors": len(sd)}
    # an optimizer's per-parameter state is one group, not a state dict
    assert out["state_dicts"] == [{"path": ["state_dict"], "tensors": len(sd)}]
    assert out["optimizer_states"] == [{"path": ["optimizer_states", "0", "state"], "parameters": 1, "tensors": 2,
                                        "slots": ["step", "exp_avg"]}]
    values = {tuple(v["path"]): v for v in out["values"]}
    assert values[("epoch",)]["value"] == 2
    assert values[("optimizer_states", "0", "param_groups", "0", "lr")]["value"] == 0.1


def test_text_tree_with_totals(tmp_path, sd, capsys):
    path = tmp_path / "m.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, path)
    code, stdout, _ = inspect_in_process(capsys, path)
    assert code == 0
    assert "[safetensors]" in stdout and "fc1" in stdout and "running_mean" in stdout
    assert f"totals: {len(sd)} tensors" in stdout and "float32:" in stdout and "int64:" in stdout


def test_wrong_extension_but_valid_format(tmp_path, sd, capsys):
    st_as_pt = tmp_path / "weights.pt"
    save_file({k: v.contiguous() for k, v in sd.items()}, st_as_pt)
    zip_as_st = tmp_path / "weights.safetensors"
    torch.save(sd, zip_as_st)
    for path, fmt in ((st_as_pt, "safetensors"), (zip_as_st, "torch-zip")):
        code, stdout, _ = inspect_in_process(capsys, path, "--json")
        assert code == 0 and json.loads(stdout)["format"] == fmt


# ---- unreadable inputs: one line, exit 2 ----------------------------------------------------------------------------

def _bad_inputs(tmp: Path, sd) -> dict[str, tuple[Path, str]]:
    """name -> (path, a word the message must contain)."""
    good_zip = tmp / "good.pt"
    torch.save(sd, good_zip)
    data = good_zip.read_bytes()
    (tmp / "half.pt").write_bytes(data[: len(data) // 2])
    (tmp / "cut_end.pt").write_bytes(data[:-10])
    good_st = tmp / "good.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, good_st)
    st = good_st.read_bytes()
    (tmp / "cut.safetensors").write_bytes(st[: len(st) - 16])
    (tmp / "cut_header.safetensors").write_bytes(st[:40])
    (tmp / "tiny.safetensors").write_bytes(b"\x01\x02")
    (tmp / "empty.pt").write_bytes(b"")
    (tmp / "empty_dir").mkdir()
    (tmp / "notes.txt").write_text("hello, not a checkpoint\n")
    (tmp / "pickle_junk.pt").write_bytes(b"\x80\x02\x8a\x0a" + b"\xff" * 64)
    (tmp / "fake_zip.pt").write_bytes(b"PK\x03\x04 not really a zip")
    (tmp / "bad.index.json").write_text("{not json")
    (tmp / "dcp_broken").mkdir()
    (tmp / "dcp_broken" / ".metadata").write_bytes(b"\x80\x04\x95")
    return {
        "truncated zip (half)": (tmp / "half.pt", "truncated"),
        "truncated zip (end)": (tmp / "cut_end.pt", "truncated"),
        "truncated safetensors (data)": (tmp / "cut.safetensors", "truncated"),
        "truncated safetensors (header)": (tmp / "cut_header.safetensors", "truncated"),
        "too short safetensors": (tmp / "tiny.safetensors", "too short"),
        "empty file": (tmp / "empty.pt", "empty"),
        "empty folder": (tmp / "empty_dir", "no checkpoint"),
        "text file": (tmp / "notes.txt", "not a checkpoint"),
        "legacy junk": (tmp / "pickle_junk.pt", "corrupt"),
        "fake zip": (tmp / "fake_zip.pt", "truncated"),
        "bad index": (tmp / "bad.index.json", "JSON"),
        "broken dcp": (tmp / "dcp_broken", "metadata"),
        "missing": (tmp / "nope.pt", "no such file"),
    }


def test_every_bad_input_is_one_clear_error(tmp_path, sd, capsys):
    for name, (path, word) in _bad_inputs(tmp_path, sd).items():
        with pytest.raises(ExplorerError) as info:
            open_checkpoint(path)
        message = str(info.value)
        assert str(path) in message, name
        assert word.lower() in message.lower(), (name, message)
        assert "\n" not in message, name
        assert " — " in message or "; " in message, (name, message)  # what is wrong, then what to try
        code, stdout, stderr = inspect_in_process(capsys, path)
        assert code == 2, name
        assert stderr.count("\n") == 1 and stderr.startswith("error: ") and str(path) in stderr, (name, stderr)
        assert "internal error" not in stderr and "Traceback" not in stderr, (name, stderr)


def test_bad_inputs_through_the_real_command(tmp_path, sd):
    """A real process: exit status 2 and exactly one line on stderr, no traceback (the in-process test above covers
    every input through the same ``cli.main``)."""
    bad = _bad_inputs(tmp_path, sd)
    for key in ("truncated safetensors (data)",):
        path = bad[key][0]
        r = run_cli("inspect", path, "--json")
        assert r.returncode == 2, r.stderr
        assert r.stdout == "" and r.stderr.count("\n") == 1 and str(path) in r.stderr
        assert "Traceback" not in r.stderr


def test_reading_values_of_a_truncated_file_fails_clearly(tmp_path, sd):
    """A file cut inside its data still lists (safetensors checks sizes first; a zip's end record is gone), and
    reading a tensor whose bytes are missing names the file."""
    path = tmp_path / "m.safetensors"
    save_file({"a": torch.zeros(1000), "b": torch.ones(10)}, path)
    ck = open_checkpoint(path)
    path.write_bytes(path.read_bytes()[:-2000])
    with pytest.raises(ExplorerError, match=str(path)):
        ck.read_key(next(iter(ck.state_dict_infos())))


def test_permission_denied(tmp_path, sd):
    """A file the user may not read. Root reads any file, so as root the command runs in a forked child that has
    dropped to "nobody" (the interpreter is already loaded: its files need not be readable by nobody)."""
    folder = Path(tempfile.mkdtemp(prefix="sde-perm-"))
    try:
        os.chmod(folder, 0o755)
        path = folder / "secret.pt"
        torch.save(sd, path)
        os.chmod(path, 0o000)
        from explorer.cli import main
        main(["inspect", str(folder / "nothing-here.pt")])  # import every reader before the fork
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            code = 99
            try:
                os.close(read_end)
                sys.stderr = os.fdopen(write_end, "w")
                if os.geteuid() == 0:
                    os.setgid(65534)
                    os.setuid(65534)
                code = main(["inspect", str(path)])
                sys.stderr.flush()
            finally:
                os._exit(code)
        os.close(write_end)
        with os.fdopen(read_end, "r") as f:
            stderr = f.read()
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 2, (status, stderr)
        assert "permission denied" in stderr and str(path) in stderr and stderr.count("\n") == 1, stderr
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_permission_denied_simulated(tmp_path, sd, monkeypatch, capsys):
    """The same message when the OS says no (simulated: as root the OS never does)."""
    path = tmp_path / "secret.pt"
    torch.save(sd, path)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if os.fspath(p) == str(path) else
                        real_access(p, mode, **kw))
    code, _, stderr = inspect_in_process(capsys, path)
    assert code == 2 and "permission denied" in stderr and str(path) in stderr and stderr.count("\n") == 1


def test_very_deep_keys_are_listed_whole_not_indented(tmp_path, cli):
    """A key of 5,000 dotted parts: indenting each level would print ~50 MB of spaces; it is listed whole after the
    tree, so the output grows with the key's length only."""
    from explorer.commands.inspect import TREE_DEPTH
    deep = ".".join(["m"] * 5000)
    edge = ".".join(["n"] * TREE_DEPTH)       # exactly TREE_DEPTH levels: still in the tree
    path = tmp_path / "deep.pt"
    torch.save({deep: torch.zeros(1), edge: torch.zeros(3), "fc.weight": torch.zeros(2, 2)}, path)
    r = cli("inspect", str(path))
    assert r.returncode == 0, r.stderr
    assert len(r.stdout) < 30_000
    lines = r.stdout.splitlines()
    assert any(ln.strip().startswith("weight") for ln in lines)             # the tree as usual
    assert any(ln.startswith("  " * TREE_DEPTH + "n ") for ln in lines)      # the deepest level the tree shows
    i = lines.index(f"  keys nested more than {TREE_DEPTH} levels deep, shown whole:")
    assert lines[i + 1].split()[0] == deep and "[1]" in lines[i + 1]
    assert "totals: 3 tensors" in r.stdout
