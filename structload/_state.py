"""`state`: the nested tree that `load` reads from a model."""

from __future__ import annotations

import torch

from ._plan.dest import TENSOR_SLOTS, Slot, SlotKind, as_dest, is_container, state_tree
from .sources.nesting import insert


def state(model, *, trainable: bool = False):
    """The nested state tree of `model`: tensors (sharing storage), ``False`` for absent ones.

    Exactly what ``state_dict()`` holds (R5), nested by module, plus
    ``_extra_state`` where a module defines it. Tensors are detached views of
    the model's own storage, never copies. With ``trainable=True``, everything
    that does not require grad (buffers, frozen parameters, absent ones, extra
    state) is ``None``, so loading the tree back touches trainable parameters
    only.

    Examples:
        >>> import torch, structload as sl
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2, bias=False), torch.nn.BatchNorm1d(2))
        >>> tree = sl.state(net)
        >>> list(tree["0"]), tree["0"]["bias"], list(tree["1"])
        (['weight', 'bias'], False, ['weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked'])
        >>> sl.state(net, trainable=True)["1"]["running_mean"] is None
        True
        >>> copy = torch.nn.Sequential(torch.nn.Linear(2, 2, bias=False), torch.nn.BatchNorm1d(2))
        >>> sl.load(copy, tree).ok and torch.equal(copy[0].weight, net[0].weight)
        True
    """
    root = as_dest(model)
    if root is None:
        raise TypeError(f"structload.state: {type(model).__name__} is not a module, tensor or pytree of tensors")
    if is_container(root):
        return state_tree(root, lambda slot: _slot_state(slot, trainable), lambda module: _own_state(module, trainable))
    return _slot_state(root, trainable)


def _own_state(module: torch.nn.Module, trainable: bool) -> dict:
    """A module that writes its state its own way (quantized, packed): its ``state_dict()``, nested."""
    tree: dict = {}
    for key, value in module.state_dict(keep_vars=True).items():
        requires_grad = isinstance(value, torch.Tensor) and value.requires_grad
        insert(tree, key, None if trainable and not requires_grad else value)
    return tree


def _slot_state(slot: Slot, trainable: bool):
    if slot.kind in TENSOR_SLOTS:
        tensor: torch.Tensor = slot.tensor
        if trainable and not tensor.requires_grad:
            return None
        return tensor.detach()
    if slot.kind == SlotKind.LAZY:  # uninitialized: no values yet, as in state_dict()
        return None if trainable else slot.tensor
    if slot.kind == SlotKind.ABSENT:
        return None if trainable else False
    if slot.kind == SlotKind.EXTRA:
        return None if trainable else slot.owner.get_extra_state()
    raise AssertionError(slot.kind)
