"""The plan of a load: every decision made, every problem found, nothing written yet.

`make_plan` runs the walk, settles tied tensors (R4) and composes the
problems; `Plan.report` turns the decisions into a `LoadReport`. Because all
of this happens before the first write, a strict load that finds a problem
leaves the destination untouched (R6).
"""

from __future__ import annotations

from dataclasses import dataclass

from ._dest import TENSOR, dest_name
from ._problems import compose_problems
from ._report import Cast, Converted, LoadReport, Mismatch, Problem
from ._rules import DROPPED, EXCLUDED, LOADED, MISMATCHED, MISSING, SKIPPED, UNEXPECTED, ZEROED
from ._select import Selection
from ._ties import resolve_ties
from ._walk import Entry, Walk, walk
from .sources._leaves import ConvertedTensor

_LISTS = {LOADED: "loaded", ZEROED: "zeroed", SKIPPED: "skipped", EXCLUDED: "excluded", MISSING: "missing", DROPPED: "dropped"}


@dataclass
class Plan:
    """What `load` will do: entries in module order, problems, hints."""

    target: str
    found: Walk
    problems: list[Problem]
    hints: list[str]

    @property
    def entries(self) -> list[Entry]:
        return self.found.entries

    def writes(self) -> list[Entry]:
        """The entries apply must carry out, in module order."""
        return [e for e in self.found.entries if e.write and e.status in (LOADED, ZEROED)]

    def report(self, applied: bool) -> LoadReport:
        report = LoadReport(target=self.target, problems=list(self.problems), hints=list(self.hints), applied=applied)
        unexpected = iter(self.found.unexpected)
        pending = next(unexpected, None)
        for index, entry in enumerate(self.found.entries):
            while pending is not None and pending.position <= index:
                report.unexpected.extend(pending.leaf_paths)
                pending = next(unexpected, None)
            _add_entry(report, entry)
        while pending is not None:
            report.unexpected.extend(pending.leaf_paths)
            pending = next(unexpected, None)
        report.tied = [tuple(e.path for e in group) for group in _tied_groups(self.found)]
        return report


def _add_entry(report: LoadReport, entry: Entry) -> None:
    status = entry.status
    if status in _LISTS:
        getattr(report, _LISTS[status]).append(entry.path)
    elif status == MISMATCHED:
        shape = tuple(entry.slot.tensor.shape) if entry.slot.kind == TENSOR else ()
        report.mismatched.append(Mismatch(entry.path, shape, entry.src_shape, entry.mismatch))
    elif status == UNEXPECTED:
        report.unexpected.append(entry.path)
    if status == LOADED and entry.write and entry.slot.kind == TENSOR:
        src_dtype, dst_dtype = entry.leaf.dtype, entry.slot.tensor.dtype
        if src_dtype is not None and src_dtype != dst_dtype:
            report.cast.append(Cast(entry.path, src_dtype, dst_dtype))
        if isinstance(entry.leaf, ConvertedTensor):
            report.converted.append(Converted(entry.path, entry.leaf.made_by, entry.leaf.sources))


def _tied_groups(found: Walk) -> list[list[Entry]]:
    return [group for group in found.by_tensor.values() if len(group) > 1]


def make_plan(dst, tree, selection: Selection, converter_problems: list[Problem] = ()) -> Plan:
    """Walk, settle ties, find every problem; read no data except R3's and R4's checks."""
    found = walk(dst, tree, selection)
    resolve_ties(_tied_groups(found))
    problems, hints = compose_problems(found)
    return Plan(dest_name(dst), found, list(converter_problems) + problems, hints)
