"""Remote files: any fsspec URL (``https://``, ``s3://``, ``gs://``, ``hf://``, ``memory://``) as a source.

A `RemoteFile` is a `structload.sources._io.byte_source.ByteSource` like a local file,
so every format reader works on URLs unchanged: headers, pickles and zip directories come from small
ranged reads, and each tensor from ranged reads of exactly its bytes. fsspec
and its filesystem packages (``structload[remote]``) do the talking; this
module adds what a load needs on top:

- big reads are split into `PIECE_BYTES` pieces fetched by several threads at
  once and copied straight into the destination tensor's memory;
- before a load writes, `prefetch` hands each file the byte ranges it is about
  to read, in order: ranges that touch in the file are fetched together (one
  request for a run of small tensors), and up to `WINDOW_PIECES` pieces are in
  flight ahead of the writes, so memory beyond the model stays bounded;
- transient failures (a dropped connection, a timeout, a 5xx or 429, a short
  read) are retried with exponential backoff, `RETRIES` times, at open as at
  read; only a real 404 (or not-found) is "no such file";
- over HTTP, every request has a connect and a read timeout, and retries stop
  in bounded time (`structload.sources._io.http`);
- a file whose size or ETag changes after open is a `SourceError` (HTTP
  reads send ``If-Match`` with a strong ETag; otherwise, and after every
  failure, the file is checked before the first write and after the last);
- prefetch state belongs to the thread that loads: several threads can load
  from one opened tree at once.
"""

from __future__ import annotations

import bisect
import contextlib
import re
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from typing import Any

from ..._report import SourceError
from ..._runtime import ReaderPool
from . import http
from .byte_source import CastBuffers
from .identity import before_read

#: Pieces big reads are split into, and the most bytes one coalesced request fetches.
PIECE_BYTES = 4 << 20
#: How many pieces a prefetching file keeps in flight ahead of the reads.
WINDOW_PIECES = 4
#: Attempts after the first for a transient failure, and the first backoff in seconds (doubled each time).
RETRIES = 4
BACKOFF_SECONDS = 0.05
#: Ranges this close in a file are fetched by one request (a zip local header lies between torch records).
COALESCE_GAP = 512

#: Threads fetching remote pieces (network waits, not CPU).
REMOTE_READERS = ReaderPool(workers=8)

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(path: str) -> bool:
    """Whether `path` is a URL for fsspec rather than a local path.

    >>> is_url("s3://bucket/model.safetensors"), is_url("/data/model.pt"), is_url("C:/model.pt")
    (True, False, False)
    """
    return bool(_URL.match(path))


def filesystem(url: str) -> tuple[Any, str]:
    """The fsspec filesystem for `url` and the path on it; a clear error when fsspec is missing."""
    try:
        import fsspec
    except ImportError:
        raise SourceError(
            f"{url}: reading URLs needs fsspec; install it with: pip install 'structload[remote]'"
        ) from None
    try:
        return fsspec.core.url_to_fs(url, **http.request_options(url))
    except ImportError as error:  # fsspec knows the protocol; its package is not installed
        raise SourceError(
            f"{url}: reading this URL needs a package that is not installed ({error}); install "
            "'structload[remote]' for http(s), or the protocol's fsspec package (s3fs, gcsfs, ...)"
        ) from None
    except ValueError as error:  # a protocol fsspec does not know
        raise SourceError(f"{url}: no filesystem for this URL ({error})") from None


