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
  file (``200``). The first read of a file (`first_read`) looks at the status
  before reading any of the body: by default such a server is refused with
  the reason, its body never read; with the environment variable
  ``STRUCTLOAD_RANGE_IGNORED=read-once`` the body is streamed into a
  temporary file (not memory), once, and every later read of that file is
  served from it.

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


def real_cause(error: BaseException) -> BaseException | None:
    """What went wrong, or ``None`` for a real not-found. fsspec's HTTP ``info`` turns every
    failure (a 503, a refused connection) into ``FileNotFoundError``, keeping the cause."""
    if not isinstance(error, FileNotFoundError):
        return error
    cause = error.__cause__
    if cause is None or getattr(cause, "status", None) in (404, 410) or isinstance(cause, FileNotFoundError):
        return None
    return cause


def reads_once() -> bool:
    """Whether a server that ignores ``Range`` is read once (``read-once``) rather than refused."""
    value = os.environ.get(RANGE_IGNORED, "refuse").strip().lower()
    if value not in ("refuse", "read-once"):
        raise ValueError(f"{RANGE_IGNORED} must be 'refuse' or 'read-once', not {value!r}")
    return value == "read-once"


class WholeBody:
    """A remote file's whole body, received once (from a server that ignored ``Range``), kept in
    a temporary file that later reads come from."""

    def __init__(self, data: bytes = b""):
        self._file = tempfile.TemporaryFile()  # noqa: SIM115  (open as long as the remote file is)
        self.size = 0
        self._lock = threading.Lock()
        self.write(data)

    def write(self, chunk: bytes) -> None:
        self._file.write(chunk)
        self._file.flush()
        self.size += len(chunk)

    def read(self, start: int, end: int) -> bytes:
        if hasattr(os, "pread"):
            return os.pread(self._file.fileno(), end - start, start)
        with self._lock:
            self._file.seek(start)
            return self._file.read(end - start)

    def close(self) -> None:
        self._file.close()


#: What `first_read` gives for a server that ignored ``Range`` when the body is not to be kept.
RANGE_IGNORED_NOT_READ = object()


def first_read(fs, path: str, start: int, end: int, headers: dict[str, str]) -> Any:
    """The first ranged read of a file over fsspec's HTTP filesystem `fs`, made so that a server
    ignoring ``Range`` is known before its body is read: the bytes (``206``); for a ``200``,
    `RANGE_IGNORED_NOT_READ`, or with `reads_once` a `WholeBody` the body was streamed into.
    Other answers raise as fsspec's own reads do (``FileNotFoundError`` for a 404)."""
    from fsspec.asyn import sync

    return sync(fs.loop, _first_read, fs, path, start, end, headers, reads_once())


async def _first_read(fs, path: str, start: int, end: int, headers: dict[str, str], keep: bool) -> Any:
    options = dict(fs.kwargs)  # the request options (the timeout among them)
    sent = {**options.pop("headers", {}), **headers, "Range": f"bytes={start}-{end - 1}"}
    session = await fs.set_session()
    async with session.get(fs.encode_url(path), headers=sent, **options) as answer:
        if answer.status == 206:
            return await answer.read()
        fs._raise_not_found_for_status(answer, path)  # a 404, 412, 5xx: raised with its status
        if not keep:
            return RANGE_IGNORED_NOT_READ
        body = WholeBody()
        async for chunk in answer.content.iter_chunked(1 << 20):
            body.write(chunk)
        return body
