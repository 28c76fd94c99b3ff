"""The package graph is one-way: bootctl (bottom) <- bundle_tool <- updater; nothing imports up.

Every module's imports are read with `ast` (those inside functions too), so a
late import cannot hide an upward edge.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: Each layer and the folder of its package; a layer may import only those below it.
LAYERS: tuple[tuple[str, Path], ...] = (
    ("bootctl", ROOT / "bootctl"),
    ("bundle_tool", ROOT / "bundle-tool" / "bundle_tool"),
    ("updater", ROOT / "updater"),
)
#: Projects' own top-level names no package may import (they sit on top).
TOP = ("tests", "qemu", "demo")


def imported_packages(module: Path, package: str) -> set[str]:
    """The top-level names `module` (part of `package`) imports, relative imports resolved."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"), str(module))):
        if isinstance(node, ast.Import):
            names.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: inside the package itself
                names.add(package)
            elif node.module:
                names.add(node.module.partition(".")[0])
    return names


def upward_imports() -> list[str]:
    found = []
    for level, (package, folder) in enumerate(LAYERS):
        forbidden = {name for name, _ in LAYERS[level + 1 :]} | set(TOP)
        for module in sorted(folder.rglob("*.py")):
            for name in sorted(imported_packages(module, package) & forbidden):
                found.append(f"{module.relative_to(ROOT)} ({package}) imports {name}")
    return found


def test_no_package_imports_a_layer_above_it() -> None:
    assert upward_imports() == []


def test_every_layer_has_modules() -> None:
    """The check reads real folders: a renamed package would make it vacuous."""
    for package, folder in LAYERS:
        assert (folder / "__init__.py").is_file(), package
        assert len(list(folder.rglob("*.py"))) > 3, package


@pytest.mark.parametrize(
    ("source", "found"),
    [
        ("import updater.cli\n", {"updater"}),
        ("def f():\n    from bundle_tool.cli import main\n", {"bundle_tool"}),
        ("from . import state\nfrom .errors import X\n", {"bootctl"}),
        ("import os, tests.helpers\n", {"os", "tests"}),
    ],
)
def test_imports_are_found_wherever_they_are(tmp_path: Path, source: str, found: set[str]) -> None:
    module = tmp_path / "m.py"
    module.write_text(source)
    assert imported_packages(module, "bootctl") == found