def _transient(error: BaseException) -> bool:
    """Worth another try: connection trouble, timeouts, 5xx and 429 answers."""
    status = getattr(error, "status", None) or getattr(error, "code", None)
    if isinstance(status, int):
        return status >= 500 or status == 429
    if isinstance(error, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    if isinstance(error, (ConnectionError, TimeoutError, OSError)):
        return True
    names = {cls.__name__ for cls in type(error).__mro__}
    return bool(names & {"ClientError", "ServerDisconnectedError", "ClientPayloadError", "EndpointConnectionError"})


class _ShortRead(Exception):
    pass


class NotFound(SourceError):
    """The server says there is no such file (a 404, or the storage's not-found)."""


def with_retries(url: str, what: str, action):
    """Run `action()`, retrying transient failures while a retry can end within
    `structload.sources._io.http.TOTAL_SECONDS`; anything else is a `SourceError` naming `url`
    (`NotFound` for a real not-found)."""
    first = time.monotonic()
    longest = 0.0
    for attempt in range(RETRIES + 1):
        began = time.monotonic()
        try:
            return action()
        except SourceError:
            raise
        except Exception as raised:  # fsspec and its backends raise many kinds
            error = http.real_cause(raised)
            if error is None:
                raise NotFound(f"{url}: no such file or directory", path="") from None
            longest = max(longest, time.monotonic() - began)
            backoff = BACKOFF_SECONDS * 2**attempt
            in_time = time.monotonic() + backoff + longest - first <= http.TOTAL_SECONDS
            if attempt < RETRIES and in_time and (isinstance(error, _ShortRead) or _transient(error)):
                time.sleep(backoff)
                continue
            tries = f" after {attempt + 1} attempts in {time.monotonic() - first:.1f} s" if attempt else ""
            raise SourceError(f"{url}: {what} failed{tries} ({_describe(error)})", path="") from None
    raise AssertionError("unreachable")


def _describe(error: BaseException) -> str:
    status = getattr(error, "status", None)
    text = str(error) or type(error).__name__
    if isinstance(error, TimeoutError) or "Timeout" in type(error).__name__:  # aiohttp's, fsspec's, asyncio's
        text = f"timed out: {text}" if str(error) else f"timed out ({type(error).__name__})"
    return f"HTTP {status}: {text}" if isinstance(status, int) and str(status) not in text else text


class RemoteFile:
    """A file behind an fsspec URL, read with ranged reads (a `ByteSource`, as a local file is)."""

    local = False

    def __init__(self, url: str, readers: ReaderPool = REMOTE_READERS):
        self.path = url
        self.readers = readers
        self.fs, self.fs_path = filesystem(url)
        info = with_retries(url, "reading its size", lambda: self.fs.info(self.fs_path))
        if info.get("type") == "directory":
            raise SourceError(f"{url}: is a directory", path="")
        self.size = int(info.get("size") or 0)
        self.etag = info.get("ETag") or info.get("etag")
        self.last_modified = info.get("Last-Modified")
        self.fetched = 0  # bytes received, for tests, benchmarks and the progress bar
        self.buffers = CastBuffers()
        self._lock = threading.Lock()
        self._loads = threading.local()  # each loading thread's prefetch state
        self._whole: http.WholeBody | None = None  # the body, when the server ignored Range and it was kept
        self._http = type(self.fs).__name__ == "HTTPFileSystem"
        self._probed = not self._http  # whether a read has shown that the server honours Range

    # The ByteSource interface.

    def read_into(self, buffer: memoryview, offset: int) -> None:
        """Fill `buffer` with the bytes at `offset`: from prefetched pieces, else in parallel pieces."""
        if not self.conditional_reads:
            before_read(self)  # in a load, the file is checked before its first read
        prefetch = getattr(self._loads, "prefetch", None)
        if prefetch is not None:
            prefetch.read_into(buffer, offset)
            return
        self.fetch_into(buffer, offset)

    def read_bytes(self, offset: int, length: int) -> bytes:
        buffer = bytearray(length)
        self.read_into(memoryview(buffer), offset)
        return bytes(buffer)

    # Fetching.

    def fetch_into(self, buffer: memoryview, offset: int) -> None:
        """Fetch ``len(buffer)`` bytes at `offset` into `buffer`, big ranges as parallel pieces."""
        if len(buffer) <= PIECE_BYTES:
            buffer[:] = self.fetch(offset, offset + len(buffer))
            return
        starts = range(0, len(buffer), PIECE_BYTES)
        pieces = [
            (a, self.readers.submit(self.fetch, offset + a, offset + min(a + PIECE_BYTES, len(buffer)))) for a in starts
        ]
        for a, piece in pieces:
            data = piece.result()
            buffer[a : a + len(data)] = data

    def fetch(self, start: int, end: int) -> bytes:
        """Bytes ``start .. end`` of the file, exactly, retried while failures are transient."""
        if end > self.size:
            raise SourceError(
                f"{self.path}: bytes {start}..{end} lie past the end of the file ({self.size} bytes)", path=""
            )

        def attempt() -> bytes:
            if self._whole is not None:  # the server ignored Range once: its body is kept
                return self._whole.read(start, end)
            headers = {"headers": {"If-Match": self.etag}} if self.conditional_reads else {}
            try:
                data = self.fs.cat_file(self.fs_path, start=start, end=end, **headers) if self._probed else None
                if data is None:  # the first read over HTTP: is Range honoured?
                    data = self._first_read(start, end, headers.get("headers", {}))
            except Exception as error:
                if getattr(error, "status", None) == 412:  # If-Match failed: another file now
                    raise self.changed("its ETag changed") from None
                raise
            if len(data) > end - start:
                return self._range_ignored(data, start, end)
            if len(data) < end - start:
                raise _ShortRead(f"short read: {len(data)} of {end - start} bytes")
            return data

        try:
            data = with_retries(self.path, f"reading bytes {start}..{end}", attempt)
        except SourceError as error:
            self.check_unchanged()  # a file replaced under the load says so, rather than "short read"
            raise error from None
        with self._lock:
            self.fetched += len(data)
        return data

    def _first_read(self, start: int, end: int, headers: dict[str, str]) -> bytes:
        """Bytes ``start .. end`` by a first read that finds a server ignoring ``Range`` before
        reading its body (`structload.sources._io.http.first_read`)."""
        answer = http.first_read(self.fs, self.fs_path, start, end, headers)
        if isinstance(answer, bytes):
            self._probed = True
            return answer
        if not isinstance(answer, http.WholeBody) or answer.size != self.size:
            raise self._ranges_refused("answered 200 with the whole file")
        return self._keep_whole(answer).read(start, end)

    def _range_ignored(self, data: bytes, start: int, end: int) -> bytes:
        """A server answered a ranged read with more bytes than asked: refused, or (``read-once``)
        the whole body kept for every later read (`structload.sources._io.http`)."""
        if len(data) != self.size or not http.reads_once():
            raise self._ranges_refused(f"sent {len(data)} bytes for {end - start}")
        self._keep_whole(http.WholeBody(data))
        return data[start:end]

    def _ranges_refused(self, what: str) -> SourceError:
        return SourceError(
            f"{self.path}: the server ignored the byte range ({what}); structload needs ranged reads, "
            f"or {http.RANGE_IGNORED}=read-once to download the file once",
            path="",
        )

    def _keep_whole(self, body: http.WholeBody) -> http.WholeBody:
        """The whole body kept for every later read: the first one a thread got, closed with the file."""
        with self._lock:
            if self._whole is None:
                self._whole = body
                weakref.finalize(self, body.close)
        return self._whole

    @property
    def conditional_reads(self) -> bool:
        """Whether every read sends ``If-Match`` with the ETag seen at open (HTTP with a strong
        ETag): a changed file then fails the read itself, and no check after the load is needed.
        A weak ETag cannot be sent (the server compares strongly): the file is checked instead."""
        return bool(self._http and self.etag and not http.is_weak(self.etag) and self._whole is None)

    def check_unchanged(self) -> None:
        """A `SourceError` if the file's size or ETag differs from when it was opened."""
        try:
            info = self.fs.info(self.fs_path)
        except Exception:  # the failure being reported says more
            return
        if int(info.get("size") or 0) != self.size:
            raise self.changed(f"its size went from {self.size} to {info.get('size')} bytes")
        etag = info.get("ETag") or info.get("etag")
        if self.etag and etag and etag != self.etag:  # weak ETags compare weakly: the same string
            raise self.changed("its ETag changed")
        modified = info.get("Last-Modified")
        if self.last_modified and modified and modified != self.last_modified:
            raise self.changed(f"Last-Modified went from {self.last_modified} to {modified}")

    def changed(self, how: str) -> SourceError:
        return SourceError(f"{self.path}: the file changed during the load ({how})", path="")

    # Prefetching.

    @contextlib.contextmanager
    def prefetching(self, ranges: Sequence[tuple[int, int]]) -> Iterator[None]:
        """Within the block, reads of these ``(offset, length)`` ranges come from coalesced pieces
        fetched ahead, in the order the ranges are given."""
        outer = getattr(self._loads, "prefetch", None)
        prefetch = self._loads.prefetch = _Prefetch(self, ranges)  # this thread's load's own
        try:
            yield
        finally:
            prefetch.cancel()
            self._loads.prefetch = outer


def coalesce(ranges: Sequence[tuple[int, int]]) -> list[tuple[int, int, int]]:
    """``(start, end, first use)`` pieces covering `ranges` (``(offset, length)``, in the order they
    will be read): ranges at most `COALESCE_GAP` apart share a piece of at most `PIECE_BYTES`;
    bigger ranges are split into pieces of that size. Pieces come back in order of first use.

    >>> coalesce([(100, 10), (0, 100), (1000, 5)])
    [(0, 110, 0), (1000, 1005, 2)]
    """
    order = sorted(range(len(ranges)), key=lambda i: ranges[i][0])
    pieces: list[list[int]] = []
    for i in order:
        start, length = ranges[i]
        end = start + length
        if length == 0:
            continue
        last = pieces[-1] if pieces else None
        if last and start <= last[1] + COALESCE_GAP and max(end, last[1]) - last[0] <= PIECE_BYTES:
            last[1], last[2] = max(end, last[1]), min(last[2], i)
            continue
        pieces.extend([a, min(a + PIECE_BYTES, end), i] for a in range(start, end, PIECE_BYTES))
    return sorted((tuple(p) for p in pieces), key=lambda p: (p[2], p[0]))  # type: ignore[misc]


class _Prefetch:
    """Pieces of one file fetched ahead of the reads that need them; each is dropped once read."""

    def __init__(self, file: RemoteFile, ranges: Sequence[tuple[int, int]]):
        self.file = file
        self.pieces = coalesce(ranges)
        self.by_start = sorted(range(len(self.pieces)), key=lambda k: self.pieces[k][0])
        self.starts = [self.pieces[k][0] for k in self.by_start]
        self.futures: dict[int, Future] = {}
        self.left = {k: end - start for k, (start, end, _) in enumerate(self.pieces)}  # bytes not yet read
        self.submitted = 0
        self.cursor = 0  # the first piece not yet read in full

    def read_into(self, buffer: memoryview, offset: int) -> None:
        end = offset + len(buffer)
        at = offset
        while at < end:
            k = self._piece_at(at)
            if k is None:  # not announced: read directly
                self.file.fetch_into(buffer[at - offset :], at)
                return
            start, stop, _ = self.pieces[k]
            self._submit_through(k)
            data = self.futures[k].result()
            upto = min(stop, end)
            buffer[at - offset : upto - offset] = data[at - start : upto - start]
            self.left[k] -= upto - at
            if self.left[k] <= 0:
                del self.futures[k]  # read in full: freed
            at = upto

    def _piece_at(self, at: int) -> int | None:
        i = bisect.bisect_right(self.starts, at) - 1
        if i < 0:
            return None
        k = self.by_start[i]
        start, stop, _ = self.pieces[k]
        return k if start <= at < stop and self.left.get(k, 0) > 0 else None

    def _submit_through(self, k: int) -> None:
        """Pieces up to `k` and `WINDOW_PIECES` beyond it are in flight."""
        last = min(len(self.pieces), max(k + 1, self._next_unread() + WINDOW_PIECES))
        while self.submitted < last:
            start, stop, _ = self.pieces[self.submitted]
            self.futures[self.submitted] = self.file.readers.submit(self.file.fetch, start, stop)
            self.submitted += 1

    def _next_unread(self) -> int:
        while self.cursor < len(self.pieces) and self.left[self.cursor] <= 0:
            self.cursor += 1
        return self.cursor

    def cancel(self) -> None:
        for future in self.futures.values():
            future.cancel()
        self.futures.clear()
