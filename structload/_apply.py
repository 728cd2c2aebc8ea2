"""Carrying out a plan: the only place a load writes.

Each write copies one source leaf straight into the destination tensor
(``copy_`` casts and moves as needed), zeroes it (R3) or hands extra state to
``set_extra_state``. A destination tensor on the ``meta`` device is first
materialized on `device` and put back at every path that shares it, as a
real ``nn.Parameter`` keeping its ``requires_grad``; every other parameter
keeps its identity.
"""

from __future__ import annotations

import torch

from ._dest import EXTRA, Slot
from ._plan import Plan
from ._progress import progress_bar, wants_progress
from ._rules import ZEROED
from ._walk import Entry


def apply_plan(plan: Plan, device: torch.device, progress: bool | None) -> None:
    writes = plan.writes()
    sizes = [_nbytes(entry) for entry in writes]
    total = sum(sizes)
    with torch.no_grad(), progress_bar(wants_progress(progress, total), total, f"loading {plan.target}") as advance:
        for entry, size in zip(writes, sizes):
            write_entry(entry, device)
            advance(size)


def write_entry(entry: Entry, device: torch.device) -> None:
    """Write one planned entry into the destination."""
    slot = entry.slot
    if slot.kind == EXTRA:
        slot.owner.set_extra_state(entry.leaf.value)
        return
    target = slot.tensor
    if target.is_meta:
        target = _materialize(entry, device)
    if entry.status == ZEROED:
        target.zero_()
    else:
        target.copy_(entry.leaf.read())


def _materialize(entry: Entry, device: torch.device) -> torch.Tensor:
    """A real tensor for a meta slot, installed at every path that shares it."""
    old = entry.slot.tensor
    new = torch.empty(old.shape, dtype=old.dtype, device=device)
    if isinstance(old, torch.nn.Parameter):
        new = torch.nn.Parameter(new, requires_grad=old.requires_grad)
    for other in entry.group or [entry]:
        _install(other.slot, new)
    return new


def _install(slot: Slot, tensor: torch.Tensor) -> None:
    getattr(slot.owner, slot.attr)[slot.name] = tensor
    slot.tensor = tensor


def _nbytes(entry: Entry) -> int:
    tensor = entry.slot.tensor
    return tensor.numel() * tensor.element_size() if isinstance(tensor, torch.Tensor) else 0
