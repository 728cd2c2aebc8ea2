"""docs/architecture.md stays true: every module of the package has its place in the page's
table, and the rules table in `_rules`' docstring has a row for every slot kind."""

from __future__ import annotations

import re
from pathlib import Path

from structload._plan import rules as _rules
from structload._plan.dest import SlotKind

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "structload"


def table_rows() -> list[tuple[list[str], str]]:
    """``(names in the first cell, the whole row)`` for each row of the page's module table."""
    rows = []
    for line in (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8").splitlines():
        if line.startswith("| `"):
            first = line.split("|")[1]
            rows.append((re.findall(r"`([^`]+)`", first), line))
    return rows


def has_a_place(module: str, rows: list[tuple[list[str], str]]) -> bool:
    """A module has a place when a row is named after it, or after its package and names it."""
    folder, _, name = module.rpartition("/")
    for names, row in rows:
        if module in names:
            return True
        if folder and f"{folder}/" in names and f"`{name}`" in row:
            return True
    return False


def test_every_module_has_a_place_in_the_architecture_page():
    rows = table_rows()
    modules = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py"))
    assert len(modules) > 40
    assert [m for m in modules if not has_a_place(m, rows)] == []


def test_has_a_place_needs_the_module_itself():
    rows = [(["sources/"], "| `sources/` | `formats.py` (which reader) |"), (["_load.py"], "| `_load.py` | load |")]
    assert has_a_place("sources/formats.py", rows) and has_a_place("_load.py", rows)
    assert not has_a_place("sources/_zip.py", rows) and not has_a_place("_plan.py", rows)


def test_the_rules_docstring_has_a_row_for_every_slot_kind():
    table = _rules.__doc__.split("=====\n", 2)[2]
    first_column = {line.split()[0] for line in table.splitlines() if line.strip() and not line.startswith("=")}
    assert {kind.value for kind in SlotKind} <= first_column
