"""The two sides of `align` as lists of `Leaf`: the destination's tensors (with its ties and
non-persistent buffers) and the source's (with its ties, less what ``exclude=`` names).

>>> import torch.nn as nn
>>> leaves, tied, buffers = destination(nn.Sequential(nn.Linear(2, 3)), Selection())
>>> [(leaf.path, leaf.shape, leaf.container, leaf.index, leaf.rel) for leaf in leaves]
[('0.weight', (3, 2), '', 0, 'weight'), ('0.bias', (3,), '', 0, 'bias')]
>>> import torch
>>> from structload.sources import to_source_tree
>>> leaves, tied = source(to_source_tree({"h.2.attn.c.w": torch.zeros(1), "ln.w": torch.zeros(1)}), None)
>>> [(leaf.path, leaf.container, leaf.index, leaf.rel) for leaf in leaves]
[('h.2.attn.c.w', 'h', 2, 'attn.c.w'), ('ln.w', None, None, 'ln.w')]
"""

from __future__ import annotations

import torch

from .._plan.dest import SlotKind, as_dest, dest_children, is_container
from .._plan.select import LeftOut, Selection
from ..sources import SourceTensor
from ..sources._leaves import MemoryTensor
from .match import Leaf


def source(tree, excluded: Selection | None) -> tuple[list[Leaf], set[str]]:
    """Source tensors (those `exclude=` names left out) and the paths of tied ones after the first
    (a module source's ``lm_head.weight`` that is its ``wte.weight``)."""
    leaves, tied = [], set()
    first: dict = {}  # a cheap key -> the first source tensor with it; `same_data` decides

    def take(path: str, leaf, block: tuple[str, int, str] | None, name: str) -> None:
        if excluded is not None and not excluded.accepts_source(path, _NOTHING_LEFT_OUT):
            return
        if type(leaf) is MemoryTensor and not leaf.tensor.is_meta:  # files store no tensor twice
            key = (leaf.tensor.data_ptr(), leaf.shape)
            seen = first.get(key)
            if seen is None:
                first[key] = leaf
            elif seen.same_data(leaf):
                tied.add(path)
        leaves.append(_leaf(path, leaf.shape, block, name))

    if type(tree) is dict:
        _walk_source(tree, "", None, take)
    elif isinstance(tree, SourceTensor):  # a bare tensor: one leaf at the root
        take("", tree, None, "")
    return leaves, tied


# `exclude=` names source paths too: a source entry it names is left out of the alignment, as a
# plain load leaves it out (`Selection.accepts_source`), whatever the destination holds
_NOTHING_LEFT_OUT = LeftOut(frozenset(), frozenset())


def destination(dst, selection: Selection) -> tuple[list[Leaf], dict[str, str], set[str]]:
    """Destination tensors (tied paths after the first left out: they follow it), the tied paths
    with the path they follow, and the paths of non-persistent buffers."""
    root = as_dest(dst)
    left_out = selection.left_out(dst)
    excluded = left_out.paths if left_out is not None else frozenset()
    leaves: list[Leaf] = []
    tied: dict[str, str] = {}
    buffers: set[str] = set()
    first_path: dict[int, str] = {}

    def take(child, child_path: str, block: tuple[str, int, str] | None, name: str) -> None:
        if child.kind is _IGNORED:
            buffers.add(child_path)
        elif child.kind in _TENSORS and child_path not in excluded:
            key = id(child.tensor)
            if key in first_path:  # tied: matched when any of its paths is
                tied[child_path] = first_path[key]
            else:
                first_path[key] = child_path
            leaf = _leaf(child_path, tuple(child.tensor.shape), block, name)
            leaf.matrix = len(leaf.shape) == 2 and not isinstance(child.owner, _Embedding)
            leaves.append(leaf)

    if root is not None and is_container(root):
        _walk_destination(root, "", None, take)
    return leaves, tied, buffers


# The walks are module functions, not closures that call themselves: a recursive closure is a
# reference cycle (it holds the cell that holds it), and every list it reaches (each leaf, the
# source tree) would outlive `align` until the collector ran; freed by reference counting on
# return, they leave the collector's first pass after `align` the result only to scan (it scanned
# 160,000 objects after a 20k align, a fifth of its time).


def _walk_source(node: dict, path: str, block: tuple[str, int, str] | None, take) -> None:
    """Call ``take(path, leaf, block, name)`` for each source tensor under `node`, in order."""
    for name, child in node.items():
        child_path = f"{path}.{name}" if path else name
        if type(child) is dict:
            _walk_source(child, child_path, _block_below(block, path, name), take)
        elif isinstance(child, SourceTensor):
            take(child_path, child, block, name)


def _walk_destination(node, path: str, block: tuple[str, int, str] | None, take) -> None:
    """Call ``take(slot, path, block, name)`` for each slot that is no container under `node`, in order."""
    for name, child in dest_children(node):
        child_path = f"{path}.{name}" if path else name
        if is_container(child):
            _walk_destination(child, child_path, _block_below(block, path, name), take)
        else:
            take(child, child_path, block, name)


_IGNORED, _TENSORS, _Embedding = SlotKind.IGNORED, (SlotKind.TENSOR, SlotKind.SHARDED), torch.nn.Embedding


# Both sides are walked module by module, and the numbered block a path is in (its container, its
# index and the path inside it: ``h.3.attn.weight`` is ``attn.weight`` in block 3 of ``h``) is worked
# out once per module on the way down, not parsed again from the path of every tensor.


def _block_below(block: tuple[str, int, str] | None, path: str, name: str) -> tuple[str, int, str] | None:
    """The block of the child `name` of `path`: the first number in a path opens it, and every name
    after it is part of the path inside it.

    >>> _block_below(None, "h", "3"), _block_below(("h", 3, ""), "h.3", "attn")
    (('h', 3, ''), ('h', 3, 'attn.'))
    """
    if block is not None:
        return block[0], block[1], f"{block[2]}{name}."
    return (path, int(name), "") if name.isdecimal() else None


def _leaf(path: str, shape: tuple[int, ...], block: tuple[str, int, str] | None, name: str) -> Leaf:
    if block is None:
        return Leaf(path, shape, None, None, path)
    return Leaf(path, shape, block[0], block[1], block[2] + name)


def flattened(leaf: Leaf) -> Leaf:
    """The leaf seen by its whole path, as at the top level."""
    flat = Leaf(leaf.path, leaf.shape, None, None, leaf.path)
    flat.matrix = leaf.matrix
    return flat
