"""The destination as the walk sees it: containers and slots.

A *container* is a ``nn.Module`` or a pytree node; its children come from
`dest_children`. A *slot* is one place state can go, of a `SlotKind`.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import Any

import torch
from torch.nn import Parameter
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import UninitializedTensorMixin  # type: ignore[attr-defined]

from .._distributed.dtensors import dtensor_class, is_dtensor
from .._pytree import children


class SlotKind(StrEnum):
    """What a destination slot is: the row of the rules table (`_rules.RULES`)."""

    TENSOR = "tensor"  # a parameter, a persistent buffer, or a tensor leaf of a pytree
    SHARDED = "sharded"  # the same, held as a DTensor: each rank writes its local shard
    LAZY = "lazy"  # an uninitialized parameter or buffer of a lazy module: takes the source's shape
    ABSENT = "absent"  # a parameter or buffer registered as None (bias=False), or a None / False leaf (R3)
    EXTRA = "extra"  # a module's _extra_state (get_extra_state / set_extra_state overridden; R5)
    IGNORED = "ignored"  # a non-persistent buffer: not state (R5), named in messages when a source gives it


#: Slots that hold a tensor of the destination, with a shape.
TENSOR_SLOTS = (SlotKind.TENSOR, SlotKind.SHARDED)
#: Slots a load fills with a tensor (shaped or not yet).
FILLED_SLOTS = (SlotKind.TENSOR, SlotKind.SHARDED, SlotKind.LAZY)

#: The name a module's extra state has in `state_dict()`.
EXTRA_STATE = "_extra_state"


_MODULE_GET_EXTRA_STATE = torch.nn.Module.get_extra_state


def has_extra_state(module: torch.nn.Module) -> bool:
    """``True`` when the module's class defines its own ``get_extra_state``."""
    return type(module).get_extra_state is not _MODULE_GET_EXTRA_STATE


class Slot:
    """One place in the destination: what kind it is, and where it lives.

    `owner` and `attr` locate it in a module (`attr` is ``"_parameters"`` or
    ``"_buffers"``) so a meta tensor can be replaced by a materialized one;
    they are ``None`` for pytree leaves, whose tensors are only updated in place.
    `additive` marks a bias: a tensor named ``bias`` beside a ``weight`` it
    offsets (1-d, or the weight's own shape), the only kind rule R3 may zero.
    """

    __slots__ = ("additive", "attr", "kind", "name", "owner", "tensor")

    def __init__(self, kind: SlotKind, tensor=None, owner=None, attr=None, name=None):
        self.kind = kind
        self.tensor = tensor
        self.owner = owner
        self.attr = attr
        self.name = name
        self.additive = False

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
    kids = dict(out)
    if isinstance(kids.get("bias"), Slot) and isinstance(kids.get("weight"), Slot):
        kids["bias"].additive = offsets(kids["bias"].tensor, kids["weight"].tensor)
    # an attribute-like name only: a flat key such as ``fc.bias.exp_avg`` (optimizer state) holds no bias
    by_role = [(n, slot) for n, slot in out if n != "bias" and "bias" in n and "." not in n and type(slot) is Slot]
    _mark_biases_by_role(by_role, kids)
    return out


def _mark_biases_by_role(candidates: list[tuple[str, Slot]], siblings: dict) -> None:
    """R3 by role: a tensor whose name is its weight's with ``weight`` turned into ``bias``
    (``nn.MultiheadAttention``'s ``in_proj_bias`` beside ``in_proj_weight``, an RNN's ``bias_ih_l0``
    beside ``weight_ih_l0``) is an additive offset when it is 1-d, one value per row of that weight.
    MultiheadAttention's ``bias_k`` has no ``weight_k``: not a bias."""
    for name, slot in candidates:
        weight = siblings.get(name.replace("bias", "weight"))
        if type(weight) is Slot and weight.kind in FILLED_SLOTS:
            slot.additive = offsets_rows(slot.tensor, weight.tensor)


def offsets_rows(bias, weight) -> bool:
    """Whether `bias` adds one value to each output row of `weight` (1-d, ``len(bias) == len(weight)``).

    >>> import torch
    >>> offsets_rows(torch.zeros(24), torch.zeros(24, 8)), offsets_rows(torch.zeros(1, 1, 8), torch.zeros(8, 8))
    (True, False)
    """
    if isinstance(bias, UninitializedTensorMixin) or isinstance(weight, UninitializedTensorMixin):
        return isinstance(bias, torch.Tensor)
    if not isinstance(bias, torch.Tensor) or not isinstance(weight, torch.Tensor) or bias.dim() != 1:
        return False
    return weight.dim() >= 1 and bias.shape[0] == weight.shape[0]


def offsets(bias, weight) -> bool:
    """Whether `bias` is an additive offset of `weight` (R3): both tensors, and `bias` 1-d
    (a Linear's, a Conv's, a norm's) or of the weight's own shape. A causal mask registered
    as ``bias`` (GPT-2) has no weight beside it, or another shape.

    >>> import torch
    >>> offsets(torch.zeros(3), torch.zeros(3, 2)), offsets(torch.zeros(1, 1, 4, 4), None)
    (True, False)
    """
    if not isinstance(bias, torch.Tensor) or not isinstance(weight, torch.Tensor):
        return False
    if isinstance(bias, UninitializedTensorMixin):  # a lazy Linear's or Conv's: 1-d once it has a shape
        return True
    return bias.dim() <= 1 or tuple(bias.shape) == tuple(weight.shape)


