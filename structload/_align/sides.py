"""The two sides of `align` as lists of `Leaf`: the destination's tensors (with its ties and
non-persistent buffers) and the source's (with its ties, less what ``exclude=`` names).

>>> import torch.nn as nn
>>> leaves, tied, buffers = destination(nn.Sequential(nn.Linear(2, 3)), Selection())
>>> [(leaf.path, leaf.shape, leaf.container, leaf.index, leaf.rel) for leaf in leaves]
[('0.weight', (3, 2), '', 0, 'weight'), ('0.bias', (3,), '', 0, 'bias')]
"""

from __future__ import annotations

import re

import torch

from .._plan.dest import SlotKind, as_dest, dest_children, is_container
from .._plan.select import LeftOut, Selection
from ..sources import SourceTensor, iter_leaves
from ..sources._leaves import MemoryTensor
from .match import Leaf


def source(tree, excluded: Selection | None) -> tuple[list[Leaf], set[str]]:
    """Source tensors (those `exclude=` names left out) and the paths of tied ones after the first
    (a module source's ``lm_head.weight`` that is its ``wte.weight``)."""
    leaves, tied = [], set()
    first: dict = {}  # a cheap key -> the first source tensor with it; `same_data` decides
    for path, leaf in iter_leaves(tree):
        if not isinstance(leaf, SourceTensor):
            continue
        if excluded is not None and not excluded.accepts_source(path, _NOTHING_LEFT_OUT):
            continue
        if type(leaf) is MemoryTensor and not leaf.tensor.is_meta:  # files store no tensor twice
            seen = first.setdefault((leaf.tensor.data_ptr(), leaf.shape), leaf)
            if seen is not leaf and seen.same_data(leaf):
                tied.add(path)
        leaves.append(leaf_at(path, leaf.shape))
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

    def visit(node, path):
        for name, child in dest_children(node):
            child_path = f"{path}.{name}" if path else name
            if is_container(child):
                visit(child, child_path)
            elif child.kind == SlotKind.IGNORED:
                buffers.add(child_path)
            elif child.kind in (SlotKind.TENSOR, SlotKind.SHARDED) and child_path not in excluded:
                key = id(child.tensor)
                if key in first_path:  # tied: matched when any of its paths is
                    tied[child_path] = first_path[key]
                first_path.setdefault(key, child_path)
                leaf = leaf_at(child_path, tuple(child.tensor.shape))
                leaf.matrix = len(leaf.shape) == 2 and not isinstance(child.owner, torch.nn.Embedding)
                leaves.append(leaf)

    if root is not None and is_container(root):
        visit(root, "")
    return leaves, tied, buffers


def leaf_at(path: str, shape: tuple[int, ...]) -> Leaf:
    """The leaf at `path`, split at the first number before the tensor's own name (one regex: this
    runs once per tensor of both sides)."""
    found = _FIRST_NUMBER.match(path)
    if found is None:
        return Leaf(path, shape, None, None, path)
    return Leaf(path, shape, found[1][:-1], int(found[2]), found[3])


_FIRST_NUMBER = re.compile(r"((?:[^.]*\.)*?)(\d+)\.(.+)")


def flattened(leaf: Leaf) -> Leaf:
    """The leaf seen by its whole path, as at the top level."""
    flat = Leaf(leaf.path, leaf.shape, None, None, leaf.path)
    flat.matrix = leaf.matrix
    return flat
