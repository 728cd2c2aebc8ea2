"""Fixtures shared by the remote tests (`test_remote.py`, `test_remote_faults.py`); mypy run beside
the suite (`test_code_health.py`)."""

from __future__ import annotations

import sys

import pytest
from loopback import LoopbackServer

from structload.sources._io import remote as _remote


@pytest.fixture
def quick_retries(monkeypatch):
    """Remote retries without their back-off wait."""
    monkeypatch.setattr(_remote, "BACKOFF_SECONDS", 0.001)


@pytest.fixture
def served(tmp_path):
    """A loopback HTTP server over a fresh folder, closed after the test."""
    root = tmp_path / "served"
    root.mkdir()
    server = LoopbackServer(root)
    yield server
    server.close()


@pytest.hookimpl(trylast=True)  # after `-k` / `-m` deselected what they deselect
def pytest_collection_modifyitems(config, items):
    """Start mypy (about a minute on a cold cache) in the background as soon as the tests are known,
    when its test is among them, and run that test last: it then only collects mypy's verdict,
    which was worked out on the other core while the suite ran."""
    mypy = [item for item in items if item.name == "test_mypy_passes_on_the_whole_package"]
    if mypy:
        items[:] = [item for item in items if item not in mypy] + mypy
        mypy[0].module.start_mypy()


def pytest_sessionfinish(session):
    health = sys.modules.get("test_code_health")  # imported only if collected
    if health is not None:
        health.stop_mypy()
