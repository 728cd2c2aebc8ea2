"""What reading over HTTP(S) needs beyond fsspec's defaults: timeouts, weak ETags, servers that ignore ``Range``.

- **Timeouts.** fsspec's HTTP filesystem waits 300 s for a request by
  default, and structload retries a failed request four times: a stalled
  server would hold a load for 25 minutes. structload gives every request a
  connect timeout (`CONNECT_SECONDS`) and a read timeout (`READ_SECONDS`: for
  the first byte of the answer and between any two chunks of its body, so a
  slow but moving download is never cut), and stops retrying once the next
  attempt could end past `TOTAL_SECONDS` after the first: a stalled server
  ends the load with a `SourceError` naming the URL in at most about 100 s.
  ``fsspec.config.conf["https"] = {"timeout": 5}`` (or ``"http"``) sets both
  timeouts for every URL of that protocol, in seconds; a dict
  (``{"connect": 5, "read": 60}``) sets them apart; an ``aiohttp.ClientTimeout``
  is used as it is.
- **Weak ETags** (``W/"..."``) may not be sent in ``If-Match`` (the server
  compares strongly: every read would fail with 412). A file whose ETag is
  weak is read without ``If-Match``, and checked instead before the first
  write and after the last one: its size, ETag (compared weakly: the same
  string) and ``Last-Modified`` must be those seen at open.
- **A server that ignores ``Range``** answers a ranged read with the whole
  file (``200``). By default that is refused with the reason; with the
  environment variable ``STRUCTLOAD_RANGE_IGNORED=read-once`` the whole body
  received is kept in a temporary file (not in memory) and every later read
  of that file is served from it: the body is downloaded once.

>>> is_weak('W/"abc"'), is_weak('"abc"'), is_weak(None)
(True, False, False)
>>> client_timeout(5).sock_read, client_timeout({"connect": 1, "read": 60}).sock_connect
(5.0, 1)
"""

from __future__ import annotations

import os
import tempfile
import threading
from typing import Any

#: Seconds to open a connection, and to wait for the first byte of an answer or the next chunk of its body.
CONNECT_SECONDS = 10.0
READ_SECONDS = 20.0
#: No retry starts that could end more than this many seconds after a request's first attempt.
TOTAL_SECONDS = 100.0
#: The environment variable choosing what a server that ignores ``Range`` gets: refused, or read once.
RANGE_IGNORED = "STRUCTLOAD_RANGE_IGNORED"


def is_weak(etag: str | None) -> bool:
    return bool(etag) and str(etag).startswith("W/")


def client_timeout(setting: Any = None):
    """The ``aiohttp.ClientTimeout`` for a ``timeout`` setting (seconds, a dict, or one already made);
    no total limit: a big piece that keeps arriving is never cut."""
    import aiohttp

    if isinstance(setting, aiohttp.ClientTimeout):
        return setting
    if isinstance(setting, dict):
        connect, read = setting.get("connect", CONNECT_SECONDS), setting.get("read", READ_SECONDS)
    elif setting is not None:
        connect = read = float(setting)
    else:
        connect, read = CONNECT_SECONDS, READ_SECONDS
    return aiohttp.ClientTimeout(total=None, connect=connect, sock_connect=connect, sock_read=read)


def request_options(url: str) -> dict[str, Any]:
    """What structload passes to fsspec for `url`: for HTTP(S), the per-request ``timeout``
    (from ``fsspec.config.conf``'s ``timeout`` if set, else the defaults here)."""
    protocol = url.split("://", 1)[0].lower()
    if protocol not in ("http", "https"):
        return {}
    import fsspec.config

    setting = None
    for name in ("http", "https"):  # fsspec applies both to its HTTP filesystem
        setting = fsspec.config.conf.get(name, {}).get("timeout", setting)
    return {"timeout": client_timeout(setting)}


def reads_once() -> bool:
    """Whether a server that ignores ``Range`` is read once (``read-once``) rather than refused."""
    value = os.environ.get(RANGE_IGNORED, "refuse").strip().lower()
    if value not in ("refuse", "read-once"):
        raise ValueError(f"{RANGE_IGNORED} must be 'refuse' or 'read-once', not {value!r}")
    return value == "read-once"


class WholeBody:
    """A remote file's whole body, received once (from a server that ignored ``Range``), kept in
    a temporary file that later reads come from."""

    def __init__(self, data: bytes):
        self._file = tempfile.TemporaryFile()  # noqa: SIM115  (open as long as the remote file is)
        self._file.write(data)
        self._file.flush()
        self.size = len(data)
        self._lock = threading.Lock()

    def read(self, start: int, end: int) -> bytes:
        if hasattr(os, "pread"):
            return os.pread(self._file.fileno(), end - start, start)
        with self._lock:
            self._file.seek(start)
            return self._file.read(end - start)

    def close(self) -> None:
        self._file.close()
