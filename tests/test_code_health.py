"""The code's own checks, run as tests so that CI (the README's test command) runs them too:
lint, import order and formatting (ruff), types (mypy), and the rules table's completeness."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path
from typing import IO

import pytest

from structload._plan.dest import SlotKind
from structload._plan.rules import RULES, SourceKind

ROOT = Path(__file__).resolve().parent.parent


def run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True, check=False)


@pytest.mark.parametrize(
    "command", [("ruff", "check", "."), ("ruff", "format", "--check", ".")], ids=["lint", "format"]
)
def test_ruff_passes(command):
    result = run(*command)
    assert result.returncode == 0, result.stdout + result.stderr


_MYPY: list[tuple[subprocess.Popen, IO[str]]] = []  # the mypy run of this session and its output


def start_mypy() -> subprocess.Popen:
    """mypy on the package, in the background (conftest starts it when the tests are collected);
    its output goes to a file, which no pipe's size can block."""
    if not _MYPY:
        output = tempfile.TemporaryFile("w+")  # noqa: SIM115  # closed with the process, at exit
        command = [sys.executable, "-m", "mypy"]
        _MYPY.append((subprocess.Popen(command, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT), output))
    return _MYPY[0][0]


def stop_mypy() -> None:
    """End a mypy run whose test did not collect it (the session stopped early)."""
    if _MYPY and _MYPY[0][0].poll() is None:
        _MYPY[0][0].kill()
        _MYPY[0][0].wait()


def test_mypy_passes_on_the_whole_package():
    process = start_mypy()
    process.wait(timeout=900)
    output = _MYPY[0][1]
    output.seek(0)
    assert process.returncode == 0, output.read()


def test_the_rules_table_covers_every_slot_and_source_pair():
    pairs = {(slot, source) for slot in SlotKind for source in SourceKind}
    assert set(RULES) == pairs
