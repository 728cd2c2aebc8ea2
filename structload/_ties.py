"""Rule R4: a tensor reachable at several destination paths is written once.

The walk records, for each destination tensor, every entry that reaches it.
For a group of more than one, the first entry with a source writes the
tensor; the sources of the others must agree with it (else a ``tied``
problem), and paths the source did not provide are filled by that same write.
"""

from __future__ import annotations

from ._rules import EXCLUDED, LOADED, MISMATCHED, MISSING, SKIPPED, ZEROED, values_agree
from ._walk import Entry

WRITES = (LOADED, ZEROED)


def resolve_ties(groups: list[list[Entry]]) -> None:
    """Settle every tied group in place: one writer, the rest follow it or clash."""
    for group in groups:
        for entry in group:
            entry.group = group
        active = [e for e in group if e.status != EXCLUDED]
        writers = [e for e in active if e.status in WRITES]
        if not writers:
            if any(e.status == SKIPPED for e in active):
                _follow(active, SKIPPED, statuses=(MISSING,))
            continue
        first = writers[0]
        dtype = first.slot.tensor.dtype
        disagreeing = [e for e in writers[1:] if not values_agree(first.leaf, e.leaf, dtype)]
        if disagreeing:
            _clash(first, disagreeing[0], writers, group)
        else:
            _follow(active, first.status, statuses=(LOADED, ZEROED, MISSING, SKIPPED), writer=first)


def _follow(entries: list[Entry], status: str, statuses: tuple, writer: Entry | None = None) -> None:
    for entry in entries:
        if entry is not writer and entry.status in statuses:
            entry.status = status
            entry.write = False
            entry.root = None


def _clash(first: Entry, other: Entry, writers: list[Entry], group: list[Entry]) -> None:
    paths = ", ".join(f"'{e.path}'" for e in group if e is not first)
    message = (
        f"tied to {paths} (one shared tensor), but the source gives '{first.path}' and "
        f"'{other.path}' different values"
    )
    for entry in writers:
        entry.status = MISMATCHED
        entry.mismatch = "tied"
        entry.write = False
        entry.src_shape = tuple(first.slot.tensor.shape)
    first.problem = ("tied", message)
