"""The house rules of issue 14, checked on the code itself (the import-linter contracts are checked by
``test_import_contracts``): no module reaches into another's private names, no import cycles, and no module or function
grows long without a reason written at its top."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "explorer"
MODULE_LINES = 600
FUNCTION_LINES = 80
LONG_MARK = "long:"   # "Long: <why>" in a module's or function's docstring, or a "# long: <why>" comment at its top


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        yield ".".join(parts), path, is_pkg, ast.parse(path.read_text(encoding="utf-8"), str(path))


def _target(name: str, level: int, module: str | None, is_pkg: bool) -> str:
    if level == 0:
        return module or ""
    base = name.split(".")
    base = base if is_pkg else base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def _type_checking_blocks(tree) -> set[int]:
    """ids of the import nodes under ``if TYPE_CHECKING:`` (annotations only: never run, so never a cycle)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            out.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return out


def _imports(name, is_pkg, tree):
    """(imported module, [names]) for every import statement run, at any depth (lazy imports count; imports for
    annotations only, under ``if TYPE_CHECKING:``, do not)."""
    skip = _type_checking_blocks(tree)
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom):
            yield _target(name, node.level, node.module, is_pkg), [a.name for a in node.names], node.lineno
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, [], node.lineno


def _has_reason(text_lines: list[str]) -> bool:
    return any(LONG_MARK in line.lower() for line in text_lines)


def test_the_rules_see_the_package():
    assert len(list(_modules())) > 40   # the checks below are not vacuous


def test_no_private_names_across_modules():
    bad = []
    for name, path, is_pkg, tree in _modules():
        for target, names, line in _imports(name, is_pkg, tree):
            if not target.startswith("explorer") or target == name:
                continue
            for n in names:
                if n.startswith("_") and not n.startswith("__"):
                    bad.append(f"{path.relative_to(ROOT)}:{line} imports {n} from {target}")
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    modules = {name: (is_pkg, tree) for name, _, is_pkg, tree in _modules()}
    graph = {}
    for name, (is_pkg, tree) in modules.items():
        edges = set()
        for target, names, _ in _imports(name, is_pkg, tree):
            # "from pkg import sub" names a submodule; a package's own submodules registering into it are not a cycle
            for t in [f"{target}.{n}" for n in names] + [target]:
                if t in modules and t != name and not name.startswith(t + "."):
                    edges.add(t)
                    break
        graph[name] = edges
    cycles, state = [], {}

    def visit(n, stack):
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                cycles.append(" -> ".join(stack[stack.index(m):] + [m]))
            elif m not in state:
                visit(m, stack)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [])
    assert not cycles, "\n".join(cycles)


def test_modules_and_functions_are_short_or_say_why():
    bad = []
    for name, path, is_pkg, tree in _modules():
        lines = path.read_text(encoding="utf-8").splitlines()
        doc = ast.get_docstring(tree) or ""
        if len(lines) > MODULE_LINES and not _has_reason(doc.splitlines() + lines[:15]):
            bad.append(f"{path.relative_to(ROOT)}: {len(lines)} lines")
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                head = lines[node.lineno - 1: node.body[0].lineno + 2]
                fdoc = ast.get_docstring(node) or ""
                if length > FUNCTION_LINES and not _has_reason(fdoc.splitlines() + head):
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {length} lines")
    assert not bad, "too long, with no 'Long: <why>' at the top:\n" + "\n".join(bad)
