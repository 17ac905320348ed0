"""Limits that keep `agent/` readable: no import circle, no function over 60 lines, no module over 400.

The import graph is read from the source (an AST walk, nothing imported): module-level and
function-level `import agent.x`, `from agent import x`, `from agent.x import y` and relative
imports alike, since a lazy import inside a function still ties the two modules together.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "agent"
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 400


def modules(package_dir: Path) -> dict[str, Path]:
    """Dotted name -> file, for every module of the package (a package is its __init__)."""
    found = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = [package_dir.name, *path.relative_to(package_dir).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """The dotted names an import statement in `module` may load (resolved if relative)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        anchor = package[: len(package) - (node.level - 1)]
        base = ".".join([*anchor, *([base] if base else [])])
    # `from p import x`: x is a submodule when one by that name exists, else a name in p
    return [base, *(f"{base}.{alias.name}" for alias in node.names)]


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports anywhere in its text."""
    mods = modules(package_dir)
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        is_package = path.name == "__init__.py"
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                edges.update(n for n in imported(node, name, is_package) if n in mods)
        graph[name] = edges - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle per strongly connected group of modules, as a path back to its start."""
    found: list[list[str]] = []
    seen: set[str] = set()
    for start in sorted(graph):
        if start in seen:
            continue
        # iterative DFS keeping the current path; an edge back into the path is a circle
        path: list[str] = [start]
        on_path = {start}
        stack = [iter(sorted(graph[start]))]
        seen.add(start)
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                stack.pop()
                on_path.discard(path.pop())
            elif nxt in on_path:
                found.append([*path[path.index(nxt) :], nxt])
            elif nxt not in seen:
                seen.add(nxt)
                path.append(nxt)
                on_path.add(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return found


def long_functions(package_dir: Path, limit: int) -> list[str]:
    over = []
    for path in sorted(package_dir.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > limit:
                    where = path.relative_to(package_dir.parent)
                    over.append(f"{where}:{node.lineno} {node.name}: {lines} lines")
    return over


def test_no_import_circle_in_agent() -> None:
    found = cycles(import_graph(PACKAGE))
    assert not found, "import circles: " + "; ".join(" -> ".join(c) for c in found)


def test_no_function_over_60_lines_in_agent() -> None:
    over = long_functions(PACKAGE, MAX_FUNCTION_LINES)
    assert not over, f"functions over {MAX_FUNCTION_LINES} lines: " + "; ".join(over)


def test_no_module_over_400_lines_in_agent() -> None:
    sizes = {path: len(path.read_text().splitlines()) for path in sorted(PACKAGE.rglob("*.py"))}
    over = [
        f"{path.relative_to(PACKAGE.parent)}: {n} lines" for path, n in sizes.items() if n > MAX_MODULE_LINES
    ]
    assert not over, f"modules over {MAX_MODULE_LINES} lines: " + "; ".join(over)


# --- the checks themselves can fail ----------------------------------------------------------


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.mark.parametrize(
    "a_text",
    [
        "import pkg.b\n",
        "from pkg import b\n",
        "from pkg.b import thing\n",
        "from . import b\n",
        "def f():\n    from pkg.b import thing\n    return thing\n",
    ],
)
def test_a_circle_is_found_and_named(tmp_path: Path, a_text: str) -> None:
    pkg = write(
        tmp_path / "pkg",
        {"__init__.py": "", "a.py": a_text, "b.py": "from pkg.c import x\n", "c.py": "import pkg.a\nx = 1\n"},
    )
    assert cycles(import_graph(pkg)) == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"]]


def test_names_that_are_not_modules_make_no_edge(tmp_path: Path) -> None:
    pkg = write(
        tmp_path / "pkg",
        {
            "__init__.py": "VERSION = 1\n",
            "a.py": "from pkg import VERSION\nimport os\n",
            "sub/__init__.py": "",
            "sub/b.py": "from .. import a\nfrom ..a import thing\n",
        },
    )
    graph = import_graph(pkg)
    assert graph["pkg.a"] == {"pkg"} and graph["pkg.sub.b"] == {"pkg", "pkg.a"}
    assert cycles(graph) == []


def test_a_long_function_is_named(tmp_path: Path) -> None:
    body = "".join(f"    x{i} = {i}\n" for i in range(60))
    pkg = write(
        tmp_path / "pkg", {"__init__.py": "", "m.py": f"def short():\n    pass\n\n\ndef long():\n{body}"}
    )
    assert long_functions(pkg, MAX_FUNCTION_LINES) == ["pkg/m.py:5 long: 61 lines"]
