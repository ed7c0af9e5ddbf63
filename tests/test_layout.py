"""The package's layout: dependencies point one way, and no private name crosses a file boundary."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "spinn"


def imports(path: Path) -> list[tuple[str, str]]:
    """(module, name) of every ``from spinn... import name`` in a file (lazy imports included)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("spinn"):
            found += [(node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(alias.name, "") for alias in node.names if alias.name.startswith("spinn")]
    return found


FILES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_private_name_is_imported_across_files(path):
    private = [f"{module}.{name}" for module, name in imports(path) if name.startswith("_")]
    assert not private


@pytest.mark.parametrize(
    ("files", "forbidden"),
    [
        (["schedule.py", "transitions.py", "errors.py"], ("spinn.data", "spinn.model")),
        (["data"], ("spinn.model",)),
    ],
)
def test_dependencies_point_from_transitions_to_data_to_model(files, forbidden):
    for name in files:
        root = PACKAGE / name
        for path in [root] if root.is_file() else sorted(root.rglob("*.py")):
            bad = [m for m, _ in imports(path) if m.startswith(forbidden)]
            assert not bad, f"{path.relative_to(PACKAGE)} imports {bad}"
