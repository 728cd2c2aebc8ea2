"""The destination as the walk sees it: containers and slots.

A *container* is a ``nn.Module`` or a pytree node; its children come from
`dest_children`. A *slot* is one place state can go:

- ``TENSOR``: a parameter, a persistent buffer, or a tensor leaf of a pytree;
- ``ABSENT``: a parameter or buffer registered as ``None`` (``bias=False``),
  or a ``None`` / ``False`` leaf of a pytree (rule R3);
- ``EXTRA``: a module's ``_extra_state`` (``get_extra_state`` /
  ``set_extra_state`` overridden; rule R5);
- ``IGNORED``: a non-persistent buffer, which is not state (rule R5) but is
  named in messages when a source provides it.
"""

from __future__ import annotations

import torch

from collections.abc import Callable

from ._pytree import children

TENSOR, ABSENT, EXTRA, IGNORED = "tensor", "absent", "extra", "ignored"

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

    __slots__ = ("kind", "tensor", "owner", "attr", "name")

    def __init__(self, kind: str, tensor=None, owner=None, attr=None, name=None):
        self.kind = kind
        self.tensor = tensor
        self.owner = owner
        self.attr = attr
        self.name = name

    @property
    def is_param(self) -> bool:
        return self.attr == "_parameters"

    def __repr__(self) -> str:
        return f"Slot({self.kind}, {self.name})"


def is_container(node) -> bool:
    return not isinstance(node, Slot)


def dest_children(node) -> list[tuple[str, object]]:
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
        return Slot(TENSOR, value)
    if value is None or value is False:
        return Slot(ABSENT)
    if isinstance(value, torch.nn.Module) or children(value) is not None:
        return value
    return None


def _module_children(module: torch.nn.Module) -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    for name, param in module._parameters.items():
        kind = ABSENT if param is None else TENSOR
        out.append((name, Slot(kind, param, module, "_parameters", name)))
    non_persistent = module._non_persistent_buffers_set
    for name, buffer in module._buffers.items():
        if name in non_persistent:
            kind = IGNORED
        else:
            kind = ABSENT if buffer is None else TENSOR
        out.append((name, Slot(kind, buffer, module, "_buffers", name)))
    if has_extra_state(module):
        out.append((EXTRA_STATE, Slot(EXTRA, None, module, None, EXTRA_STATE)))
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
    {'weight': 'tensor', 'bias': 'absent'}
    """
    tree = {}
    for name, child in dest_children(node):
        if is_container(child):
            tree[name] = state_tree(child, leaf)
        elif child.kind != IGNORED:
            tree[name] = leaf(child)
    return tree


def dest_name(dst) -> str:
    """How messages name the destination: its class name (``GPT``, ``dict``)."""
    return type(dst).__name__
