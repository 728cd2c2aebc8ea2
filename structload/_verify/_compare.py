"""Comparing what two modules computed: outputs leaf by leaf, inputs up to the order of their elements.

Outputs are tensors, tuples, lists, dicts, dataclasses or transformers' ``ModelOutput`` (an ordered
dict); `tensor_leaves` flattens any of them into ``(key, tensor)`` pairs, skipping ``None`` and
anything that is not a tensor (a cache object, a flag).

>>> import torch
>>> tensor_leaves((torch.ones(2), None, {"b": torch.zeros(1)}))
[('0', tensor([1., 1.])), ('2.b', tensor([0.]))]
>>> error = leaf_error(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.5]))
>>> error.max_abs, round(error.max_rel, 6), error.agree
(0.5, 0.2, False)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import NamedTuple

import torch


def tensor_leaves(value, prefix: str = "") -> list[tuple[str, torch.Tensor]]:
    """Every tensor inside `value` with its key path (``"0"``, ``"logits"``, ``"1.2"``), in order."""
    if isinstance(value, torch.Tensor):
        return [(prefix, value)]
    if isinstance(value, Mapping):  # dicts and transformers' ModelOutput
        items = list(value.items())
    elif isinstance(value, (tuple, list)):
        items = list(enumerate(value))
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        items = [(f.name, getattr(value, f.name)) for f in dataclasses.fields(value)]
    else:
        return []  # None, numbers, caches: nothing to compare
    leaves = []
    for key, child in items:
        leaves += tensor_leaves(child, f"{prefix}.{key}" if prefix else str(key))
    return leaves


class LeafError(NamedTuple):
    """How far one output tensor is from the reference's: the largest absolute and relative errors
    (relative to the reference's magnitude, where it is not zero), both shapes, and whether the two
    agree within the tolerances (``torch.isclose`` with NaN equal to NaN)."""

    key: str
    max_abs: float
    max_rel: float
    shapes: tuple[tuple[int, ...], tuple[int, ...]]
    agree: bool


def leaf_error(mine: torch.Tensor, theirs: torch.Tensor, rtol: float = 1e-4, atol: float = 1e-5, key="") -> LeafError:
    """Compare one tensor with the reference's; shapes that differ only by leading ones are equal."""
    shapes = (tuple(mine.shape), tuple(theirs.shape))
    a, b = _squeezed(mine), _squeezed(theirs)
    if a.shape != b.shape:
        return LeafError(key, float("inf"), float("inf"), shapes, False)
    if a.numel() == 0:
        return LeafError(key, 0.0, 0.0, shapes, True)
    a, b = _comparable(a), _comparable(b.to(a.device))
    difference = (a - b).abs()
    both_nan = a.isnan() & b.isnan()
    difference = difference.masked_fill(both_nan, 0.0)
    close = difference <= atol + rtol * b.abs()
    magnitude = b.abs()
    relative = torch.where(magnitude > 0, difference / magnitude, torch.zeros_like(difference))
    return LeafError(key, _largest(difference), _largest(relative), shapes, bool(close.all()))


def compare_outputs(mine, theirs, rtol: float, atol: float) -> LeafError:
    """The worst leaf of two outputs. Leaves pair by key when both sides have the same keys, else in
    order (a module returning ``(output, None)`` against one returning ``output``)."""
    left, right = tensor_leaves(mine), tensor_leaves(theirs)
    if not left or not right:
        return LeafError("", 0.0, 0.0, ((), ()), True) if not left and not right else _missing(left, right)
    if [k for k, _ in left] != [k for k, _ in right]:
        left, right = left[: len(right)], right[: len(left)]
    errors = [leaf_error(a, b, rtol, atol, key) for (key, a), (_, b) in zip(left, right)]
    failing = [e for e in errors if not e.agree]
    return max(failing or errors, key=lambda e: (e.max_abs, e.max_rel))


def inputs_agreement(mine: list[torch.Tensor], theirs: list[torch.Tensor], rtol: float, atol: float) -> str:
    """``"agree"``, ``"reordered"`` (the same values in another order: a flatten order) or ``"differ"``.

    The first tensor of each side is the module's main input and must agree; every other input of
    the reference must find an agreeing one among the module's inputs when one of the same shape
    exists (modules of two implementations take different extra inputs: masks, positions).
    """
    if not mine or not theirs:
        return "agree" if not mine and not theirs else "differ"
    first = _agreement(mine[0], theirs[0], rtol, atol)
    if first == "differ":
        return "differ"
    for other in theirs[1:]:
        same_shape = [t for t in mine[1:] if _squeezed(t).shape == _squeezed(other).shape]
        if same_shape and not any(leaf_error(t, other, rtol, atol).agree for t in same_shape):
            return "differ"
    return first


def outputs_reordered(mine, theirs, rtol: float, atol: float) -> bool:
    """Whether the main outputs hold the same values in another order along their last dimension
    (rows of a weight permuted: fused parts in another order, a rotary layout)."""
    left, right = tensor_leaves(mine), tensor_leaves(theirs)
    if not left or not right:
        return False
    return _agreement(left[0][1], right[0][1], rtol, atol, along_last=True) == "reordered"


def _agreement(mine: torch.Tensor, theirs: torch.Tensor, rtol: float, atol: float, along_last=False) -> str:
    if leaf_error(mine, theirs, rtol, atol).agree:
        return "agree"
    a, b = _squeezed(mine), _squeezed(theirs)
    if a.shape != b.shape or a.dim() == 0 or not (a.is_floating_point() or a.is_complex()):
        return "differ"
    # per sample (a flatten order) or per row of the last dimension (a permutation of output features)
    rows = (lambda t: t.reshape(-1, t.shape[-1])) if along_last else (lambda t: t.reshape(t.shape[0], -1))
    sorted_a, sorted_b = rows(a).sort(dim=-1).values, rows(b).sort(dim=-1).values
    return "reordered" if leaf_error(sorted_a, sorted_b, rtol, atol).agree else "differ"


def _missing(left, right) -> LeafError:
    """One side returned tensors and the other none."""
    shape = tuple((left or right)[0][1].shape)
    shapes = (shape, ()) if left else ((), shape)
    return LeafError((left or right)[0][0], float("inf"), float("inf"), shapes, False)


def _squeezed(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor without leading dimensions of size one (``(1, T, D)`` broadcasts as ``(T, D)``)."""
    while tensor.dim() > 1 and tensor.shape[0] == 1:
        tensor = tensor[0]
    return tensor


def _comparable(tensor: torch.Tensor) -> torch.Tensor:
    if tensor.is_complex():
        return torch.view_as_real(tensor).double()
    return tensor.double() if tensor.dtype == torch.float64 else tensor.float()


def _largest(values: torch.Tensor) -> float:
    return float(values.max()) if values.numel() else 0.0
