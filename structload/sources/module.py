"""A `torch.nn.Module` as a source: exactly what its ``state_dict()`` holds (rule R5)."""

from __future__ import annotations

import torch

from .._dest import TENSOR_SLOTS, Slot, SlotKind, state_tree
from ._leaves import ABSENT, ExtraState
from .memory import tensor_leaf


def tree_from_module(module: torch.nn.Module) -> dict:
    """Parameters, persistent buffers, extra state and submodules, in `state_dict()` order.

    A parameter or buffer registered as ``None`` (``bias=False``) is `ABSENT`.

    >>> import torch
    >>> tree_from_module(torch.nn.Linear(2, 3, bias=False))
    {'weight': MemoryTensor(shape=(3, 2), dtype=torch.float32), 'bias': ABSENT}
    """
    return state_tree(module, _source_leaf)


def _source_leaf(slot: Slot):
    if slot.kind in TENSOR_SLOTS:
        return tensor_leaf(slot.tensor)
    if slot.kind == SlotKind.ABSENT:
        return ABSENT
    if slot.kind == SlotKind.EXTRA:
        return ExtraState(slot.owner.get_extra_state())
    raise AssertionError(slot.kind)
