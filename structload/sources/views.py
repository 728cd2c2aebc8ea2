"""Lazy views of source tensors: transpose, narrow, select, reshape.

A view of a file tensor stays a `FileTensor` (same bytes, another offset,
shape and stride), so it reads only what it covers; a view of anything else
is computed from the whole tensor when read. Converters build on these.
"""

from __future__ import annotations

from ._io.file_tensor import file_tensor
from ._leaves import ComputedTensor, SourceTensor


def transpose(leaf: SourceTensor, a: int, b: int) -> SourceTensor:
    """`leaf` with dims `a` and `b` swapped."""
    shape = list(leaf.shape)
    shape[a], shape[b] = shape[b], shape[a]
    file = file_tensor(leaf)
    if file is not None:
        stride = list(file.strides())
        stride[a], stride[b] = stride[b], stride[a]
        return file.view(shape, stride)
    return ComputedTensor(shape, leaf.dtype, lambda: leaf.read().transpose(a, b))


def narrow(leaf: SourceTensor, dim: int, start: int, length: int) -> SourceTensor:
    """Indices ``start .. start + length`` of `dim`."""
    shape = list(leaf.shape)
    shape[dim] = length
    file = file_tensor(leaf)
    if file is not None:
        stride = file.strides()
        return file.view(shape, stride, start * stride[dim])
    return ComputedTensor(shape, leaf.dtype, lambda: leaf.read().narrow(dim, start, length))


def select(leaf: SourceTensor, dim: int, index: int) -> SourceTensor:
    """Index `index` of `dim`, which disappears."""
    shape = list(leaf.shape)
    del shape[dim]
    file = file_tensor(leaf)
    if file is not None:
        stride = list(file.strides())
        step = stride.pop(dim)
        return file.view(shape, stride, index * step)
    return ComputedTensor(shape, leaf.dtype, lambda: leaf.read().select(dim, index))


def reshape(leaf: SourceTensor, shape: tuple[int, ...]) -> SourceTensor:
    """The same elements in another shape (a view when the file tensor is contiguous)."""
    file = file_tensor(leaf)
    if file is not None and file.stride is None:
        return file.view(shape, None)
    return ComputedTensor(shape, leaf.dtype, lambda: leaf.read().reshape(shape))
