"""An HTTP file server on the loopback address with byte ranges, ETags and fault injection.

Serves the files of a directory. ``HEAD`` gives the size and an ETag (which
changes when a file is replaced); ``GET`` honours ``Range`` and ``If-Match``
(412 when the ETag no longer matches). ``faults`` is a list of what the next
ranged ``GET`` requests do instead of answering: ``"drop"`` (close the
connection with no answer), ``"503"``, ``"short"`` (send half the range,
announced as such), ``"stall"`` (answer nothing, keeping the connection
open), ``"stall-body"`` (send the headers and half the body, then nothing),
or a callable run first (to replace a file mid-load). ``head_faults`` does the
same for the next requests without a range (``HEAD``, and the ``GET`` fsspec
sends for a file's size when ``HEAD`` fails). A stall lasts until the server closes.
``weak_etags`` sends ETags as ``W/"..."`` (``If-Match`` with one always fails:
the comparison is strong); ``ignore_range`` answers every ``GET`` with the
whole file (``200``). ``served`` counts the body bytes sent.
"""

from __future__ import annotations

import email.utils
import hashlib
import http.server
import threading
from pathlib import Path


class LoopbackServer:
    def __init__(self, root: Path):
        self.root = root
        self.faults: list = []
        self.head_faults: list = []
        self.weak_etags = False
        self.ignore_range = False
        self.closing = threading.Event()  # ends every stall
        self.served = 0
        self.requests: list[tuple[str, str, str]] = []  # (method, path, range)
        self._lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # else headers and body in two sends wait 40 ms for a delayed ACK

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                server.answer(self, head=True)

            def do_GET(self):
                server.answer(self, head=False)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.closing.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def etag(self, path: Path) -> str:
        stat = path.stat()
        tag = '"' + hashlib.md5(f"{stat.st_size}-{stat.st_mtime_ns}".encode()).hexdigest() + '"'
        return "W/" + tag if self.weak_etags else tag

    def answer(self, handler, head: bool) -> None:
        path = self.root / handler.path.lstrip("/")
        ranged = handler.headers.get("Range", "")
        with self._lock:
            self.requests.append(("HEAD" if head else "GET", handler.path, ranged))
            fault = self.faults.pop(0) if (ranged and not head and self.faults) else None
            if not ranged and self.head_faults:  # HEAD, or the GET fsspec tries when HEAD fails
                fault = self.head_faults.pop(0)
        if callable(fault):
            fault()
            fault = None
        if not path.is_file():
            return self.status(handler, 404)
        if fault == "drop":
            handler.close_connection = True
            handler.connection.shutdown(2)
            return None
        if fault == "503":
            return self.status(handler, 503)
        if fault == "stall":
            self.closing.wait()
            return None
        etag = self.etag(path)
        condition = handler.headers.get("If-Match")
        if condition is not None and (condition != etag or etag.startswith("W/")):  # compared strongly
            return self.status(handler, 412)
        size = path.stat().st_size
        start, end = 0, size
        ranged = "" if self.ignore_range else ranged
        if ranged:
            first, last = ranged.removeprefix("bytes=").split("-")
            start, end = int(first), min(int(last) + 1, size)
        with open(path, "rb") as f:  # only the range: the server shares the tests' memory budget
            f.seek(start)
            body = f.read(0 if head else end - start)
        if fault in ("short", "stall-body"):
            body = body[: len(body) // 2]
        handler.send_response(206 if ranged else 200)
        promised = end - start if head or fault == "stall-body" else len(body)  # a stalled body promises more
        handler.send_header("Content-Length", str(promised))
        handler.send_header("Accept-Ranges", "bytes")
        handler.send_header("ETag", etag)
        handler.send_header("Last-Modified", email.utils.formatdate(path.stat().st_mtime, usegmt=True))
        if ranged:
            handler.send_header("Content-Range", f"bytes {start}-{start + len(body) - 1}/{size}")
        handler.end_headers()
        if not head:
            handler.wfile.write(body)
            handler.wfile.flush()
            with self._lock:
                self.served += len(body)
        if fault == "stall-body":
            self.closing.wait()
        return None

    def status(self, handler, code: int) -> None:
        handler.send_response(code)
        handler.send_header("Content-Length", "0")
        handler.end_headers()
