"""The documentation cannot rot: every example runs, and the site builds without warnings.

Each page's ```python blocks run in order in one namespace, inside a scratch
folder, and what they print is checked: the comment lines right under a
``print(...)`` line (same indentation, no blank line between), and the lines of
a bare ``` block right after the python block, are lines it prints, exactly
and in order. Its ```console blocks run there too: every
``$ command`` line must exit as its ``# exits N`` comment says (0 by default),
and the lines shown after it must appear in its output.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.DOTALL | re.MULTILINE)
EXITS = re.compile(r"\s+#\s*exits\s+(\d+)\s*$")


def blocks(page: Path) -> list[tuple[str, str]]:
    """The page's python and console blocks, and each bare block that follows a python block
    (kind ``"output"``: what that python block prints)."""
    found: list[tuple[str, str]] = []
    for kind, text in FENCE.findall(page.read_text(encoding="utf-8")):
        if kind in ("python", "console"):
            found.append((kind, text))
        elif not kind and found and found[-1][0] == "python":
            found.append(("output", text))
    return found


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


PRINT = re.compile(r"^(\s*)print\(.*\)\s*$")


def shown_output(block: str) -> list[str]:
    """The lines a python block says it prints: the comments right under each ``print(...)`` line."""
    shown: list[str] = []
    lines = block.splitlines()
    for number, line in enumerate(lines):
        printing = PRINT.match(line)
        if not printing:
            continue
        prefix = printing.group(1) + "# "
        for after in lines[number + 1 :]:
            if not after.startswith(prefix):
                break
            shown.append(after[len(prefix) :].rstrip())
    return shown


def run_python(block: str, name: str, namespace: dict, shown_after: str = "") -> None:
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(block, name, "exec"), namespace)
    output = [line.rstrip() for line in printed.getvalue().splitlines()]
    remaining = iter(output)
    shown_below = [line.rstrip() for line in shown_after.splitlines() if line.strip()]
    for line in shown_output(block) + shown_below:
        assert line in remaining, (
            f"{name}: shown line {line!r} is not printed (in this order) by:\n{printed.getvalue()}"
        )


def test_shown_output_is_read_from_the_comments_under_print_calls():
    block = "x = 1\nprint(x)\n# 1\n\n# not output\ntry:\n    print(2)\n    # 2\n    # 3\nexcept ValueError:\n    pass\n"
    assert shown_output(block) == ["1", "2", "3"]
    with pytest.raises(AssertionError, match="shown line '3'"):
        run_python(block, "example", {})


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
    found = blocks(page)
    for number, (kind, block) in enumerate(found, 1):
        following = found[number][1] if number < len(found) and found[number][0] == "output" else ""
        if kind == "python":
            run_python(block, f"{page.relative_to(ROOT)} (block {number})", namespace, following)
        elif kind == "console":
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
