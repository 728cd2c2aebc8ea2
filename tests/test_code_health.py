"""The code's own checks, run as tests so that CI (the README's test command) runs them too:
lint, import order and formatting (ruff), types (mypy), and the rules table's completeness."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from structload._dest import SlotKind
from structload._rules import RULES, SourceKind

ROOT = Path(__file__).resolve().parent.parent


def run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True, check=False)


@pytest.mark.parametrize(
    "command", [("ruff", "check", "."), ("ruff", "format", "--check", ".")], ids=["lint", "format"]
)
def test_ruff_passes(command):
    result = run(*command)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_passes_on_the_whole_package():
    result = run("mypy")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_rules_table_covers_every_slot_and_source_pair():
    pairs = {(slot, source) for slot in SlotKind for source in SourceKind}
    assert set(RULES) == pairs
