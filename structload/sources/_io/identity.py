"""Which file a handle opened, and whether that is still the file its path names.

A source opened once must be that file until it is read: a checkpoint
rewritten in place, or another file moved over its path (``os.replace``, a
download finishing), would otherwise give the new file's bytes at the old
file's offsets (garbage values, no error). A handle records `Identity` at
open; a load checks every file it reads before its first write, before the
first read of a file it meets only while writing, and after its last write
(`checking`); a mapping checks before it maps.

>>> import os, tempfile
>>> path = os.path.join(tempfile.mkdtemp(), "w.bin")
>>> _ = open(path, "wb").write(b"1234")
>>> fd = os.open(path, os.O_RDONLY)
>>> opened = Identity.of(os.fstat(fd))
>>> changed_since(opened, fd, path) is None
True
>>> os.replace(_write(path + ".new", b"5678"), path)
>>> changed_since(opened, fd, path)
'another file was put at its path (moved or replaced) after it was opened'
>>> os.close(fd)
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from collections.abc import Iterator
from typing import NamedTuple, Protocol

from ..._report import SourceError


class Identity(NamedTuple):
    """What tells one file from another, and one version of a file from the next."""

    device: int
    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, status: os.stat_result) -> Identity:
        return cls(status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)


def changed_since(opened: Identity, fd: int, path: str) -> str | None:
    """How the file open as `fd` (opened as `opened`), or the file its `path` now names, differs
    from the file that was opened; ``None`` when it is the same file, unchanged."""
    now = Identity.of(os.fstat(fd))
    if now.size != opened.size:
        return f"its size went from {opened.size} to {now.size} bytes"
    if now.mtime_ns != opened.mtime_ns:
        return "it was rewritten (its modification time changed)"
    try:
        at_path = Identity.of(os.stat(path))
    except OSError:
        return "its path no longer names a file"
    if (at_path.device, at_path.inode) != (opened.device, opened.inode):
        return "another file was put at its path (moved or replaced) after it was opened"
    return None


def special_kind(mode: int) -> str | None:
    """What a file that is not a regular file is (its reads could block forever or never end).

    >>> special_kind(stat.S_IFIFO), special_kind(stat.S_IFREG)
    ('a named pipe (FIFO)', None)
    """
    kinds = {
        stat.S_IFIFO: "a named pipe (FIFO)",
        stat.S_IFCHR: "a character device",
        stat.S_IFBLK: "a block device",
        stat.S_IFSOCK: "a socket",
        stat.S_IFDIR: "a directory",
    }
    return kinds.get(stat.S_IFMT(mode)) if not stat.S_ISREG(mode) else None


def open_regular(path: str) -> int:
    """A descriptor of the regular file at `path`; a FIFO, device or socket is refused without
    blocking (``O_NONBLOCK``: opening a FIFO with no writer would wait forever)."""
    flags = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError as error:
        raise SourceError(f"{path}: cannot open ({error.strerror})", path="") from None
    kind = special_kind(os.fstat(fd).st_mode)
    if kind is not None:
        os.close(fd)
        raise SourceError(f"{path}: is {kind}, not a checkpoint file; structload reads regular files only", path="")
    return fd


class Checked(Protocol):
    def check_unchanged(self) -> None: ...


_LOAD = threading.local()


@contextlib.contextmanager
def checking(files: list) -> Iterator[set]:
    """Within the block (one load's writes, on this thread), each of `files` is checked now,
    and any other file is checked before its first read (`before_read`); the set of every file
    checked is yielded, for the check after the last write."""
    checked: set = set()
    for file in files:
        file.check_unchanged()
        checked.add(file)
    outer = getattr(_LOAD, "checked", None)
    _LOAD.checked = checked
    try:
        yield checked
    finally:
        _LOAD.checked = outer


def before_read(file: Checked) -> None:
    """Check `file` before its first read in the load running on this thread (if any)."""
    checked = getattr(_LOAD, "checked", None)
    if checked is not None and file not in checked:
        checked.add(file)
        file.check_unchanged()


def _write(path: str, data: bytes) -> str:
    with open(path, "wb") as f:
        f.write(data)
    return path
