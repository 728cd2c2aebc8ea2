"""Reading byte ranges of checkpoint files straight into tensor memory.

Every file format ends up here: a tensor is a byte range of a file, read with
positioned reads (``os.preadv``) into the destination's own storage when
dtype and layout allow (one copy, from the page cache into the model), or
through a small bounded buffer when a cast is needed. Nothing is memory
mapped, so reading a checkpoint never adds its mapped pages to the process's
resident memory, and a file cut short is an error, never ``SIGBUS``; except
with ``load(mmap=True)``, whose caller accepts a mapped file: matching tensors
become views of one mapping of the file, and casts read from short-lived
mappings of one chunk each.
"""

from __future__ import annotations

import contextlib
import math
import mmap
import os
import threading
import weakref
from collections.abc import Iterator
from typing import Any, ClassVar

import torch

from .._report import SourceError
from .._runtime import READERS, ReaderPool
from ._identity import Identity, before_read, changed_since, open_regular
from ._leaves import SourceTensor, iter_leaves

#: Casting loads go through a buffer of at most this many bytes.
CHUNK_BYTES = 16 << 20
#: Strided reads fetch rows of at least this many bytes one by one (exact), smaller rows in blocks.
SEGMENT_BYTES = 64 << 10
#: Reads of at least this many bytes are split into pieces read in parallel.
PARALLEL_BYTES = 4 << 20
PIECE_BYTES = 2 << 20


