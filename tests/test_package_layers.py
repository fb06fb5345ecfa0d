"""Imports go down the package table of DESIGN.md only: storage <- plans <- dialogs <- schedulers
<- bot. (The SMS segment counter moved from bot/channels to dialogs for this: broadcasts in
schedulers price their texts with it.)"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAY_IMPORT = {
    "storage": set(),
    "plans": {"storage"},
    "dialogs": {"storage", "plans"},
    "schedulers": {"storage", "plans", "dialogs"},
}


def _imported_packages(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(MAY_IMPORT))
def test_a_package_imports_only_the_packages_below_it(package: str) -> None:
    ours = set(MAY_IMPORT) | {"bot"}
    upward = {
        str(path.relative_to(ROOT)): sorted(wrong)
        for path in sorted((ROOT / package).rglob("*.py"))
        if (wrong := (_imported_packages(path) & ours) - MAY_IMPORT[package] - {package})
    }
    assert upward == {}
