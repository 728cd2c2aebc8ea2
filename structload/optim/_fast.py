"""The fast lane of `load_optimizer`: resuming the same model, checked once per parameter.

The common case is a resume of the model the state was saved from: an
in-memory source (the tree of `optimizer_state`, or a ``state_dict()`` whose
indices have names) holds state for exactly the parameters the optimizer
holds, at their own paths, with the keys of the state they already have (or,
for a fresh optimizer, the tensors the optimizer would make itself: the
parameter's shape, dtype and device); nothing is renamed, converted, aligned,
selected, tied or sharded. Then nothing is left to decide per state entry,
and the general path's objects per entry (source leaves, destination slots,
plan entries) cost more than the writes: here each parameter is checked once,
existing state tensors are written by one ``torch._foreach_copy_``, new ones
made by one ``torch._foreach_clone``, and the report is the one the general
path would give. Anything else returns ``None`` and takes the general path
(a property test, tests/test_optimizer_fast.py, holds the two to agreeing).
"""

from __future__ import annotations

import operator
from typing import NamedTuple

import torch

from .._render.progress import wants_progress
from ._sources import memory_states
from ._tree import Held

_CPU = torch.device("cpu")


class _Pairs(NamedTuple):
    loaded: list[str]  # "param_path.state_key", in the order the general path lists them
    targets: list[torch.Tensor]  # existing state tensors, written in place...
    values: list[torch.Tensor]  # ... from these source tensors
    fresh: list[tuple[torch.Tensor, list[str]]]  # a parameter without state, the keys it gets...
    new_values: list[torch.Tensor]  # ... copies of these source tensors, in that order
    on_cpu: bool  # every state tensor written in place is in host memory (`_write`)


def fast_load(
    optimizer: torch.optim.Optimizer, held: list[Held], src, source_model, model, progress
) -> list[str] | None:
    """Load `src` into `optimizer` if it is the common case; the paths loaded, or ``None`` (nothing
    written) when it is not."""
    source = memory_states(src, source_model, model)
    if source is None or source.problems or len(source.states) != len(held):
        return None
    pairs = _pairs(optimizer, held, source.states)
    if pairs is None or _shows_progress(progress, pairs):
        return None
    with torch.no_grad():
        _write(pairs)
        made = iter(_clone(pairs.new_values))
    state_of = optimizer.state
    for param, keys in pairs.fresh:  # installed only after every write succeeded, as the general path does
        state = state_of[param]
        for key in keys:
            state[key] = next(made)
    return pairs.loaded


def _pairs(optimizer, held: list[Held], states: dict[str, dict]) -> _Pairs | None:
    """Each held parameter's state paired with its source state, or ``None`` at the first thing
    the general path would decide otherwise than a plain copy."""
    parameter = torch.nn.Parameter
    pairs = _Pairs([], [], [], [], [], True)
    loaded, targets, values = pairs.loaded, pairs.targets, pairs.values
    by_id = {id(param): state for param, state in optimizer.state.items()}  # no tensor hashing per lookup
    groups = optimizer.param_groups
    for path, param, group in held:
        source = states.get(path)
        if not source or type(param) is not parameter:  # none, or {} (starts fresh); a DTensor
            return None
        existing = by_id.get(id(param))
        if existing:  # written in place: the same keys (each checked below, all together)
            if existing.keys() != source.keys():
                return None
            targets += existing.values()
            values += map(source.__getitem__, existing)  # C loops: no frame per parameter
            loaded += map(f"{path}.".__add__, existing)
        elif not _fresh_pairs(path, param, source, groups[group], pairs):
            return None
    if not _same_kinds(targets, values):
        return None
    return pairs._replace(on_cpu=all(map(_IS_CPU, targets)))  # a source elsewhere: copy_ moves it, as in general


_KIND, _IS_CPU = operator.attrgetter("dtype", "shape"), operator.attrgetter("is_cpu")


def _same_kinds(targets: list, values: list) -> bool:
    """Whether each value is a plain tensor of its target's dtype and shape (and each target a plain
    tensor): checked list against list, by C loops, the cost that counts for 60k state entries."""
    plain = {torch.Tensor}
    if not (set(map(type, targets)) <= plain and set(map(type, values)) <= plain):
        return False
    return list(map(_KIND, targets)) == list(map(_KIND, values))


def _fresh_pairs(path: str, param: torch.Tensor, source: dict, group: dict, pairs: _Pairs) -> bool:
    """A parameter without state: its source tensors, if each is what `_dest.new_state_tensor`
    would make (a scalar ``step`` on the CPU unless capturable or fused; else the parameter's
    shape, dtype and device, contiguous as it is)."""
    scalars_on = param.device if group.get("capturable") or group.get("fused") else _CPU
    shape, dtype, device, on_cpu = param.shape, param.dtype, param.device, param.is_cpu
    if not param.is_contiguous():
        return False
    for key, value in source.items():  # device checks without making a device in the common case
        if type(value) is not torch.Tensor or type(key) is not str:
            return False
        value_shape = value.shape
        if not value_shape:
            if not (value.is_cpu if scalars_on is _CPU else value.device == scalars_on):
                return False
        elif value_shape != shape or value.dtype is not dtype or not value.is_contiguous():
            return False
        if value_shape and not (value.is_cpu if on_cpu else value.device == device):
            return False
        pairs.new_values.append(value)
        pairs.loaded.append(f"{path}.{key}")
    pairs.fresh.append((param, list(source)))
    return True


def _shows_progress(progress, pairs: _Pairs) -> bool:
    """Whether the general path would draw a progress bar for these writes (the fast lane draws none)."""
    if not progress and progress is not None:
        return False
    nbytes = sum(t.nbytes for t in pairs.targets) + sum(t.nbytes for t in pairs.new_values)
    return wants_progress(progress, nbytes)


def _write(pairs: _Pairs) -> None:
    """The in-place writes: one call when every state tensor is in host memory, where
    ``_foreach_copy_`` copies one tensor after the other like ``copy_`` (on a GPU it may copy a
    batch at once, which would change what a source sharing memory with them gives: one by one)."""
    if not pairs.targets:
        return
    if pairs.on_cpu and hasattr(torch, "_foreach_copy_"):
        torch._foreach_copy_(pairs.targets, pairs.values)
        return
    for target, value in zip(pairs.targets, pairs.values):
        target.copy_(value)


def _clone(values: list[torch.Tensor]) -> list[torch.Tensor]:
    """New state tensors, copies of `values` (contiguous, so in the parameter's layout)."""
    if not values:
        return []
    if hasattr(torch, "_foreach_clone"):
        return list(torch._foreach_clone(values))
    return [value.clone() for value in values]
