"""The package layout of DESIGN.md holds: imports go down the table only, and no module imports
itself back through others. Read from the source with ``ast``, nothing is imported."""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# package -> the packages of ours it may import (DESIGN.md, "The packages and what each owns")
MAY_IMPORT: dict[str, frozenset[str]] = {
    "storage": frozenset(),
    "plans": frozenset({"storage"}),
    "dialogs": frozenset({"storage", "plans"}),
    "schedulers": frozenset({"storage", "plans", "dialogs"}),
    "bot": frozenset({"storage", "plans", "dialogs", "schedulers"}),
}
# Known upward imports, each to be removed by the change that owns it. The SMS segment counter
# moves below schedulers with the audience work (issue 11.3): delete this entry when it has.
KNOWN_VIOLATIONS: frozenset[tuple[str, str]] = frozenset()


# Outside storage, SQLAlchemy/SQLModel names for handles and errors only: no statements are built.
HANDLES = frozenset({"Connection", "Engine", "Session", "RowMapping", "make_url"})
ORMS = frozenset({"sqlalchemy", "sqlmodel"})
# Modules that still build SQL of their own (issue 11.4 moved the last ones into storage). Nothing
# may join this list.
KNOWN_SQL_OUTSIDE_STORAGE: frozenset[str] = frozenset()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found = {}
    for package in MAY_IMPORT:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" not in path.parts:  # Alembic scripts, run by Alembic only
                found[_module_name(path)] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of ours that ``name`` imports at run time (in functions too, not for typing)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    skipped = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and _is_type_checking(node)
        for child in node.body
        for n in ast.walk(child)
    }
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in modules else base)
    return {m for m in found if m in modules and m != name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_the_layout_is_found() -> None:
    graph = _graph()
    assert {"storage.models", "storage.types", "dialogs.engine", "bot.cli.root"} <= set(graph)
    assert "storage.types" in graph["storage.models"]


def test_imports_go_down_the_package_table_only() -> None:
    upward = {
        (module, target)
        for module, targets in _graph().items()
        for target in targets
        if target.split(".")[0] != module.split(".")[0]
        and target.split(".")[0] not in MAY_IMPORT[module.split(".")[0]]
    }
    assert upward - KNOWN_VIOLATIONS == set()


def test_known_violations_are_still_there() -> None:
    # When one is fixed, take it off the list so it cannot come back unnoticed.
    graph = _graph()
    assert {(m, t) for m, t in KNOWN_VIOLATIONS if t in graph.get(m, set())} == KNOWN_VIOLATIONS


def test_no_module_imports_itself_back() -> None:
    try:
        TopologicalSorter(_graph()).prepare()
    except CycleError as exc:
        raise AssertionError(f"import cycle: {' -> '.join(exc.args[1])}") from None


def _storage_tables() -> frozenset[str]:
    """The names storage gives its Core tables (``CUSTOMER: Table = ...``): statements are built
    from them, so importing one outside storage counts as building SQL."""
    names = {"tables"}  # ``from storage import tables``
    for path in (ROOT / "storage").glob("*.py"):
        for node in ast.parse(path.read_text(encoding="utf-8"), str(path)).body:
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(node.annotation, ast.Name)
                and node.annotation.id == "Table"
            ):
                names.add(node.target.id)
    return frozenset(names)


def _builds_sql(path: Path, tables: frozenset[str] | None = None) -> bool:
    """Whether the module imports anything of SQLAlchemy/SQLModel beyond handles and errors, or
    one of storage's Core tables."""
    tables = _storage_tables() if tables is None else tables
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names = [
                alias.name
                for alias in node.names
                if alias.name.split(".")[0] in ORMS or alias.name == "storage.tables"
            ]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ORMS:
            exempt = node.module == "sqlalchemy.exc"
            names = [] if exempt else [alias.name for alias in node.names if alias.name not in HANDLES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "storage":
            names = [alias.name for alias in node.names if alias.name in tables]
        else:
            continue
        if names:
            return True
    return False


def test_the_sql_check_sees_statements_and_tables(tmp_path: Path) -> None:
    cases = {
        "from sqlalchemy import select\n": True,
        "import sqlalchemy\n": True,
        "from sqlmodel import col\n": True,
        "from storage.tables import CUSTOMER\n": True,
        "from storage.outreach_models import RATE_BUCKET\n": True,
        "from storage import tables\n": True,
        "from sqlalchemy import Connection, Engine\nfrom sqlalchemy.exc import SQLAlchemyError\n": False,
        "from storage import outreach_queries\nfrom storage.models import PendingKind\n": False,
    }
    tables = _storage_tables()
    assert {"CUSTOMER", "RATE_BUCKET", "BROADCAST"} <= tables
    for number, (source, expected) in enumerate(cases.items()):
        module = tmp_path / f"m{number}.py"
        module.write_text(source, encoding="utf-8")
        assert _builds_sql(module, tables) is expected, source


def test_sql_is_built_in_storage_only() -> None:
    tables = _storage_tables()
    building = {
        name
        for name, path in _modules().items()
        if not name.startswith("storage") and _builds_sql(path, tables)
    }
    assert building - KNOWN_SQL_OUTSIDE_STORAGE == set()
    assert KNOWN_SQL_OUTSIDE_STORAGE - building == set(), "moved to storage: take it off the list"


# Tests live beside the package they test (tests/<package>/); at the top only the tests of the
# whole system: this layout check and the fault runs across processes.
SYSTEM_TESTS = frozenset({"test_architecture.py", "test_faults.py"})


def test_tests_mirror_the_packages() -> None:
    tests = ROOT / "tests"
    stray = sorted(p.name for p in tests.glob("test_*.py") if p.name not in SYSTEM_TESTS)
    assert stray == [], f"move these into tests/<package>/: {stray}"
    folders = {p.name for p in tests.iterdir() if p.is_dir() and any(p.rglob("test_*.py"))}
    assert folders <= set(MAY_IMPORT), f"test folders that are not packages: {folders - set(MAY_IMPORT)}"
    assert all((tests / name / "__init__.py").exists() for name in folders)
