"""Services import ``shared`` and never each other; ``shared`` imports no service.

``harvester_ops`` (the ``harvester`` command, ``harvester up``, the embedded servers, migrate) is
operator code: it may import ``shared``, but no tier and nothing in ``shared`` may import it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = {"web_server", "foreman", "worker"}
OPS = "harvester_ops"


def imported_top_levels(package: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in (ROOT / package).rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names
    return found


@pytest.mark.parametrize("package", sorted(SERVICES | {"shared"}))
def test_import_boundaries(package: str) -> None:
    files = imported_top_levels(package)
    assert files, f"no modules found in {package}"
    forbidden = (SERVICES - {package}) | {OPS}
    offenders = {f: sorted(n & forbidden) for f, n in files.items() if n & forbidden}
    assert not offenders, f"{package} imports another tier or {OPS}: {offenders}"


def test_shared_holds_only_what_two_tiers_use() -> None:
    """Each module of ``shared`` (outside ``shared/db``, which holds all the SQL by house style)
    is imported, directly or through another ``shared`` module, by at least two tiers: a module
    only one tier runs lives in that tier's folder."""
    imports: dict[str, set[str]] = {}
    for package in sorted(SERVICES | {"shared"}):
        for path in (ROOT / package).rglob("*.py"):
            mods: set[str] = set()
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    mods.add(node.module)
                    mods |= {f"{node.module}.{a.name}" for a in node.names}
                elif isinstance(node, ast.Import):
                    mods |= {a.name for a in node.names}
            imports[str(path.relative_to(ROOT))] = mods

    def users(module: str, seen: frozenset[str] = frozenset()) -> set[str]:
        tiers: set[str] = set()
        for f, mods in imports.items():
            if module not in mods:
                continue
            top = f.split("/")[0]
            if top in SERVICES:
                tiers.add(top)
            elif f not in seen:  # used by another shared module: that one's users count
                dotted = f.removesuffix(".py").replace("/", ".").removesuffix(".__init__")
                tiers |= users(dotted, seen | {f})
        return tiers

    lonely = {}
    for path in (ROOT / "shared").glob("*.py"):
        if path.name == "__init__.py":
            continue
        module = f"shared.{path.stem}"
        if len(tiers := users(module)) < 2:
            lonely[module] = sorted(tiers)
    assert not lonely, f"shared modules used by fewer than two tiers: {lonely}"
