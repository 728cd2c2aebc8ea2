"""The command line, run through its real entry points."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def structload_command() -> list[str]:
    """The installed ``structload`` script next to this Python, else ``python -m structload``."""
    script = Path(sys.executable).parent / "structload"
    if script.exists():
        return [str(script)]
    found = shutil.which("structload")
    return [found] if found else [sys.executable, "-m", "structload"]


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "COLUMNS": "100", **(env or {})}
    return subprocess.run(
        [*structload_command(), *args], capture_output=True, text=True, timeout=120, env=environment
    )


def test_demo_runs_the_main_job_on_one_screen():
    result = run("demo")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert len(out.splitlines()) <= 45
    assert "Custom: 19 loaded, 8 zeroed, 2 missing" in out
    assert "0–3  (each alike, 24 tensors)" in out
    assert "probe  missing (2 tensors)" in out
    assert "structload.LoadError: 3 problems loading into Custom (2 missing, 1 unexpected)" in out
    assert 'pass rename={r"^blocks\\.": "layers."}' in out
    assert "unchanged" in out and "CHANGED" not in out
    assert "\x1b[" not in out  # no colour codes when not on a terminal


def test_python_dash_m_runs_the_same_command():
    result = subprocess.run(
        [sys.executable, "-m", "structload", "demo"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and "structload demo" in result.stdout


@pytest.mark.parametrize("args", [[], ["no-such-command"]])
def test_bad_usage_exits_2(args):
    assert run(*args).returncode == 2
