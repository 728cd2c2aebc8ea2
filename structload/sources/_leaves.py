"""The leaves of a source tree.

Every source, in memory or on disk, becomes the same shape: nested ``dict``s
(``str`` name -> child) whose leaves are one of

- a `SourceTensor`: knows its shape and dtype without reading data, and reads
  its data only when `read()` is called;
- `SKIP` (a ``None`` in the source: leave the destination untouched, rule R2);
- `ABSENT` (a ``False`` in the source, or a parameter registered as ``None``
  in a source module: rule R3);
- an `ExtraState` (the value of an ``_extra_state`` entry, passed as it is to
  ``set_extra_state``);
- a `BadLeaf` (something that cannot be loaded; the walk turns it into a
  problem at its path instead of failing early).
"""

from __future__ import annotations

import math

import torch


class _Marker:
    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


#: A ``None`` in the source: leave the destination as it is (rule R2).
SKIP = _Marker("SKIP")
#: A ``False`` in the source or a parameter registered as ``None``: absent (rule R3).
ABSENT = _Marker("ABSENT")


class SourceTensor:
    """A tensor of a source, read lazily.

    Subclasses set `shape` and `dtype` (``None`` for a Python number, which
    takes the destination's dtype) and implement `read()`.
    """

    __slots__ = ("dtype", "shape")
    shape: tuple[int, ...]
    dtype: torch.dtype | None

    @property
    def nbytes(self) -> int:
        itemsize = self.dtype.itemsize if self.dtype is not None else 8
        return math.prod(self.shape) * itemsize

    def read(self) -> torch.Tensor:
        raise NotImplementedError

    def read_into(self, target: torch.Tensor) -> None:
        """Write the values into `target` (cast and moved as needed); file sources avoid a temporary."""
        target.copy_(self.read())

    def read_slice_into(self, target: torch.Tensor, starts, sizes) -> None:
        """Write the block ``[starts[d] : starts[d] + sizes[d]]`` of every dim into `target`.

        This default reads the whole tensor first; memory and file sources read
        only the block (what a sharded destination's rank loads).
        """
        target.copy_(self.read()[block(starts, sizes)])

    def same_data(self, other: SourceTensor) -> bool:
        """``True`` only when both surely hold the same values without reading them."""
        return self is other

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={tuple(self.shape)}, dtype={self.dtype})"


def block(starts, sizes) -> tuple[slice, ...]:
    """The index of a block of a tensor: ``(slice(0, 2), slice(4, 8))``."""
    return tuple(slice(a, a + n) for a, n in zip(starts, sizes))


class MemoryTensor(SourceTensor):
    """A tensor already in memory (from a tensor, array, module or number)."""

    __slots__ = ("number", "tensor")

    def __init__(self, tensor: torch.Tensor, *, number: int | float | None = None):
        self.tensor = tensor
        self.shape = tuple(tensor.shape)
        self.dtype = None if number is not None else tensor.dtype
        self.number = number  # a Python number of the source, which takes the destination's dtype

    def read(self) -> torch.Tensor:
        return self.tensor

    def read_slice_into(self, target: torch.Tensor, starts, sizes) -> None:
        target.copy_(self.tensor[block(starts, sizes)])  # a view: only the block is copied

    def same_data(self, other: SourceTensor) -> bool:
        if self is other:
            return True
        if not isinstance(other, MemoryTensor):
            return False
        a, b = self.tensor, other.tensor
        return (
            a.data_ptr() == b.data_ptr()
            and a.dtype == b.dtype
            and a.shape == b.shape
            and a.stride() == b.stride()
            and a.device == b.device
        )


class ComputedTensor(SourceTensor):
    """A tensor computed from other source tensors when it is read.

    `reader` produces the values; `writer`, when given, writes them straight
    into a destination tensor (a concatenation filling its slices).
    """

    __slots__ = ("reader", "writer")

    def __init__(self, shape, dtype, reader, writer=None):
        self.shape, self.dtype, self.reader, self.writer = tuple(shape), dtype, reader, writer

    def read(self) -> torch.Tensor:
        return self.reader()

    def read_into(self, target: torch.Tensor) -> None:
        if self.writer is not None:
            self.writer(target)
        else:
            target.copy_(self.read())


class ConvertedTensor(ComputedTensor):
    """A tensor converters made, with who made it (`made_by`) and from which source paths."""

    __slots__ = ("base", "made_by", "sources")

    def __init__(self, leaf: SourceTensor, made_by: str, sources: tuple[str, ...]):
        super().__init__(leaf.shape, leaf.dtype, leaf.read, leaf.read_into)
        self.made_by = made_by
        self.sources = sources
        self.base = leaf  # reads of a block go through it: file views read only the block

    def read_slice_into(self, target: torch.Tensor, starts, sizes) -> None:
        self.base.read_slice_into(target, starts, sizes)

    def __repr__(self) -> str:
        return f"ConvertedTensor(shape={self.shape}, dtype={self.dtype}, {self.made_by})"


class ExtraState:
    """The value of a module's ``_extra_state`` entry, handed to ``set_extra_state``."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __repr__(self) -> str:
        return f"ExtraState({type(self.value).__name__})"


class BadLeaf:
    """Something in the source that cannot be loaded, with the reason why.

    `kind` is the `Problem` kind it becomes (``"type"`` or ``"source"``).
    """

    __slots__ = ("kind", "reason")

    def __init__(self, reason: str, kind: str = "type"):
        self.reason = reason
        self.kind = kind

    def __repr__(self) -> str:
        return f"BadLeaf({self.reason!r})"


class Value(BadLeaf):
    """A value of the source that is not a tensor (a string, a pickled config object): it cannot be
    loaded, and `structload.open` gives it back as it is."""

    __slots__ = ("value",)

    def __init__(self, value, reason: str):
        super().__init__(reason)
        self.value = value


def iter_leaves(tree, path: str = ""):
    """Yield ``(dotted path, leaf)`` for every leaf under `tree`, in order.

    >>> [p for p, _ in iter_leaves({"a": {"w": SKIP, "b": ABSENT}, "c": SKIP})]
    ['a.w', 'a.b', 'c']
    """
    if type(tree) is dict:
        for name, child in tree.items():
            yield from iter_leaves(child, f"{path}.{name}" if path else name)
    else:
        yield path, tree
