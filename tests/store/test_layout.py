"""The store's shape (issue 19): no frame building, no import of the server, small files."""

from __future__ import annotations

import ast
from pathlib import Path

import relaybox.store

MODULES = sorted(p for p in Path(next(iter(relaybox.store.__path__))).glob("*.py"))


def imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_the_store_builds_no_frames_and_never_imports_the_server() -> None:
    assert MODULES
    for path in MODULES:
        bad = {n for n in imports(path)
               if n.startswith(("relaybox.protocol.messages", "relaybox.server"))}
        assert not bad, f"{path.name} imports {sorted(bad)}"


def test_every_store_module_stays_under_400_lines() -> None:
    long = {p.name: n for p in MODULES
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 400}
    assert long == {}
