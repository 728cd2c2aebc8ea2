"""The destination of an optimizer load: a tree of the state tensors to write, then installed.

Each parameter the optimizer holds gets, at its path, its existing state
tensors (written in place) and a new tensor for each key the source brings
that the optimizer lacks (made as the optimizer itself would: in the
parameter's shape, dtype and device; a scalar ``step`` as the source keeps
it). New tensors enter the optimizer only in `install`, after the plan's
checks passed and every write succeeded, so a strict failure leaves it as
it was (R6).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .._report import LoadReport
from ..sources import MemoryTensor, SourceTensor
from ._sources import fits
from ._tree import Held


class DestStates(NamedTuple):
    tree: dict  # flat: "param_path.state_key" -> tensor (one container: the walk's cost is per container)
    entries: dict[str, dict[str, torch.Tensor]]  # the same, flat by parameter path
    fresh: dict[str, list[str]]  # parameter path -> the keys of the tensors made here, not yet in the optimizer
    numbers: dict[str, type]  # "path.key" of state the optimizer keeps as a Python number
    empty: set[str]  # parameters the source holds with no state yet: they start fresh


def dest_states(
    optimizer: torch.optim.Optimizer, held: list[Held], states: dict[str, dict], aliases: dict[str, list[str]]
) -> DestStates:
    """The destination tree: for each held parameter, the state keys its source brings (or, for a
    parameter the source lacks, the keys the source holds for others) and those it already has.
    A tied parameter's state tensors are in the tree at each of its paths (`aliases`): the plan
    writes each once, and a source that gives its paths different state is a ``tied`` problem."""
    templates: dict[str, object] = {}
    for state in states.values():
        for key, leaf in state.items():
            templates.setdefault(key, leaf)
    tree: dict = {}
    entries: dict[str, dict[str, torch.Tensor]] = {}
    fresh: dict[str, list[str]] = {}
    numbers: dict[str, type] = {}
    empty: set[str] = set()
    by_id = {id(param): state for param, state in optimizer.state.items()}  # no tensor hashing per lookup
    groups = optimizer.param_groups
    for path, param, group in held:
        existing = by_id.get(id(param), {})
        source = states.get(path)
        if source is None:  # a tied parameter's state may come at another of its paths
            source = next((states[alias] for alias in aliases.get(path, ()) if alias in states), None)
        if source is not None and not source:  # held by the source with no state yet: starts fresh
            entries[path] = {}
            empty.add(path)
            continue
        entry: dict[str, torch.Tensor] = {}
        for key, value in existing.items():
            if isinstance(value, torch.Tensor):
                entry[key] = tree[f"{path}.{key}"] = value
            elif type(value) in (int, float):
                numbers[f"{path}.{key}"] = type(value)
        made = []
        for key, leaf in (source if source is not None else templates).items():
            if key not in entry and isinstance(leaf, SourceTensor):
                name = f"{path}.{key}"
                entry[key] = tree[name] = new_state_tensor(param, leaf, groups[group])
                made.append(key)
                if type(leaf) is MemoryTensor and leaf.number is not None:
                    numbers[name] = type(leaf.number)
        if made:
            fresh[path] = made
        entries[path] = entry
        for alias in aliases.get(path, ()):
            entries[alias] = entry
            tree.update((f"{alias}.{key}", tensor) for key, tensor in entry.items())
    return DestStates(tree, entries, fresh, numbers, empty)


def new_state_tensor(param: torch.Tensor, leaf: SourceTensor, group: dict) -> torch.Tensor:
    """A tensor for state the optimizer does not have yet, as torch's optimizers make it."""
    shape = tuple(leaf.shape)
    dtype = leaf.dtype if leaf.dtype is not None else torch.tensor(leaf.number).dtype  # type: ignore[attr-defined]
    if not shape:  # step: kept in the source's dtype, on the parameter's device only when capturable or fused
        on_param = group.get("capturable") or group.get("fused")
        return torch.empty((), dtype=dtype, device=param.device if on_param else "cpu")
    if not (dtype.is_floating_point or dtype.is_complex):
        return torch.empty(shape, dtype=dtype, device=param.device)
    if shape != tuple(param.shape) and fits(shape, tuple(param.shape)):  # a factored statistic
        return torch.empty(shape, dtype=param.dtype, device=param.device)
    return torch.empty_like(param, requires_grad=False)  # a DTensor parameter gives a DTensor of its layout


def install(
    optimizer, held: list[Held], dest: DestStates, report: LoadReport, left_out: frozenset[str], reset: set[str]
) -> None:
    """Put what the load wrote into the optimizer: a parameter whose state came whole gets it
    (new tensors added, existing ones were written in place); one with any key missing or
    mismatched (or in `reset`) starts fresh, as a new parameter would; one the load left out is
    untouched."""
    incomplete = {p.rsplit(".", 1)[0] for p in report.missing} | reset
    incomplete.update(m.path.rsplit(".", 1)[0] for m in report.mismatched)
    untouched = set(report.excluded) | set(report.skipped)
    state_of = optimizer.state
    for path, param, _ in held:
        if path in left_out:
            continue
        if path in dest.empty or path in incomplete:
            state_of.pop(param, None)
            continue
        made = dest.fresh.get(path)
        if not made:  # everything was written in place
            continue
        entry, state = dest.entries[path], state_of[param]
        for key in made:
            written = f"{path}.{key}"
            if written not in untouched:
                tensor = entry[key]
                state[key] = dest.numbers[written](tensor.item()) if written in dest.numbers else tensor
