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

