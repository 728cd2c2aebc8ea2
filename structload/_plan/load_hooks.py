"""Which modules load their state their own way, and which of their hooks structload knows.

`_walk` asks `customises_loading` of every module (a quick test), then
`loads_its_own_way` for the reason it cannot follow one; `_customised` runs
the rest of such code against a recording view, except `KNOWN_LOAD_HOOKS`.

>>> import torch
>>> customises_loading(torch.nn.Linear(2, 2)), loads_its_own_way(torch.nn.Linear(2, 2))
(False, None)
"""

from __future__ import annotations

import torch
from torch.nn.modules.batchnorm import _NormBase

from .dest import overrides, saves_its_own_way

#: Load hooks whose effect structload reproduces, or that cannot change a load made in place:
#: lazy modules (their parameters take the source's shape: `SlotKind.LAZY`); weight_norm's
#: conversion of old ``weight_g`` / ``weight_v`` names (reported with the rename, see
#: `_hints`); spectral_norm's upgrade of checkpoints written before version 1; FSDP2's
#: post-hook, which re-syncs a parameter that ``assign=True`` replaced (structload writes
#: each rank's local shard in place, so the parameter and its storage stay the same).
KNOWN_LOAD_HOOKS = frozenset(
    {
        "torch.nn.modules.lazy.LazyModuleMixin._lazy_load_hook",
        "torch.nn.utils.parametrizations.weight_norm.<locals>._weight_norm_compat_hook",
        "torch.nn.utils.spectral_norm.SpectralNormLoadStateDictPreHook",
        "torch.distributed.fsdp._fully_shard._fsdp_param.FSDPParam.__init__.<locals>.<lambda>",
    }
)


def hook_name(wrapped) -> str:
    """``module.qualname`` of a load hook (of the callable a hook object wraps)."""
    hook = getattr(wrapped, "hook", wrapped)
    if not hasattr(hook, "__qualname__"):  # a callable object
        hook = type(hook)
    return f"{hook.__module__}.{hook.__qualname__}"


_LOADS_ITS_OWN_WAY: dict[type, bool] = {}


def customises_loading(module: torch.nn.Module) -> bool:
    """A quick test (one per module of every load): might `loads_its_own_way` have a reason?"""
    cls = type(module)
    own = _LOADS_ITS_OWN_WAY.get(cls)
    if own is None:
        own = _LOADS_ITS_OWN_WAY[cls] = overrides(cls, "_load_from_state_dict")
    return own or bool(module._load_state_dict_pre_hooks) or bool(module._load_state_dict_post_hooks)


def loads_its_own_way(module: torch.nn.Module) -> str | None:
    """Why this module's own loading code is beyond what structload runs (`_customised`), or
    ``None``: packed quantized state (``torch.ao`` modules, observers; a module that saves and
    loads its state its own way), whose values no recording of names can follow (API.md §8)."""
    cls = type(module)
    if not overrides(cls, "_load_from_state_dict"):
        return None
    packed = cls.__module__.startswith("torch.ao.") or saves_its_own_way(module)
    if packed and not isinstance(module, _NormBase):
        owner = next(c for c in cls.__mro__ if "_load_from_state_dict" in vars(c))
        return f"it loads its state through its own _load_from_state_dict ({owner.__module__}.{owner.__qualname__})"
    return None
