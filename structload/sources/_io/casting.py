"""Reading a file tensor into a destination of another dtype (or device): casting reads.

A cast cannot land in the destination's memory straight from the file, and a
full-size temporary would double the memory a load needs. So a cast goes
through bounded chunks: through two buffers the file keeps (`cast_in_chunks`;
a reader thread fills the next chunk while this one casts the last), or, with
``load(mmap=True)``, from short-lived mmaps of each chunk (`cast_from_mmap`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .byte_source import writable_bytes
from .local import LocalFile

if TYPE_CHECKING:
    from .file_tensor import FileTensor

#: Casting loads go through a buffer of at most this many bytes.
CHUNK_BYTES = 16 << 20


def cast_in_chunks(tensor: FileTensor, target: torch.Tensor) -> None:
    """Cast or move through bounded buffers (kept by the file for the next tensor) instead of
    a full temporary copy. A big tensor of a local file uses two half-size buffers: a reader
    thread fills the next chunk while this thread casts the last one into `target`."""
    flat = target.detach().view(-1)
    file, itemsize = tensor.file, tensor.dtype.itemsize
    per_chunk = max(1, CHUNK_BYTES // itemsize)
    overlapped = flat.numel() > per_chunk and isinstance(file, LocalFile) and file.readers.workers > 1
    size = max(1, per_chunk // 2) if overlapped else min(per_chunk, flat.numel())
    with file.buffers.lend(tensor.dtype, size) as buffers:
        if overlapped:
            _cast_overlapped(tensor, flat, size, buffers)
            return
        for start in range(0, flat.numel(), size):
            chunk = buffers[0][: min(size, flat.numel() - start)]
            file.read_into(writable_bytes(chunk), tensor.offset + start * itemsize)
            flat[start : start + chunk.numel()].copy_(chunk)


def _cast_overlapped(tensor: FileTensor, flat: torch.Tensor, size: int, buffers) -> None:
    file = tensor.file
    assert isinstance(file, LocalFile)  # cast_in_chunks overlaps local reads only
    starts = range(0, flat.numel(), size)

    def fetch(index: int):
        start = starts[index]
        chunk = buffers[index % 2][: min(size, flat.numel() - start)]
        offset = tensor.offset + start * tensor.dtype.itemsize
        return chunk, file.readers.submit(file.read_range, writable_bytes(chunk), offset)

    pending = fetch(0)
    for index, start in enumerate(starts):
        chunk, reading = pending
        reading.result()  # the read's SourceError, if any
        if index + 1 < len(starts):
            pending = fetch(index + 1)  # into the other buffer, while this one is cast
        flat[start : start + chunk.numel()].copy_(chunk)


def cast_from_mmap(tensor: FileTensor, target: torch.Tensor) -> None:
    """Cast chunk by chunk, each from an mmap of its bytes that is unmapped once cast, so the
    file's pages never stay in the process's resident memory."""
    file = tensor.file
    assert isinstance(file, LocalFile)  # FileTensor.mmap_able checked it
    flat = target.detach().view(-1)
    itemsize = tensor.dtype.itemsize
    per_chunk = max(1, CHUNK_BYTES // itemsize)
    for start in range(0, flat.numel(), per_chunk):
        count = min(per_chunk, flat.numel() - start)
        file.cast_from_mmap(flat[start : start + count], tensor.offset + start * itemsize, tensor.dtype)
