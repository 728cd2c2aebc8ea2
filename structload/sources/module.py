"""A `torch.nn.Module` as a source: exactly what its ``state_dict()`` holds (rule R5)."""

from __future__ import annotations

import torch

from ._leaves import ABSENT, ExtraState
from .memory import EXTRA_STATE, tensor_leaf


def has_extra_state(module: torch.nn.Module) -> bool:
    """``True`` when the module's class defines its own ``get_extra_state``."""
    return type(module).get_extra_state is not torch.nn.Module.get_extra_state


def tree_from_module(module: torch.nn.Module) -> dict:
    """Parameters, persistent buffers, extra state and submodules, in `state_dict()` order.

    A parameter or buffer registered as ``None`` (``bias=False``) is `ABSENT`.

    >>> import torch
    >>> tree_from_module(torch.nn.Linear(2, 3, bias=False))
    {'weight': MemoryTensor(shape=(3, 2), dtype=torch.float32), 'bias': ABSENT}
    """
    tree: dict = {}
    for name, param in module._parameters.items():
        tree[name] = ABSENT if param is None else tensor_leaf(param)
    non_persistent = module._non_persistent_buffers_set
    for name, buffer in module._buffers.items():
        if name not in non_persistent:
            tree[name] = ABSENT if buffer is None else tensor_leaf(buffer)
    if has_extra_state(module):
        tree[EXTRA_STATE] = ExtraState(module.get_extra_state())
    for name, child in module._modules.items():
        if child is not None:
            tree[name] = tree_from_module(child)
    return tree
