"""The documentation cannot rot: every example runs, and the site builds without warnings.

Each page's ```python blocks run in order in one namespace, inside a scratch
folder; its ```console blocks run there too: every ``$ command`` line must exit
as its ``# exits N`` comment says (0 by default), and the lines shown after it
must appear in its output.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]
BLOCK = re.compile(r"^```(python|console)\n(.*?)^```", re.DOTALL | re.MULTILINE)
EXITS = re.compile(r"\s+#\s*exits\s+(\d+)\s*$")


def blocks(page: Path) -> list[tuple[str, str]]:
    return BLOCK.findall(page.read_text(encoding="utf-8"))


def console_commands(block: str) -> list[tuple[str, int, list[str]]]:
    """``(command, expected exit status, expected output lines)`` for each ``$`` line."""
    commands: list[tuple[str, int, list[str]]] = []
    for line in block.splitlines():
        if line.startswith("$ "):
            match = EXITS.search(line)
            command = EXITS.sub("", line[2:]) if match else line[2:]
            commands.append((command, int(match.group(1)) if match else 0, []))
        elif line.strip() and commands:
            commands[-1][2].append(line.rstrip())
    return commands


def run_console(block: str) -> None:
    environment = {
        **os.environ,
        "COLUMNS": "100",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    environment.pop("FORCE_COLOR", None)
    for command, status, shown in console_commands(block):
        result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, env=environment, timeout=120)
        assert result.returncode == status, f"$ {command}\n{result.stdout}{result.stderr}"
        output = [line.rstrip() for line in result.stdout.splitlines()]
        for line in shown:
            assert line in output, f"$ {command}: expected line {line!r} not in:\n{result.stdout}"


def test_there_are_examples_to_run():
    assert sum(len(blocks(page)) for page in PAGES) >= 30


@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p)], ids=lambda p: str(p.relative_to(ROOT)))
def test_page_examples_run_in_order(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    for number, (kind, block) in enumerate(blocks(page), 1):
        if kind == "python":
            exec(compile(block, f"{page.relative_to(ROOT)} (block {number})", "exec"), namespace)
        else:
            run_console(block)


def test_docs_site_builds_without_warnings(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "api" / "index.html").read_text().count('class="doc doc-heading"') >= 10
