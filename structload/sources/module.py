"""A `torch.nn.Module` as a source: exactly what its ``state_dict()`` holds (rule R5)."""

from __future__ import annotations

import torch

from .._plan.dest import TENSOR_SLOTS, Slot, SlotKind, saves_its_own_way, state_tree
from ._leaves import ABSENT, BadLeaf, ExtraState
from .memory import tensor_leaf, tree_from_object


def tree_from_module(module: torch.nn.Module) -> dict:
    """Parameters, persistent buffers, extra state and submodules, in `state_dict()` order.

    A parameter or buffer registered as ``None`` (``bias=False``) is `ABSENT`. A
    module that writes its state its own way (a quantized ``Linear`` packs its
    weights) gives what its own ``state_dict()`` holds, so its entries are
    judged like those of a checkpoint.

    >>> import torch
    >>> tree_from_module(torch.nn.Linear(2, 3, bias=False))
    {'weight': MemoryTensor(shape=(3, 2), dtype=torch.float32), 'bias': ABSENT}
    """
    if saves_its_own_way(module):
        return own_state(module)
    return state_tree(module, _source_leaf, own_state)


def own_state(module: torch.nn.Module) -> dict:
    """The source tree of what ``module.state_dict()`` holds."""
    tree = tree_from_object(dict(module.state_dict(keep_vars=True)))
    return tree if type(tree) is dict else {}


def _source_leaf(slot: Slot):
    if slot.kind in TENSOR_SLOTS:
        return tensor_leaf(slot.tensor)
    if slot.kind == SlotKind.LAZY:
        return BadLeaf("an uninitialized parameter of a lazy module: run a forward pass to initialize it first")
    if slot.kind == SlotKind.ABSENT:
        return ABSENT
    if slot.kind == SlotKind.EXTRA:
        return ExtraState(slot.owner.get_extra_state())
    raise AssertionError(slot.kind)
