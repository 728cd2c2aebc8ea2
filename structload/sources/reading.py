"""How one load reads: a `ReadSession` made from the plan's list of reads.

The plan decides what is read; this module decides how, so the code that
writes never asks what kind of file a tensor lives in. Given the reads in the
order they will be made (`Read`), a session

- checks every file they read directly before the first write (it is still
  the file that was opened, unchanged; `structload.sources._io.identity`), any
  other file before its first read, and all of them again after the last
  write (`check_after`);
- prefetches the byte ranges of remote files ahead of the writes, coalesced
  into few requests (`structload.sources._io.remote`), and counts the bytes
  fetched for the progress bar (`progress`);
- hands each read to its leaf: straight into the destination's memory, a
  cast through bounded chunks, or with ``load(mmap=True)`` a view of the
  file's mmap (`mmap_view`) or a cast from short-lived mmaps of its bytes.

>>> import torch
>>> from structload.sources import MemoryTensor
>>> leaf, target = MemoryTensor(torch.ones(2)), torch.zeros(2)
>>> with ReadSession([Read(leaf)]) as session:
...     session.read_into(leaf, target)
>>> target.tolist(), session.fetching
([1.0, 1.0], False)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch

from ._io.file_tensor import FileTensor, file_tensor
from ._io.identity import checking
from ._io.local import PARALLEL_BYTES
from ._io.remote import RemoteFile
from ._leaves import MemoryTensor, SourceTensor

__all__ = ["PARALLEL_BYTES", "Read", "ReadSession", "mmap_dtype", "reads_from_file"]


class Read(NamedTuple):
    """One read of a load: `leaf` into a destination tensor; only the `block` ``(starts, sizes)``
    of it for a sharded destination; with `view`, the destination becomes a view of the file's
    mmap instead (``load(mmap=True)``)."""

    leaf: SourceTensor
    block: tuple | None = None
    view: bool = False


def lazy(leaf) -> bool:
    """Whether a session has anything to do for a read of `leaf`: a tensor not in memory.

    >>> lazy(MemoryTensor(torch.zeros(1))), lazy(None)
    (False, False)
    """
    return type(leaf) is not MemoryTensor and isinstance(leaf, SourceTensor)


def mmap_dtype(leaf: SourceTensor) -> torch.dtype | None:
    """The dtype a ``meta`` destination tensor must be materialized in to become a view of the
    mmap of the file `leaf` is stored in (its dtype in the file); ``None`` when it cannot be one
    (not a local file's tensor, strided, or misaligned)."""
    file = file_tensor(leaf)
    return file.dtype if file is not None and file.mmap_able() else None


def reads_from_file(leaf: SourceTensor) -> bool:
    """Whether reading `leaf` fills its destination from a file piece by piece (so a read that
    stops midway can leave it partly written); any other leaf is read whole, then copied."""
    return file_tensor(leaf) is not None


class ReadSession:
    """One load's reads, from the first write to the last (a context manager; see the module)."""

    def __init__(self, reads: Sequence[Read], mmap: bool = False):
        self.mmap = mmap  # ``load(mmap=True)``: casts of local files read from short-lived mmaps
        self.files = _files_to_check(reads)
        self.prefetch = _remote_ranges(reads)
        self.checked: set = set()  # every file checked during the session, for `check_after`
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> ReadSession:
        with contextlib.ExitStack() as stack:
            self.checked = stack.enter_context(checking(self.files))
            for file, ranges in self.prefetch.items():
                stack.enter_context(file.prefetching(ranges))
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc) -> None:
        self._stack.__exit__(*exc)

    @property
    def fetching(self) -> bool:
        """Whether the reads fetch remote files (the progress bar says "fetching")."""
        return bool(self.prefetch)

    def progress(self, advance: Callable[[int], None]) -> Callable[[int], None]:
        """What to call with each write's bytes: `advance` itself, or for remote loads a function
        that advances by the bytes received since the last call (from here on: not the headers)."""
        if not self.prefetch:
            return advance
        files = list(self.prefetch)
        seen = sum(f.fetched for f in files)

        def advance_fetched(_written: int) -> None:
            nonlocal seen
            fetched = sum(f.fetched for f in files)
            advance(fetched - seen)
            seen = fetched

        return advance_fetched

    def read_into(self, leaf: SourceTensor, target: torch.Tensor) -> None:
        """Write `leaf`'s values into `target` (cast and moved as needed)."""
        if self.mmap and (file := file_tensor(leaf)) is not None:
            file.read_into(target, mmap=True)
        else:
            leaf.read_into(target)

    def read_slice_into(self, leaf: SourceTensor, target: torch.Tensor, starts, sizes) -> None:
        """Write the block ``starts .. starts + sizes`` of `leaf` into `target` (a rank's shard)."""
        leaf.read_slice_into(target, starts, sizes)

    def read(self, leaf: SourceTensor) -> torch.Tensor:
        """`leaf`'s values as a tensor (extra state holding tensors)."""
        return leaf.read()

    def mmap_view(self, leaf: SourceTensor) -> torch.Tensor:
        """A tensor viewing `leaf`'s bytes in the copy-on-write mmap of its file (no copy);
        the plan chose it by `mmap_dtype`."""
        file = file_tensor(leaf)
        assert file is not None, "mmap_dtype said it is a file tensor"
        return file.mmap_view()

    def check_after(self) -> None:
        """After the last write: a `SourceError` if a file read is no longer the file opened, unchanged."""
        for file in self.checked:
            if isinstance(file, RemoteFile) and file.conditional_reads:  # every read required the ETag seen at open
                continue
            file.check_unchanged()


def _files_to_check(reads: Sequence[Read]) -> list:
    """The files the reads read directly, to check before the first write (a remote file whose
    reads each require the ETag seen at open needs no check); files read through converters'
    computations are checked before their first read."""
    files: dict[int, object] = {}
    for read in reads:
        leaf = read.leaf.resolve() if hasattr(read.leaf, "resolve") else read.leaf  # a shard's tensor
        file = getattr(leaf, "file", None) or getattr(leaf, "checkpoint", None)  # a file's, a DCP directory's
        if hasattr(file, "check_unchanged") and not (isinstance(file, RemoteFile) and file.conditional_reads):
            files.setdefault(id(file), file)
    return list(files.values())


def _remote_ranges(reads: Sequence[Read]) -> dict[RemoteFile, list[tuple[int, int]]]:
    """Per remote file, the byte ranges the reads will read, in order (for prefetching)."""
    ranges: dict[RemoteFile, list[tuple[int, int]]] = {}
    for read in reads:
        base: FileTensor | None = file_tensor(read.leaf)
        file = base.file if base is not None else None
        if read.view or base is None or not isinstance(file, RemoteFile):
            continue
        if read.block is not None:
            base = base.block(*read.block)
        if base.stride is None:
            ranges.setdefault(file, []).append((base.offset, base.nbytes))
    return ranges
