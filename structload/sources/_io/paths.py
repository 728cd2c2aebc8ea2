"""Paths that are local or fsspec URLs: the few file-system questions the format readers ask.

Every function takes a local path or a URL (`structload.sources._io.remote.is_url`)
and answers the same way for both, so the readers of sharded checkpoints,
directories and zip archives never branch on where a file lives.
"""

from __future__ import annotations

import io
import os
import posixpath
import zipfile

from ..._report import SourceError
from .byte_source import ByteSource
from .identity import before_read
from .local import LocalFile
from .remote import NotFound, RemoteFile, filesystem, is_url, with_retries


def open_handle(path: str) -> ByteSource:
    """The byte source tensors of `path` read through: a local file, or a remote one for a URL."""
    return RemoteFile(path) if is_url(path) else LocalFile(path)


def join(directory: str, name: str) -> str:
    return posixpath.join(directory, name) if is_url(directory) else os.path.join(directory, name)


def dirname(path: str) -> str:
    return posixpath.dirname(path) if is_url(path) else os.path.dirname(path)


def basename(path: str) -> str:
    return posixpath.basename(path.rstrip("/")) if is_url(path) else os.path.basename(path)


def kind(path: str) -> str | None:
    """``"directory"``, ``"file"``, or ``None`` when nothing is there. For a URL, one metadata
    request (fsspec's ``info``; over HTTP a ``HEAD``, where ``isdir`` would fetch the whole URL
    to look for links in it), retried like every request; ``None`` only for a real not-found."""
    if not is_url(path):
        return "directory" if os.path.isdir(path) else "file" if os.path.exists(path) else None
    fs, inner = filesystem(path)
    try:
        info = with_retries(path, "looking it up", lambda: fs.info(inner))
    except NotFound:
        return None
    return "directory" if info.get("type") == "directory" else "file"


def isfile(path: str) -> bool:
    """Whether a file is there; for a URL one metadata request (fsspec's HTTP ``isfile`` would
    ``GET`` the whole file)."""
    if not is_url(path):
        return os.path.isfile(path)
    return kind(path) == "file"


def listdir(directory: str) -> list[str]:
    """The names in a directory (not their paths)."""
    if not is_url(directory):
        return os.listdir(directory)
    fs, inner = filesystem(directory)
    entries = with_retries(directory, "listing it", lambda: fs.ls(inner, detail=False))
    return [posixpath.basename(str(e).rstrip("/")) for e in entries]


def read_small(path: str, limit: int) -> bytes:
    """A whole small file (an index), at most `limit` bytes; a `SourceError` when unreadable or larger."""
    handle = open_handle(path)
    if handle.size > limit:
        raise SourceError(f"{path}: {handle.size} bytes, over the {limit}-byte limit for this file", path="")
    return handle.read_bytes(0, handle.size)


class _RangeReader(io.RawIOBase):
    """A seekable read-only file over a handle's positioned or ranged reads (for ``zipfile``)."""

    def __init__(self, handle: ByteSource):
        self.handle, self.position = handle, 0
        # a local file's zip records are read as zipfile asks, like its own reads (not a tensor read)
        self.read_range = handle.read_range if isinstance(handle, LocalFile) else handle.read_into

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.handle.size}[whence]
        self.position = max(0, base + offset)
        return self.position

    def tell(self) -> int:
        return self.position

    def readinto(self, buffer) -> int:
        count = max(0, min(len(buffer), self.handle.size - self.position))
        if count:
            before_read(self.handle)  # in a load, the file is checked before its first read
            self.read_range(memoryview(buffer).cast("B")[:count], self.position)
            self.position += count
        return count


def zip_archive(handle: ByteSource) -> zipfile.ZipFile:
    """The zip archive in a file, read through the handle (the file it opened, never its path
    opened again: another file may be there now), with positioned or buffered ranged reads.
    Raises what ``zipfile`` raises: callers turn it into a `SourceError` with their own wording."""
    if isinstance(handle, RemoteFile):  # requests are costly: fetched in blocks
        return zipfile.ZipFile(io.BufferedReader(_RangeReader(handle), buffer_size=64 << 10))
    return zipfile.ZipFile(_RangeReader(handle))  # a positioned read is cheap: exactly what zipfile asks
