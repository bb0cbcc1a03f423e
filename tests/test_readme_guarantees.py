"""The README's guarantees each name the test that checks them, and every test named exists."""

from __future__ import annotations

import ast
import re

from tests.conftest import ROOT

REFERENCE = re.compile(r"`(?:(tests/[\w/]+\.py)(?:::(\w+))?|::(\w+))`")


def guarantees() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Guarantees, and how they are tested", 1)[1].split("\n## ", 1)[0]
    return ["- " + item for item in section.split("\n- ")[1:]]


def functions_of(path: str) -> set[str]:
    tree = ast.parse((ROOT / path).read_text())
    return {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.name.startswith("test")}


def test_every_guarantee_names_existing_tests() -> None:
    items = guarantees()
    assert len(items) >= 10
    for item in items:
        refs = REFERENCE.findall(item)
        assert refs, f"a guarantee names no test: {item[:100]}"
        current = None
        for path, name, bare in refs:
            if path:
                current = path
                assert (ROOT / path).is_file(), path
            name = name or bare
            if name:
                assert current is not None, f"::{name} without a file before it"
                assert name in functions_of(current), f"{current}::{name} does not exist"
