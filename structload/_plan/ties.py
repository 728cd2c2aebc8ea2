"""Rule R4: a tensor reachable at several destination paths is written once.

Entries whose slots hold the same tensor form a group. The first entry with a
source writes the tensor; the sources of the others must agree with it (else a
``tied`` problem), and paths the source did not provide are filled by that same
write. `settle_ties` returns new entries; it changes none.

>>> import torch
>>> from structload._plan.dest import tensor_slot
>>> from structload._plan.records import Entry, Status
>>> from structload._plan.walk import Missing
>>> shared = torch.zeros(2)
>>> entries = [Entry("a", tensor_slot(shared), None, Status.LOADED), Entry("b", tensor_slot(shared), Missing("b"), Status.MISSING)]
>>> settled, groups = settle_ties(entries)
>>> [(e.path, e.status, e.writer) for e in settled], [[e.path for e in g] for g in groups]
([('a', <Status.LOADED: 'loaded'>, None), ('b', <Status.LOADED: 'loaded'>, 'a')], [['a', 'b']])
"""

from __future__ import annotations

from .._report import Problem, ProblemKind
from .dest import TENSOR_SLOTS
from .records import WRITES, Entry, Status
from .rules import values_agree


def settle_ties(entries: list[Entry]) -> tuple[list[Entry], list[list[Entry]]]:
    """The entries with every tied group settled, and the groups (settled entries, in order)."""
    tensors = [id(e.slot.tensor) for e in entries if e.slot.kind in TENSOR_SLOTS]
    if len(set(tensors)) == len(tensors):  # no tensor at two paths (the common case): one pass, no groups
        return entries, []
    by_tensor: dict[int, list[int]] = {}
    for index, entry in enumerate(entries):
        if entry.slot.kind in TENSOR_SLOTS:
            by_tensor.setdefault(id(entry.slot.tensor), []).append(index)
    groups = [indices for indices in by_tensor.values() if len(indices) > 1]
    if not groups:
        return entries, []
    settled = list(entries)
    for indices in groups:
        for index, entry in zip(indices, _settle([entries[i] for i in indices])):
            settled[index] = entry
    return settled, [[settled[i] for i in indices] for indices in groups]


def _settle(group: list[Entry]) -> list[Entry]:
    """One group: one writer, the rest follow it or clash."""
    active = [e for e in group if e.status != Status.EXCLUDED]
    writers = [e for e in active if e.status in WRITES]
    if not writers:
        if any(e.status == Status.SKIPPED for e in active):
            return _follow(group, Status.SKIPPED, from_statuses=(Status.MISSING,))
        return group
    first = writers[0]
    dtype = first.slot.tensor.dtype
    disagreeing = [e for e in writers[1:] if not values_agree(first.leaf, e.leaf, dtype)]
    if disagreeing:
        return _clash(group, first, disagreeing[0], writers)
    statuses = (Status.LOADED, Status.ZEROED, Status.MISSING, Status.SKIPPED)
    return _follow(group, first.status, from_statuses=statuses, writer=first)


def _follow(group: list[Entry], status: Status, from_statuses: tuple, writer: Entry | None = None) -> list[Entry]:
    """Every entry but the writer takes `status`, written by the writer (or by nobody). A path the
    writer fills drops what its own rule found (``False`` at a tied weight: "not a bias"): one
    provided path is enough (R4), and the tensor is written from it."""
    if writer is None:
        return [e._replace(status=status, writer="") if e.status in from_statuses else e for e in group]
    return [
        e._replace(status=status, writer=writer.path, problem=None)
        if e is not writer and e.status in from_statuses
        else e
        for e in group
    ]


def _clash(group: list[Entry], first: Entry, other: Entry, writers: list[Entry]) -> list[Entry]:
    paths = ", ".join(f"'{e.path}'" for e in group if e is not first)
    message = (
        f"tied to {paths} (one shared tensor), but the source gives '{first.path}' and '{other.path}' different values"
    )
    shape = tuple(first.slot.tensor.shape)
    out = []
    for entry in group:
        if any(entry is w for w in writers):
            problem = Problem(ProblemKind.TIED, entry.path, message) if entry is first else None
            entry = entry._replace(
                status=Status.MISMATCHED, mismatch_kind=ProblemKind.TIED, problem=problem, src_shape=shape, writer=""
            )
        out.append(entry)
    return out
