"""The plan's records: what a load does at each destination path (`Entry`, with a `Status`) and
the source tensors with no place in the destination (`Unexpected`).

The rules (`_rules`) make entries, `_ties` settles them, `_problems` reads them, `_plan` turns
them into the report and `_apply` carries out the ones that write.

>>> import torch
>>> from structload._plan.dest import tensor_slot
>>> entry = Entry("fc.weight", tensor_slot(torch.zeros(2)), None, Status.LOADED)
>>> entry.writes, entry.root
(True, None)
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple

from .._report import Problem, ProblemKind
from .dest import Slot
from .walk import Clash, Missing


class Status(StrEnum):
    """What a load does, or would do, at one destination path."""

    LOADED = "loaded"
    ZEROED = "zeroed"
    SKIPPED = "skipped"
    EXCLUDED = "excluded"
    MISSING = "missing"
    MISMATCHED = "mismatched"
    DROPPED = "dropped"
    IGNORED = "ignored"
    UNEXPECTED = "unexpected"
    NOTHING = "nothing"


#: The statuses that write into the destination.
WRITES = (Status.LOADED, Status.ZEROED)


class Entry(NamedTuple):
    """The decision at one destination path. Never changed in place: `_ties` makes new ones.

    `mismatch_kind` is the kind of a `MISMATCHED` entry (``shape``, ``type``,
    ``tied``). `writer` is set on the paths of a tied group that do not write
    themselves: the path of the entry whose write fills them, or ``""`` when
    none does (a skipped or clashing group).
    """

    path: str
    slot: Slot
    leaf: Any  # a source leaf or a walk marker
    status: Status
    problem: Problem | None = None
    src_shape: tuple | None = None
    mismatch_kind: ProblemKind | None = None
    writer: str | None = None

    @property
    def writes(self) -> bool:
        """Whether applying the plan writes this entry."""
        return self.status in WRITES and self.writer is None

    @property
    def root(self) -> str | None:
        """The subtree root a `Missing` / `Clash` marker came from (not for tied followers)."""
        leaf = self.leaf
        return leaf.root if isinstance(leaf, (Missing, Clash)) and self.writer is None else None


@dataclass(frozen=True)
class Unexpected:
    """Source tensors under `path` with no place in the destination (`leaf_paths`, after the
    selection), `position` entries into the walk; `beside`: the destination names at that level
    the source did not fill."""

    path: str
    leaf_paths: list[str]
    position: int
    beside: tuple[str, ...] = ()
    what: str = ""  # for a single value that is no tensor: what it is (a pickled object, a string)
    shapes: tuple = ()  # the shape of each of `leaf_paths` (None for what is no tensor), for suggestions
