"""`FileTensor`: a tensor stored in a file as a byte range, read straight into tensor memory.

Every file format ends up here: a tensor is `dtype` elements at byte `offset`
of a `ByteSource` (a local or a remote file). Reading fills the destination's
own storage when dtype and layout allow (one copy, from the file into the
model), reads a strided view by the rows it covers, and casts through bounded
chunks (`structload.sources._io.casting`). With ``load(mmap=True)`` a tensor can
instead be a view of the file's mmap (`FileTensor.mmap_view`).
"""

from __future__ import annotations

import math

import torch

from .._leaves import SourceTensor
from . import casting as _casting
from .byte_source import ByteSource, writable_bytes
from .casting import cast_from_mmap, cast_in_chunks
from .local import LocalFile

#: Strided reads fetch rows of at least this many bytes one by one (exact), smaller rows in blocks.
SEGMENT_BYTES = 64 << 10


def file_tensor(leaf: SourceTensor) -> FileTensor | None:
    """The file tensor a leaf reads, if it is one (a sharded checkpoint's opens its shard)."""
    base = leaf.resolve() if hasattr(leaf, "resolve") else leaf
    return base if isinstance(base, FileTensor) else None


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

    def __init__(self, file: ByteSource, offset: int, shape, dtype: torch.dtype, stride=None):
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

    def mmap_able(self) -> bool:
        """Whether this tensor can be a view of the file's mmap: a local file's, contiguous and
        aligned to its dtype."""
        return isinstance(self.file, LocalFile) and self.stride is None and self.offset % self.dtype.itemsize == 0

    def mmap_view(self) -> torch.Tensor:
        """A tensor viewing these bytes of the copy-on-write mmap of the file (no copy)."""
        assert isinstance(self.file, LocalFile)  # mmap_able checked it
        view = torch.empty(0, dtype=self.dtype)
        offset = self.offset // self.dtype.itemsize
        return view.set_(self.file.mmap_storage(), offset, self.shape, contiguous_strides(self.shape))

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

    def read_into(self, target: torch.Tensor, mmap: bool = False) -> None:
        """Write the values into `target` with as few copies and as little memory as possible.

        With `mmap` (``load(mmap=True)``: the caller accepts that a file cut short
        while mapped ends the process with ``SIGBUS``), a cast reads from short-lived
        mmaps of the bytes instead of through a buffer: one copy less.
        """
        if self.stride is not None or not target.is_contiguous():
            target.copy_(self.read())
        elif target.device.type == "cpu" and target.dtype == self.dtype:
            self.file.read_into(writable_bytes(target), self.offset)  # one copy: file -> model
        elif mmap and self.mmap_able():
            cast_from_mmap(self, target)
        else:
            cast_in_chunks(self, target)

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
        if self._span() * itemsize <= _casting.CHUNK_BYTES:  # small: read what it spans, pick the elements
            buffer = torch.empty(self._span(), dtype=self.dtype)
            self.file.read_into(writable_bytes(buffer), self.offset)
            out.copy_(buffer.as_strided(self.shape, stride))
            return
        dim = max(range(len(self.shape)), key=lambda d: stride[d] if self.shape[d] > 1 else -1)
        step = stride[dim]
        rows = max(1, _casting.CHUNK_BYTES // (step * itemsize)) if self._row_bytes(dim, stride) < SEGMENT_BYTES else 1
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