def as_dest(value):
    """A pytree value as the walk sees it: a slot, a container, or ``None`` when it is not state."""
    if isinstance(value, torch.Tensor):
        return tensor_slot(value)
    if value is None or value is False:
        return Slot(SlotKind.ABSENT)
    if isinstance(value, torch.nn.Module) or children(value) is not None:
        return value
    return None


#: For `_module_children`: an enum member looked up through its class costs 50 ns, once per tensor.
_TENSOR, _IGNORED = SlotKind.TENSOR, SlotKind.IGNORED


def _module_children(module: torch.nn.Module) -> list[tuple[str, Any]]:
    # This runs for every module of a model: the common cases come first, without calls.
    out: list[tuple[str, Any]] = []
    bias = None
    # biases under another name (`_mark_biases_by_role`): rare, so one substring test per parameter
    by_role: list[tuple[str, Slot]] = []
    for name, param in module._parameters.items():
        kind = _TENSOR if type(param) is Parameter else _kind(param)
        slot = Slot(kind, param, module, "_parameters", name)
        out.append((name, slot))
        if name == "bias":
            bias = slot
        elif "bias" in name:
            by_role.append((name, slot))
    if module._buffers:
        non_persistent = module._non_persistent_buffers_set
        for name, buffer in module._buffers.items():
            if name in non_persistent:
                kind = _IGNORED
            else:
                kind = _TENSOR if type(buffer) is torch.Tensor else _kind(buffer)
            slot = Slot(kind, buffer, module, "_buffers", name)
            out.append((name, slot))
            if name == "bias":
                bias = slot
    if bias is not None:
        weight = module._parameters.get("weight", module._buffers.get("weight"))
        tensor = bias.tensor
        if type(tensor) is Parameter and tensor.dim() == 1 and isinstance(weight, torch.Tensor):
            bias.additive = True  # a Linear's, a Conv's, a norm's: `offsets`, its common case
        else:
            bias.additive = offsets(tensor, weight)
    if by_role:
        _mark_biases_by_role(by_role, dict(out))
    if type(module).get_extra_state is not _MODULE_GET_EXTRA_STATE:  # `has_extra_state`
        out.append((EXTRA_STATE, Slot(SlotKind.EXTRA, None, module, None, EXTRA_STATE)))
    for name, child in module._modules.items():
        if child is not None:
            out.append((name, child))
    return out


def _kind(tensor) -> SlotKind:
    if tensor is None:
        return SlotKind.ABSENT
    if isinstance(tensor, UninitializedTensorMixin):
        return SlotKind.LAZY
    dtensor = dtensor_class()
    return SlotKind.SHARDED if dtensor is not None and isinstance(tensor, dtensor) else SlotKind.TENSOR


def state_tree(node, leaf: Callable[[Slot], object], own_state: Callable[[torch.nn.Module], Any]) -> dict:
    """The nested dict of ``leaf(slot)`` for every slot that is state (rule R5) under a container.

    The one walk of what a module's state is: `structload.state` and module
    sources both build on it, with their own `leaf`. A module that writes its
    state its own way (`saves_its_own_way`: quantized modules pack their
    weights) contributes ``own_state(module)`` instead, built from its own
    ``state_dict()``.

    >>> import torch
    >>> state_tree(torch.nn.Linear(2, 3, bias=False), lambda slot: slot.kind, None)
    {'weight': <SlotKind.TENSOR: 'tensor'>, 'bias': <SlotKind.ABSENT: 'absent'>}
    """
    tree: dict[str, Any] = {}
    for name, child in dest_children(node):
        if is_container(child):
            custom = isinstance(child, torch.nn.Module) and own_state is not None and saves_its_own_way(child)
            tree[name] = own_state(child) if custom else state_tree(child, leaf, own_state)
        elif child.kind != SlotKind.IGNORED:
            tree[name] = leaf(child)
    return tree


# --- modules that customise how their state is saved (how they load it: `_load_hooks`) -------------


_OVERRIDES: dict[tuple[type, str], bool] = {}


def overrides(cls: type, method: str) -> bool:
    """Whether `cls` defines its own `method` (cached: asked once per module of every load)."""
    key = (cls, method)
    if key not in _OVERRIDES:
        _OVERRIDES[key] = getattr(cls, method) is not getattr(torch.nn.Module, method)
    return _OVERRIDES[key]


def saves_its_own_way(module: torch.nn.Module) -> bool:
    """Whether ``state_dict()`` of this module holds more than its parameters and persistent
    buffers (an overridden ``_save_to_state_dict``, state_dict hooks); lazy modules excepted."""
    if overrides(type(module), "_save_to_state_dict") and not isinstance(module, LazyModuleMixin):
        return True
    return bool(module._state_dict_hooks) or bool(module._state_dict_pre_hooks)


def dest_name(dst) -> str:
    """How messages name the destination: its class name (``GPT``, ``dict``)."""
    return type(dst).__name__
