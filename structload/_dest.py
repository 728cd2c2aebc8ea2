"""The destination as the walk sees it: containers and slots.

A *container* is a ``nn.Module`` or a pytree node; its children come from
`dest_children`. A *slot* is one place state can go, of a `SlotKind`.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import Any

import torch

from ._distributed import dtensor_class, is_dtensor
from ._pytree import children


class SlotKind(StrEnum):
    """What a destination slot is: the row of the rules table (`_rules.RULES`)."""

    TENSOR = "tensor"  # a parameter, a persistent buffer, or a tensor leaf of a pytree
    SHARDED = "sharded"  # the same, held as a DTensor: each rank writes its local shard
    ABSENT = "absent"  # a parameter or buffer registered as None (bias=False), or a None / False leaf (R3)
    EXTRA = "extra"  # a module's _extra_state (get_extra_state / set_extra_state overridden; R5)
    IGNORED = "ignored"  # a non-persistent buffer: not state (R5), named in messages when a source gives it


#: Slots that hold a tensor of the destination.
TENSOR_SLOTS = (SlotKind.TENSOR, SlotKind.SHARDED)

#: The name a module's extra state has in `state_dict()`.
EXTRA_STATE = "_extra_state"


def has_extra_state(module: torch.nn.Module) -> bool:
    """``True`` when the module's class defines its own ``get_extra_state``."""
    return type(module).get_extra_state is not torch.nn.Module.get_extra_state


class Slot:
    """One place in the destination: what kind it is, and where it lives.

    `owner` and `attr` locate it in a module (`attr` is ``"_parameters"`` or
    ``"_buffers"``) so a meta tensor can be replaced by a materialized one;
    they are ``None`` for pytree leaves, whose tensors are only updated in place.
    """

    __slots__ = ("attr", "kind", "name", "owner", "tensor")

    def __init__(self, kind: SlotKind, tensor=None, owner=None, attr=None, name=None):
        self.kind = kind
        self.tensor = tensor
        self.owner = owner
        self.attr = attr
        self.name = name

    def __repr__(self) -> str:
        return f"Slot({self.kind}, {self.name})"


def tensor_slot(tensor: torch.Tensor, owner=None, attr=None, name=None) -> Slot:
    """The slot of a destination tensor: `SHARDED` for a DTensor, else `TENSOR`."""
    kind = SlotKind.SHARDED if is_dtensor(tensor) else SlotKind.TENSOR
    return Slot(kind, tensor, owner, attr, name)


def is_container(node) -> bool:
    return not isinstance(node, Slot)


def dest_children(node) -> list[tuple[str, Any]]:
    """The named children (slots and containers) of a destination container.

    Modules list parameters, buffers, extra state and submodules in
    ``state_dict()`` order.

    >>> import torch
    >>> dest_children(torch.nn.Linear(2, 3, bias=False))
    [('weight', Slot(tensor, weight)), ('bias', Slot(absent, bias))]
    """
    if isinstance(node, torch.nn.Module):
        return _module_children(node)
    out = []
    for name, child in children(node) or ():
        converted = as_dest(child)
        if converted is not None:
            out.append((name, converted))
    return out


def as_dest(value):
    """A pytree value as the walk sees it: a slot, a container, or ``None`` when it is not state."""
    if isinstance(value, torch.Tensor):
        return tensor_slot(value)
    if value is None or value is False:
        return Slot(SlotKind.ABSENT)
    if isinstance(value, torch.nn.Module) or children(value) is not None:
        return value
    return None


def _module_children(module: torch.nn.Module) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    dtensor = dtensor_class()  # looked up once per module: this runs for every module of a model
    for name, param in module._parameters.items():
        if param is None:
            kind = SlotKind.ABSENT
        else:
            kind = SlotKind.SHARDED if dtensor is not None and isinstance(param, dtensor) else SlotKind.TENSOR
        out.append((name, Slot(kind, param, module, "_parameters", name)))
    non_persistent = module._non_persistent_buffers_set
    for name, buffer in module._buffers.items():
        if name in non_persistent:
            kind = SlotKind.IGNORED
        elif buffer is None:
            kind = SlotKind.ABSENT
        else:
            kind = SlotKind.SHARDED if dtensor is not None and isinstance(buffer, dtensor) else SlotKind.TENSOR
        out.append((name, Slot(kind, buffer, module, "_buffers", name)))
    if has_extra_state(module):
        out.append((EXTRA_STATE, Slot(SlotKind.EXTRA, None, module, None, EXTRA_STATE)))
    for name, child in module._modules.items():
        if child is not None:
            out.append((name, child))
    return out


def state_tree(node, leaf: Callable[[Slot], object]) -> dict:
    """The nested dict of ``leaf(slot)`` for every slot that is state (rule R5) under a container.

    The one walk of what a module's state is: `structload.state` and module
    sources both build on it, with their own `leaf`.

    >>> import torch
    >>> state_tree(torch.nn.Linear(2, 3, bias=False), lambda slot: slot.kind)
    {'weight': <SlotKind.TENSOR: 'tensor'>, 'bias': <SlotKind.ABSENT: 'absent'>}
    """
    tree: dict[str, Any] = {}
    for name, child in dest_children(node):
        if is_container(child):
            tree[name] = state_tree(child, leaf)
        elif child.kind != SlotKind.IGNORED:
            tree[name] = leaf(child)
    return tree


def dest_name(dst) -> str:
    """How messages name the destination: its class name (``GPT``, ``dict``)."""
    return type(dst).__name__
