"""Fixtures shared by the remote tests (`test_remote.py`, `test_remote_faults.py`)."""

from __future__ import annotations

import pytest
from loopback import LoopbackServer

from structload.sources import _remote


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
