"""A local checkpoint file as a `ByteSource`: positioned reads into tensor memory, and its mmap.

A tensor is read with positioned reads (``os.preadv``) into the destination's
own storage: one copy, from the page cache into the model. Nothing is memory
mapped, so reading a checkpoint never adds its mapped pages to the process's
resident memory, and a file cut short is an error, never ``SIGBUS``; except
with ``load(mmap=True)``, whose caller accepts a mapped file: matching tensors
become views of one mmap of the file (`LocalFile.mmap_storage`), and casts read
from short-lived mmaps of one chunk each (`LocalFile.cast_from_mmap`).
"""

from __future__ import annotations

import mmap
import os
import threading
import weakref
from typing import Any

import torch

from ..._report import SourceError
from ..._runtime import READERS, ReaderPool
from .byte_source import CastBuffers
from .identity import Identity, before_read, changed_since, open_regular

#: Reads of at least this many bytes are split into pieces read in parallel.
PARALLEL_BYTES = 4 << 20
PIECE_BYTES = 2 << 20


class LocalFile:
    """One open local checkpoint file, shared by all its lazy tensors; closed when they all are gone.

    Big reads are split across the threads of `readers` (see `structload._runtime`).
    """

    local = True

    def __init__(self, path: str, readers: ReaderPool = READERS):
        self.path = path
        self.readers = readers
        self.fd = open_regular(path)
        self.identity = Identity.of(os.fstat(self.fd))  # checked before reading and mapping
        self.size = self.identity.size
        self.buffers = CastBuffers()
        self._lock = threading.Lock()  # for the seek-and-read fallback without preadv
        self._storage: Any = None
        weakref.finalize(self, os.close, self.fd)

    def check_unchanged(self) -> None:
        """A `SourceError` naming the file if it changed since it was opened, or if its path now
        names another file (`structload.sources._io.identity`)."""
        how = changed_since(self.identity, self.fd, self.path)
        if how is not None:
            raise self.changed(how)

    def changed(self, how: str) -> SourceError:
        return SourceError(f"{self.path}: the file changed since it was opened ({how}); open it again", path="")

    def read_into(self, buffer: memoryview, offset: int) -> None:
        """Fill `buffer` with the bytes at `offset`, or raise `SourceError` naming the file.

        Big reads are split into pieces read by several threads at once
        (``preadv`` releases the GIL): the kernel's copy out of the page cache
        is the whole cost of a load, and one thread leaves cores idle.
        """
        before_read(self)  # the first read of this file in a load checks that it is still the same
        if len(buffer) < PARALLEL_BYTES or self.readers.workers < 2 or not hasattr(os, "preadv"):
            return self.read_range(buffer, offset)
        starts = range(0, len(buffer), PIECE_BYTES)
        pieces = [self.readers.submit(self.read_range, buffer[a : a + PIECE_BYTES], offset + a) for a in starts]
        for piece in pieces:
            piece.result()  # the first failure, as a SourceError

    def read_range(self, buffer: memoryview, offset: int) -> None:
        """`read_into` in this thread, in one piece, with no check of the file first."""
        done, total = 0, len(buffer)
        while done < total:
            try:
                n = self._read(buffer[done:], offset + done)
            except OSError as error:
                raise SourceError(f"{self.path}: read failed at byte {offset + done} ({error.strerror})") from None
            if n == 0:
                raise self._ended(os.fstat(self.fd).st_size, offset, offset + total)
            done += n

    def _read(self, buffer: memoryview, offset: int) -> int:
        if hasattr(os, "preadv"):
            return os.preadv(self.fd, [buffer], offset)
        with self._lock:
            os.lseek(self.fd, offset, os.SEEK_SET)
            return os.readv(self.fd, [buffer])

    def read_bytes(self, offset: int, length: int) -> bytes:
        buffer = bytearray(length)
        self.read_into(memoryview(buffer), offset)
        return bytes(buffer)

    def mmap_storage(self) -> Any:
        """The whole file mapped copy-on-write (``MAP_PRIVATE``): writes to tensors made from it
        stay in this process and never reach the file. Made on first use, shared by every tensor."""
        if self._storage is None:
            self.check_unchanged()
            try:
                self._storage = torch.UntypedStorage.from_file(self._same_file(), shared=False, nbytes=self.size)
            except (RuntimeError, OSError) as error:
                raise SourceError(f"{self.path}: cannot map the file ({error})") from None
        return self._storage

    def _same_file(self) -> str:
        """A name that opens the file this handle opened, even if its path now names another
        (Linux's ``/proc/self/fd``); elsewhere its path, checked just before."""
        by_descriptor = f"/proc/self/fd/{self.fd}"
        return by_descriptor if os.path.exists(by_descriptor) else self.path

    def cast_from_mmap(self, target: torch.Tensor, offset: int, dtype: torch.dtype) -> None:
        """Copy the `dtype` values at `offset` into `target` (casting) from a private mmap of
        just those bytes, unmapped before returning."""
        start = offset - offset % mmap.ALLOCATIONGRANULARITY
        length = target.numel() * dtype.itemsize
        status = os.fstat(self.fd)
        size = status.st_size
        if status.st_mtime_ns != self.identity.mtime_ns and offset + length <= size:  # rewritten
            raise self.changed("it was rewritten (its modification time changed)")
        if offset + length > size:  # mapping past the end would raise SIGBUS on access
            raise self._ended(size, offset, offset + length)
        try:
            mapping = mmap.mmap(self.fd, offset + length - start, access=mmap.ACCESS_COPY, offset=start)
        except (OSError, ValueError) as error:
            raise SourceError(f"{self.path}: cannot map bytes {offset}..{offset + length} ({error})") from None
        with mapping:
            target.copy_(torch.frombuffer(mapping, dtype=dtype, count=target.numel(), offset=offset - start))

    def _ended(self, size: int, start: int, end: int) -> SourceError:
        """The error for bytes `start`..`end` of a file now only `size` bytes long."""
        return SourceError(
            f"{self.path}: file ended at byte {size} while reading bytes {start}..{end} "
            "(truncated, or changed since it was opened)"
        )
