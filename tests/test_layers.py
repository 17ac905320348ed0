"""Imports point down the layers docs/ARCHITECTURE.md names, and the doc and the code agree.

The table "Packages and what each may import" in docs/ARCHITECTURE.md is the rule: each row is a
unit (a subpackage of agent/, or a named group of top-level modules) and the units it may import.
The import graph comes from tests/test_import_graph.py's AST walk, lazy imports included.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.test_import_graph import PACKAGE, import_graph, write

DOC = PACKAGE.parent / "docs" / "ARCHITECTURE.md"
# top-level modules grouped into units; every other unit is a subpackage of the same name, but for
# the subpackages that belong to core
TOP_UNITS = {
    "core": ("errors", "config_path", "durable"),
    "daemon": ("daemon",),
    "main": ("main",),
    "entry": ("sendmail", "mailq", "fastload"),
}
CORE_PACKAGES = ("config",)
ROW = re.compile(r"^\| `(\w+)` \|[^|]*\| ([^|]*) \|$")


def allowed_imports(doc: str) -> dict[str, set[str]]:
    """unit -> the units it may import, from the doc's table (core is always allowed)."""
    rules: dict[str, set[str]] = {}
    for line in doc.splitlines():
        m = ROW.match(line.strip())
        if m:
            may = m.group(2).strip()
            names = set() if may.startswith("nothing") else {w.strip() for w in may.split(",")}
            rules[m.group(1)] = names | {"core"}
    return rules


def unit_of(module: str, subpackages: set[str]) -> str | None:
    parts = module.split(".")
    if len(parts) == 1:
        return "core"  # the package's own __init__
    if parts[1] in CORE_PACKAGES:
        return "core"
    if parts[1] in subpackages:
        return parts[1]
    return next((unit for unit, names in TOP_UNITS.items() if parts[1] in names), None)


def violations(package_dir: Path, rules: dict[str, set[str]]) -> list[str]:
    subpackages = {p.name for p in package_dir.iterdir() if (p / "__init__.py").is_file()}
    found = []
    for module, edges in sorted(import_graph(package_dir).items()):
        unit = unit_of(module, subpackages)
        if unit not in rules:
            found.append(f"{module}: in no unit of the table (unit {unit!r})")
            continue
        for target in sorted(edges):
            other = unit_of(target, subpackages)
            if other != unit and other not in rules[unit]:
                found.append(f"{module} imports {target}: {unit} may not import {other}")
    return found


def test_the_table_names_every_package_of_agent() -> None:
    rules = allowed_imports(DOC.read_text())
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert (packages - set(CORE_PACKAGES)) | set(TOP_UNITS) == set(rules), "the table and agent/ disagree"
    top = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    assert top == {m for names in TOP_UNITS.values() for m in names}
    assert len(top) <= 10


def test_imports_point_down_the_layers() -> None:
    found = violations(PACKAGE, allowed_imports(DOC.read_text()))
    assert not found, "imports the layers do not allow:\n" + "\n".join(found)


@pytest.mark.parametrize(
    "text", ["from pkg.top import x\n", "def f():\n    import pkg.top.x\n", "from pkg import top\n"]
)
def test_an_upward_import_is_named(tmp_path: Path, text: str) -> None:
    pkg = write(
        tmp_path / "pkg",
        {
            "__init__.py": "",
            "errors.py": "",
            "low/__init__.py": "",
            "low/a.py": text,
            "top/__init__.py": "",
            "top/x.py": "from pkg.low import a\nx = 1\n",
        },
    )
    rules = allowed_imports("| `low` | pure | core |\n| `top` | all | low |\n| `core` | x | nothing |\n")
    found = violations(pkg, rules)
    assert found and all(f.startswith("pkg.low.a imports pkg.top") for f in found), found
    assert "low may not import top" in found[0]