class FileHandle:
    """One open checkpoint file, shared by all its lazy tensors; closed when they all are gone.

    Big reads are split across the threads of `readers` (see `structload._runtime`).
    A file behind a URL is a `structload.sources._remote.RemoteFile` (``local`` is ``False``).
    """

    local = True
    #: Every local file open (weakly held): a load with none (an in-memory source) checks no file.
    alive: ClassVar[weakref.WeakSet[FileHandle]] = weakref.WeakSet()
    #: Every open file whose pickle held objects that were not imported (weakly held): while there
    #: is none, asking a source tree for its pickled types costs nothing, not a pass over its leaves.
    holding_pickled_types: ClassVar[weakref.WeakSet[FileHandle]] = weakref.WeakSet()

    def __init__(self, path: str, readers: ReaderPool = READERS):
        self.path = path
        self.readers = readers
        self.fd = open_regular(path)
        self.identity = Identity.of(os.fstat(self.fd))  # checked before reading and mapping
        self.size = self.identity.size
        self._lock = threading.Lock()  # for the seek-and-read fallback without preadv
        self._mapping: Any = None
        self._cast_buffers: tuple[torch.Tensor, torch.Tensor] | None = None
        self._buffer_lock = threading.Lock()
        #: Dotted path -> type name of the objects a torch file's pickle holds that were not imported.
        self.pickled_types: dict[str, str] = {}
        weakref.finalize(self, os.close, self.fd)
        FileHandle.alive.add(self)

    def hold_pickled_types(self, types: dict[str, str]) -> None:
        """Record the pickled types of this file (`structload.sources.pickled`)."""
        self.pickled_types = types
        if types:
            FileHandle.holding_pickled_types.add(self)

    def check_unchanged(self) -> None:
        """A `SourceError` naming the file if it changed since it was opened, or if its path now
        names another file (`structload.sources._identity`)."""
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
            return self._read_range(buffer, offset)
        starts = range(0, len(buffer), PIECE_BYTES)
        pieces = [self.readers.submit(self._read_range, buffer[a : a + PIECE_BYTES], offset + a) for a in starts]
        for piece in pieces:
            piece.result()  # the first failure, as a SourceError

    def _read_range(self, buffer: memoryview, offset: int) -> None:
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

    def mapping(self) -> Any:
        """The whole file mapped copy-on-write (``MAP_PRIVATE``): writes to tensors made from it
        stay in this process and never reach the file. Made on first use, shared by every tensor."""
        if self._mapping is None:
            self.check_unchanged()
            try:
                self._mapping = torch.UntypedStorage.from_file(self._same_file(), shared=False, nbytes=self.size)
            except (RuntimeError, OSError) as error:
                raise SourceError(f"{self.path}: cannot map the file ({error})") from None
        return self._mapping

    def _same_file(self) -> str:
        """A name that opens the file this handle opened, even if its path now names another
        (Linux's ``/proc/self/fd``); elsewhere its path, checked just before."""
        by_descriptor = f"/proc/self/fd/{self.fd}"
        return by_descriptor if os.path.exists(by_descriptor) else self.path

    @contextlib.contextmanager
    def cast_buffers(self, dtype: torch.dtype, numel: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Two buffers of `numel` elements for casting reads, kept for the next tensor: buffers
        allocated afresh per tensor come from the system each time (big allocations are mapped
        anew), and faulting their pages in cost as much as the reads (GPT-2-medium, bf16 into
        fp32: 0.96 s against 0.35 s in a process that had the memory already)."""
        if not self._buffer_lock.acquire(blocking=False):  # another thread casts from this file: its own
            yield (torch.empty(numel, dtype=dtype), torch.empty(numel, dtype=dtype))
            return
        try:
            kept = self._cast_buffers
            if kept is None or kept[0].dtype != dtype or kept[0].numel() < numel:
                kept = self._cast_buffers = (torch.empty(numel, dtype=dtype), torch.empty(numel, dtype=dtype))
            yield (kept[0][:numel], kept[1][:numel])
        finally:
            self._buffer_lock.release()

    def cast_mapped(self, target: torch.Tensor, offset: int, dtype: torch.dtype) -> None:
        """Copy the `dtype` values at `offset` into `target` (casting) from a private mapping of
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

    def read_bytes(self, offset: int, length: int) -> bytes:
        buffer = bytearray(length)
        self.read_into(memoryview(buffer), offset)
        return bytes(buffer)


def refuse_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    """A ``json.loads`` ``object_pairs_hook`` that refuses a key given twice."""
    keys = [key for key, _ in pairs]
    if len(keys) != len(set(keys)):
        duplicate = next(key for key in keys if keys.count(key) > 1)
        raise ValueError(f"'{duplicate}' is listed twice")
    return dict(pairs)


def file_tensor(leaf: SourceTensor) -> FileTensor | None:
    """The file tensor a leaf reads, if it is one (a sharded checkpoint's opens its shard)."""
    base = leaf.resolve() if hasattr(leaf, "resolve") else leaf
    return base if isinstance(base, FileTensor) else None


def file_handles(tree) -> list[FileHandle]:
    """The distinct files the tensors of a source tree read from, in order of first use (the shards
    of a sharded checkpoint that no read has opened yet are not among them)."""
    handles: dict[int, FileHandle] = {}
    for _, leaf in iter_leaves(tree):
        if isinstance(leaf, FileTensor):
            handles.setdefault(id(leaf.file), leaf.file)
    return list(handles.values())


def writable_bytes(tensor: torch.Tensor) -> memoryview:
    """The memory of a contiguous CPU tensor as a writable byte view."""
    flat = tensor.detach().reshape(-1)
    return flat.view(torch.uint8).numpy().data if flat.numel() else memoryview(bytearray())


def contiguous_strides(shape) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


class FileTensor(SourceTensor):
    """A tensor stored in a file as `dtype` elements starting at byte `offset`.

    `stride` is ``None`` for a contiguous tensor; otherwise the element strides
    of a view into a storage that starts at `offset` (torch files can store
    views), and reading takes the span the view covers.
    """

    __slots__ = ("file", "offset", "stride")
    dtype: torch.dtype

    def __init__(self, file: FileHandle, offset: int, shape, dtype: torch.dtype, stride=None):
        self.file = file
        self.offset = offset
        self.shape = tuple(shape)
        self.dtype = dtype
        self.stride = None if stride is None or tuple(stride) == contiguous_strides(shape) else tuple(stride)

    def same_data(self, other: SourceTensor) -> bool:
        return self is other or (
            isinstance(other, FileTensor)
            and (other.file.path, other.offset, other.shape, other.dtype, other.stride)
            == (self.file.path, self.offset, self.shape, self.dtype, self.stride)
        )

    def mappable(self) -> bool:
        """Whether this tensor can be a view of the mapped file: contiguous and aligned to its dtype."""
        return self.file.local and self.stride is None and self.offset % self.dtype.itemsize == 0

    def mapped(self) -> torch.Tensor:
        """A tensor viewing these bytes of the copy-on-write mapping of the file (no copy)."""
        view = torch.empty(0, dtype=self.dtype)
        offset = self.offset // self.dtype.itemsize
        return view.set_(self.file.mapping(), offset, self.shape, contiguous_strides(self.shape))

    def strides(self) -> tuple[int, ...]:
        return self.stride if self.stride is not None else contiguous_strides(self.shape)

    def view(self, shape, stride, element_offset: int = 0) -> FileTensor:
        """The same bytes seen with another shape and stride (no data read): transposes,
        slices and squeezes of a stored tensor stay file tensors."""
        offset = self.offset + element_offset * self.dtype.itemsize
        return FileTensor(self.file, offset, shape, self.dtype, stride)

    def _span(self) -> int:
        """How many elements from `offset` the tensor reaches."""
        if math.prod(self.shape) == 0:
            return 0
        if self.stride is None:
            return math.prod(self.shape)
        return 1 + sum((size - 1) * step for size, step in zip(self.shape, self.stride))

    def read(self) -> torch.Tensor:
        """A new contiguous CPU tensor holding the values."""
        out = torch.empty(self.shape, dtype=self.dtype)
        self._fill(out)
        return out

    def read_into(self, target: torch.Tensor, map_casts: bool = False) -> None:
        """Write the values into `target` with as few copies and as little memory as possible.

        With `map_casts` (``load(mmap=True)``: the caller accepts that a file cut short
        while mapped ends the process with ``SIGBUS``), a cast reads from short-lived
        mappings of the bytes instead of through a buffer: one copy less.
        """
        if self.stride is not None or not target.is_contiguous():
            target.copy_(self.read())
        elif target.device.type == "cpu" and target.dtype == self.dtype:
            self.file.read_into(writable_bytes(target), self.offset)  # one copy: file -> model
        elif map_casts and self.mappable():
            self._cast_from_mappings(target)
        else:
            self._read_in_chunks(target)

    def read_slice_into(self, target: torch.Tensor, starts, sizes) -> None:
        """Read only the block ``starts .. starts + sizes``: a row block of a contiguous tensor
        (a dim-0 shard) is one positioned read straight into `target`."""
        self.block(starts, sizes).read_into(target)

    def block(self, starts, sizes) -> FileTensor:
        """The block ``starts .. starts + sizes`` as a view of the same bytes."""
        strides = self.strides()
        first = sum(a * step for a, step in zip(starts, strides))
        return self.view(tuple(sizes), strides, first)

    def _fill(self, out: torch.Tensor) -> None:
        """Read this (possibly strided) view into the contiguous CPU tensor `out`, reading
        the bytes it covers, never a full-size temporary of a larger tensor."""
        stride = self.stride
        if stride is None:
            self.file.read_into(writable_bytes(out), self.offset)
            return
        if out.numel() == 0:
            return
        itemsize = self.dtype.itemsize
        if self._span() * itemsize <= CHUNK_BYTES:  # small: read what it spans, pick the elements
            buffer = torch.empty(self._span(), dtype=self.dtype)
            self.file.read_into(writable_bytes(buffer), self.offset)
            out.copy_(buffer.as_strided(self.shape, stride))
            return
        dim = max(range(len(self.shape)), key=lambda d: stride[d] if self.shape[d] > 1 else -1)
        step = stride[dim]
        rows = max(1, CHUNK_BYTES // (step * itemsize)) if self._row_bytes(dim, stride) < SEGMENT_BYTES else 1
        for start in range(0, self.shape[dim], rows):
            count = min(rows, self.shape[dim] - start)
            shape = list(self.shape)
            shape[dim] = count
            part = self.view(shape, stride, start * step)
            target = out.narrow(dim, start, count)
            if target.is_contiguous():
                part._fill(target)
            else:
                target.copy_(part.read())

    def _row_bytes(self, dim: int, strides: tuple[int, ...]) -> int:
        """Bytes one index of `dim` covers (a row, for dim 0)."""
        shape = [n for d, n in enumerate(self.shape) if d != dim]
        stride = [n for d, n in enumerate(strides) if d != dim]
        span = 0 if math.prod(shape) == 0 else 1 + sum((n - 1) * st for n, st in zip(shape, stride))
        return span * self.dtype.itemsize

    def _read_in_chunks(self, target: torch.Tensor) -> None:
        """Cast or move through bounded buffers (kept by the file for the next tensor) instead of
        a full temporary copy. A big tensor of a local file uses two half-size buffers: a reader
        thread fills the next chunk while this thread casts the last one into `target`."""
        flat = target.detach().view(-1)
        per_chunk = max(1, CHUNK_BYTES // self.dtype.itemsize)
        overlapped = flat.numel() > per_chunk and self.file.local and self.file.readers.workers > 1
        size = max(1, per_chunk // 2) if overlapped else min(per_chunk, flat.numel())
        with self.file.cast_buffers(self.dtype, size) as buffers:
            if overlapped:
                self._read_overlapped(flat, size, buffers)
                return
            for start in range(0, flat.numel(), size):
                chunk = buffers[0][: min(size, flat.numel() - start)]
                self.file.read_into(writable_bytes(chunk), self.offset + start * self.dtype.itemsize)
                flat[start : start + chunk.numel()].copy_(chunk)

    def _cast_from_mappings(self, target: torch.Tensor) -> None:
        """Cast chunk by chunk, each from a mapping of its bytes that is unmapped once cast, so the
        file's pages never stay in the process's resident memory."""
        flat = target.detach().view(-1)
        itemsize = self.dtype.itemsize
        per_chunk = max(1, CHUNK_BYTES // itemsize)
        for start in range(0, flat.numel(), per_chunk):
            count = min(per_chunk, flat.numel() - start)
            self.file.cast_mapped(flat[start : start + count], self.offset + start * itemsize, self.dtype)

    def _read_overlapped(self, flat: torch.Tensor, size: int, buffers) -> None:
        starts = range(0, flat.numel(), size)

        def fetch(index: int):
            start = starts[index]
            chunk = buffers[index % 2][: min(size, flat.numel() - start)]
            offset = self.offset + start * self.dtype.itemsize
            return chunk, self.file.readers.submit(self.file._read_range, writable_bytes(chunk), offset)

        pending = fetch(0)
        for index, start in enumerate(starts):
            chunk, reading = pending
            reading.result()  # the read's SourceError, if any
            if index + 1 < len(starts):
                pending = fetch(index + 1)  # into the other buffer, while this one is cast
            flat[start : start + chunk.numel()].copy_(chunk)
