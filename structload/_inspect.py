"""`inspect` and `diff`: what a source holds, and how two sources differ, without loading."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ._render.text import dtype_text, option_text, plural, shape_text
from .sources import SourceTensor, iter_leaves, to_source_tree


@dataclass(frozen=True)
class TensorInfo:
    """Shape, dtype and size in bytes of one source tensor."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    nbytes: int

    def to_dict(self) -> dict:
        return {"shape": list(self.shape), "dtype": dtype_text(self.dtype), "nbytes": self.nbytes}


def info(leaf: SourceTensor) -> TensorInfo:
    dtype = leaf.dtype if leaf.dtype is not None else leaf.read().dtype
    return TensorInfo(tuple(leaf.shape), dtype, leaf.nbytes if leaf.dtype is not None else dtype.itemsize)


def inspect(src) -> dict[str, TensorInfo]:
    """Dotted path -> `TensorInfo` for every tensor of `src`, reading no tensor data from files.

    Examples:
        >>> import torch, structload as sl
        >>> sl.inspect(torch.nn.Linear(3, 2))
        {'weight': TensorInfo(shape=(2, 3), dtype=torch.float32, nbytes=24), 'bias': TensorInfo(shape=(2,), dtype=torch.float32, nbytes=8)}
    """
    return {path: info(leaf) for path, leaf in iter_leaves(to_source_tree(src)) if isinstance(leaf, SourceTensor)}


@dataclass(frozen=True)
class Difference:
    """One path whose tensors differ in shape or dtype between `a` and `b`."""

    path: str
    a: object
    b: object

    def to_dict(self) -> dict:
        return {"path": self.path, "a": _text(self.a), "b": _text(self.b)}


def _text(value) -> str:
    return dtype_text(value) if isinstance(value, torch.dtype) else shape_text(value)


@dataclass
class Diff:
    """How two sources differ: paths only in one, shapes, dtypes and (with ``values=True``) contents."""

    only_in_a: list[str] = field(default_factory=list)
    only_in_b: list[str] = field(default_factory=list)
    shape: list[Difference] = field(default_factory=list)
    dtype: list[Difference] = field(default_factory=list)
    values: list[str] = field(default_factory=list)
    same: int = 0
    values_compared: bool = False

    @property
    def ok(self) -> bool:
        """``True`` when nothing differs."""
        return not (self.only_in_a or self.only_in_b or self.shape or self.dtype or self.values)

    def to_dict(self) -> dict:
        return {
            "only_in_a": self.only_in_a,
            "only_in_b": self.only_in_b,
            "shape": [d.to_dict() for d in self.shape],
            "dtype": [d.to_dict() for d in self.dtype],
            "values": self.values,
            "same": self.same,
            "values_compared": self.values_compared,
            "ok": self.ok,
        }

    def __str__(self) -> str:
        if self.ok:
            return f"no differences: {self.compared()}"
        lines = [f"{path}: only in a" for path in self.only_in_a]
        lines += [f"{path}: only in b" for path in self.only_in_b]
        lines += [f"{d.path}: shape {_text(d.a)} in a, {_text(d.b)} in b" for d in self.shape]
        lines += [f"{d.path}: dtype {_text(d.a)} in a, {_text(d.b)} in b" for d in self.dtype]
        lines += [f"{path}: values differ" for path in self.values]
        return "\n".join(lines)

    @property
    def in_both(self) -> int:
        """How many paths both sources hold: the tensors compared, whether or not they differ."""
        return self.same + len(self.shape) + len(self.dtype) + len(self.values)

    def compared(self, syntax: str = "python") -> str:
        """What was compared: ``12 tensors compared by path, shape, dtype and values``; the option
        that compares values is written in `syntax` (``"cli"``: ``--values``)."""
        what = "path, shape, dtype and values" if self.values_compared else "path, shape and dtype"
        text = f"{plural(self.in_both, 'tensor')} compared by {what}"
        return (
            text
            if self.values_compared
            else text + f" (values not compared; pass {option_text('values', True, syntax)})"
        )

    def __rich__(self):
        from ._render.report import diff_table

        return diff_table(self)


def diff(a, b, *, values: bool = False) -> Diff:
    """Compare two sources path by path.

    Examples:
        >>> import torch, structload as sl
        >>> result = sl.diff({"w": torch.ones(2), "b": torch.ones(1)}, {"w": torch.zeros(2)}, values=True)
        >>> result.only_in_a, result.values, result.ok
        (['b'], ['w'], False)
    """
    left = _tensors(a)
    right = _tensors(b)
    result = Diff(values_compared=values)
    for path, leaf in left.items():
        other = right.get(path)
        if other is None:
            result.only_in_a.append(path)
        elif tuple(leaf.shape) != tuple(other.shape):
            result.shape.append(Difference(path, tuple(leaf.shape), tuple(other.shape)))
        elif info(leaf).dtype != info(other).dtype:
            result.dtype.append(Difference(path, info(leaf).dtype, info(other).dtype))
        elif values and not _equal(leaf.read(), other.read()):
            result.values.append(path)
        else:
            result.same += 1
    result.only_in_b = [path for path in right if path not in left]
    return result


def _tensors(src) -> dict[str, SourceTensor]:
    return {path: leaf for path, leaf in iter_leaves(to_source_tree(src)) if isinstance(leaf, SourceTensor)}


def _equal(x: torch.Tensor, y: torch.Tensor) -> bool:
    """Bitwise-equal values, NaNs in the same places counting as equal."""
    if torch.equal(x, y):
        return True
    return x.is_floating_point() and bool(
        torch.equal(x.isnan(), y.isnan()) and torch.equal(x.nan_to_num(0), y.nan_to_num(0))
    )
