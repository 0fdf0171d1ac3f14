"""The layers of the simulation point down: ``core.simulate`` > ``core.remap`` > ``core.load`` > the readers and
records; the command renders above them all. No module imports another's private name."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ["explorer.commands.simulate", "explorer.core.simulate", "explorer.core.remap", "explorer.core.load"]


def _modules(package: str) -> list[Path]:
    path = ROOT / package.replace(".", "/")
    return sorted(path.glob("*.py")) if path.is_dir() else [path.with_suffix(".py")]


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(absolute module, names) of every ``import`` / ``from ... import`` of the file, wherever it is written."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    package = parts[:-1] if parts[-1] != "__init__" else parts[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            out.append((module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
    return out


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


@pytest.mark.parametrize("layer", LAYERS)
def test_layers_point_down(layer):
    above = LAYERS[:LAYERS.index(layer)]
    for path in _modules(layer):
        for module, _names in _imports(path):
            assert not any(_in(module, a) for a in above), f"{path.relative_to(ROOT)} imports {module}, a layer above"


@pytest.mark.parametrize("layer", LAYERS)
def test_no_private_names_of_other_modules(layer):
    for path in _modules(layer):
        for module, names in _imports(path):
            if _in(module, "explorer"):
                private = [n for n in names if n.startswith("_")]
                assert not private, f"{path.relative_to(ROOT)} imports {private} from {module}"


def test_the_resolver_sees_relative_imports():
    """The check can fail: the simulation's own run module is seen importing the remap layer below it."""
    run = ROOT / "explorer/core/simulate/run.py"
    assert any(_in(m, "explorer.core.remap") for m, _ in _imports(run))
    assert any(_in(m, "explorer.core.load") for m, _ in _imports(run))
