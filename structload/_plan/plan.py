"""The plan of a load: every decision made, every problem found, nothing written yet.

`make_plan` runs the steps in order, each a new value from the last:

1. `_walk.walk` pairs every destination slot with what the source holds for it;
2. the selection (`_select`) marks what ``include`` / ``exclude`` / ``filter`` leave out;
3. the rules (`_rules.decide`) judge each pair;
4. `_ties.settle_ties` makes one writer per shared tensor (R4);
5. `_problems.compose_problems` turns the findings into problems, with the hints `_hints` finds.

`Plan.report` turns the decisions into a `LoadReport`. Because all of this
happens before the first write, a strict load that finds a problem leaves
the destination untouched (R6).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .._report import Adapted, Cast, Converted, LoadReport, Mismatch, Problem, ProblemKind
from ..adapt import AdaptedTensor
from ..sources import SKIP, BadLeaf, ConvertedTensor, MemoryTensor, SourceTree, iter_leaves
from ..sources.reading import mmap_dtype
from .customised import CustomLoading, leave_it_out, record_own_loading, refused_once
from .dest import FILLED_SLOTS, TENSOR_SLOTS, SlotKind, dest_name
from .materialized import materialized_dtype
from .problems import compose_problems
from .records import WRITES, Entry, Status, Unexpected
from .rules import counts_as_unexpected, decide, left_on_meta, plain_load
from .select import LeftOut, Selection
from .ties import settle_ties
from .walk import SlotPair, Unpaired, Walk, walk

_LISTS = {
    Status.LOADED: "loaded",
    Status.ZEROED: "zeroed",
    Status.SKIPPED: "skipped",
    Status.EXCLUDED: "excluded",
    Status.MISSING: "missing",
    Status.DROPPED: "dropped",
    Status.IGNORED: "ignored",
}


@dataclass
class Plan:
    """What `load` will do: entries in module order, unexpected source tensors, problems, hints."""

    target: str
    entries: list[Entry]
    unexpected: list[Unexpected]
    groups: list[list[Entry]]  # tied entries (R4), one list per shared tensor
    problems: list[Problem]
    hints: list[str]
    dtype: torch.dtype | str | None = None  # what meta tensors are materialized in (`load(dtype=...)`)
    mapped: frozenset[str] = frozenset()  # paths `load(mmap=True)` makes views of the mapped file
    mmap: bool = False  # `load(mmap=True)`: casting reads of local files go through short-lived mappings too
    source: SourceTree | None = None  # the source as opened: what it knows about itself (pickled types)
    post_hooks: list = field(default_factory=list)  # (path, module) whose load post-hooks apply runs last
    declared: list[str] = field(default_factory=list)  # conversions the destination's library declares, applied

    def writes(self) -> list[Entry]:
        """The entries apply must carry out, in module order (`Entry.writes`, without a call each)."""
        return [e for e in self.entries if e.writer is None and e.status in WRITES]

    def report(self, applied: bool) -> LoadReport:
        report = LoadReport(target=self.target, problems=list(self.problems), hints=list(self.hints), applied=applied)
        unexpected = iter(self.unexpected)
        pending = next(unexpected, None)
        loaded, loaded_status, dtype = report.loaded, Status.LOADED, self.dtype
        for index, entry in enumerate(self.entries):
            while pending is not None and pending.position <= index:
                report.unexpected.extend(pending.leaf_paths)
                pending = next(unexpected, None)
            leaf = entry.leaf
            if (
                entry.status is loaded_status
                and type(leaf) is MemoryTensor
                and entry.writer is None
                and dtype is None
                and entry.slot.tensor is not None  # extra state given as a tensor has no destination tensor
                and leaf.dtype is entry.slot.tensor.dtype
            ):
                loaded.append(entry.path)  # the common case: loaded, no cast, no converter
                continue
            _add_entry(report, entry, dtype)
        while pending is not None:
            report.unexpected.extend(pending.leaf_paths)
            pending = next(unexpected, None)
        report.tied = [tuple(e.path for e in group) for group in self.groups]
        report.mapped = [e.path for e in self.entries if e.path in self.mapped] if self.mapped else []
        report.pickled = self.source.types if self.source is not None else {}
        report.declared = list(self.declared)
        return report


def _add_entry(report: LoadReport, entry: Entry, dtype) -> None:
    status = entry.status
    if status is Status.LOADED and entry.writer is None:  # the common case, first
        report.loaded.append(entry.path)
        if entry.slot.kind in FILLED_SLOTS:
            _add_changes(report, entry, dtype)
        return
    if status in _LISTS:
        getattr(report, _LISTS[status]).append(entry.path)
    elif status == Status.MISMATCHED:
        shape = tuple(entry.slot.tensor.shape) if entry.slot.kind in TENSOR_SLOTS else ()
        report.mismatched.append(Mismatch(entry.path, shape, entry.src_shape, entry.mismatch_kind or ProblemKind.TYPE))
    elif status == Status.UNEXPECTED:
        report.unexpected.append(entry.path)


def _add_changes(report: LoadReport, entry: Entry, dtype) -> None:
    """A loaded tensor's cast (R1) and the converters that made it, if any."""
    leaf, tensor = entry.leaf, entry.slot.tensor
    dst_dtype = materialized_dtype(tensor, leaf.dtype, dtype) if dtype is not None else tensor.dtype
    src_dtype = leaf.dtype
    if src_dtype is None and isinstance(leaf, MemoryTensor) and leaf.tensor.is_floating_point():
        src_dtype = None if dst_dtype.is_floating_point or dst_dtype.is_complex else torch.float64  # truncated
    if src_dtype is not None and src_dtype != dst_dtype:
        report.cast.append(Cast(entry.path, src_dtype, dst_dtype))
    if isinstance(leaf, AdaptedTensor):  # made by an adapter, perhaps from a converted tensor
        report.adapted.append(Adapted(entry.path, leaf.src_shape, tuple(tensor.shape), leaf.adapter))
        leaf = leaf.base
    if isinstance(leaf, ConvertedTensor):
        report.converted.append(Converted(entry.path, leaf.made_by, leaf.sources))


def make_plan(
    dst,
    tree,
    selection: Selection,
    earlier_problems: Sequence[Problem] = (),
    *,
    dtype=None,
    meta_is_final=True,
    mmap=False,
    metadata=None,
    source: SourceTree | None = None,
) -> Plan:
    """Walk, select, decide, settle ties, find every problem; read no data except R3's and R4's checks.

    `earlier_problems` (patterns that match nothing, converters that cannot run) come first.
    With `meta_is_final` false (a model built on meta for a dry run), tensors left on meta are fine.
    `metadata` (a callable) gives the source's ``state_dict()._metadata``, for modules' own loading code.
    `source` is the source tree `tree` was made from, as opened (its pickled types go to the report).
    """
    found = walk(dst, tree)
    left_out = selection.left_out(dst)
    custom = _run_own_loading(found, tree, selection, left_out, metadata)
    if custom is not None:  # modules with loading code of their own: walk what their code leaves
        found = walk(dst, custom.tree)
    entries, positions = judge(found.pairs, left_out, dtype)
    entries, groups = settle_ties(entries)
    own_code = custom.problems if custom is not None else []
    refusals = customised(found, selection, left_out) + own_code
    if refusals:  # a non-strict load leaves a refused module exactly as it was
        entries = leave_refused_alone(entries, refusals)
    if meta_is_final:
        entries = [left_on_meta(e) if e.status in _UNWRITTEN else e for e in entries]
    unexpected = unexpected_sources(found.unpaired, positions, selection, left_out)
    problems, hints = compose_problems(entries, unexpected, found.lengths)
    problems = list(earlier_problems) + selection.unmatched_patterns() + refused_once(refusals, problems)
    mapped = frozenset(e.path for e in entries if can_map(e, dtype)) if mmap else frozenset()
    plan = Plan(dest_name(dst), entries, unexpected, groups, problems, hints, dtype, mapped, mmap, source)
    plan.post_hooks = custom.post_hooks if custom is not None else []
    if refusals:  # nor does a refused module's post-hook run
        refused = [r.path for r in refusals]
        plan.post_hooks = [(p, m) for p, m in plan.post_hooks if not any(_inside(p, r) for r in refused)]
    return plan


def _run_own_loading(found: Walk, tree, selection: Selection, left_out, metadata) -> CustomLoading | None:
    """Record the loading code of the modules that have some (`_customised`), unless the load skips
    or leaves them out; ``None`` when there is none to run."""
    modules = [
        (path, module)
        for path, module, src, reason in found.customised
        if reason is None and src is not SKIP and not selection.leaves_out_module(path, left_out)
    ]
    return record_own_loading(tree, modules, metadata) if modules else None


_new_entry = tuple.__new__  # `judge` gives it an Entry's 8 fields in order

#: Statuses that leave a destination tensor as it was (and a meta one on meta).
_UNWRITTEN = (Status.EXCLUDED, Status.SKIPPED)


def can_map(entry: Entry, dtype) -> bool:
    """Whether ``mmap=True`` makes this entry a view of the mapped file: a meta tensor it writes,
    from a contiguous, aligned tensor of a file, in the dtype it would be materialized in."""
    slot, leaf = entry.slot, entry.leaf
    if not entry.writes or entry.status != Status.LOADED or slot.kind != SlotKind.TENSOR or slot.owner is None:
        return False
    if not slot.tensor.is_meta:
        return False
    in_file = mmap_dtype(leaf)
    return in_file is not None and materialized_dtype(slot.tensor, in_file, dtype) == in_file


def customised(found: Walk, selection: Selection, left_out: LeftOut | None) -> list[Problem]:
    """Modules of the destination that ``load_state_dict`` would let run code of their own, which
    structload does not: each is a problem at its path (the outermost one, for nested ones), unless
    the load leaves it out or skips it."""
    problems: list[Problem] = []
    for path, module, src, reason in found.customised:
        if reason is None or src is SKIP or selection.leaves_out_module(path, left_out):  # None: its code runs
            continue
        if any(path.startswith(f"{p.path}.") or not p.path for p in problems):
            continue
        hint = leave_it_out(path)
        message = f"a {type(module).__name__}: {reason}; structload cannot load it with the same result. {hint}"
        problems.append(Problem(ProblemKind.TYPE, path, message, hint))
    return problems


def leave_refused_alone(entries: list[Entry], refusals: list[Problem]) -> list[Entry]:
    """The entries with nothing written inside a refused module (its own loading code, which
    structload cannot follow, decides what would land there): each tensor it would have written is
    skipped instead, the refusal at the module's path the reason; so is a tensor tied to one of the
    module's from outside it (writing it would change the module too).

    >>> import torch
    >>> from structload._plan.dest import tensor_slot
    >>> shared = torch.zeros(2)
    >>> entries = [Entry(p, tensor_slot(t), None, Status.LOADED) for p, t in [("old.w", shared), ("new.w", shared), ("b", torch.ones(1))]]
    >>> [e.status.value for e in leave_refused_alone(entries, [Problem(ProblemKind.TYPE, "old", "refused")])]
    ['skipped', 'skipped', 'loaded']
    """
    paths = [refusal.path for refusal in refusals]
    inside = [e for e in entries if any(_inside(e.path, p) for p in paths)]
    tensors = {id(e.slot.tensor) for e in inside if e.slot.kind in TENSOR_SLOTS}
    untouched = {id(e) for e in inside} | {id(e) for e in entries if id(e.slot.tensor) in tensors}
    return [
        e._replace(status=Status.SKIPPED, writer=None) if id(e) in untouched and e.status in WRITES else e
        for e in entries
    ]


def _inside(path: str, module_path: str) -> bool:
    return not module_path or path == module_path or path.startswith(f"{module_path}.")


def judge(pairs: list[SlotPair], left_out: LeftOut | None, dtype=None) -> tuple[list[Entry], list[int]]:
    """One `Entry` per pair the rules have something to say about, in walk order; and for each
    pair index (and one past the last), how many entries came before it. `dtype`: ``load(dtype=...)``."""
    entries: list[Entry] = []
    positions: list[int] = []
    excluded = left_out.paths if left_out is not None else ()
    add, mark, loaded, tensor_slot = entries.append, positions.append, Status.LOADED, SlotKind.TENSOR
    for path, slot, leaf in pairs:
        mark(len(entries))
        if excluded and path in excluded:
            if slot.kind in FILLED_SLOTS:  # still part of any tied group it belongs to
                add(Entry(path, slot, None, Status.EXCLUDED))
            continue
        if slot.kind is tensor_slot and type(leaf) is MemoryTensor and plain_load(slot, leaf, dtype):
            # the common case, R1 without a problem; built as NamedTuple's own constructor would, faster
            add(_new_entry(Entry, (path, slot, leaf, loaded, None, None, None, None)))
            continue
        holds_tensor = slot.kind in FILLED_SLOTS
        status, kind, message, src_shape = decide(slot, leaf, dtype)
        if kind is None and not holds_tensor and status == Status.NOTHING:
            continue
        problem = Problem(kind, path, message or "") if kind is not None else None
        mismatch_kind = (
            (ProblemKind.SHAPE if kind == ProblemKind.SHAPE else ProblemKind.TYPE)
            if status == Status.MISMATCHED
            else None
        )
        entries.append(Entry(path, slot, leaf, status, problem, src_shape, mismatch_kind))
    positions.append(len(entries))
    return entries, positions


def unexpected_sources(
    unpaired: list[Unpaired], positions: list[int], selection: Selection, left_out: LeftOut | None
) -> list[Unexpected]:
    """The source tensors no destination slot took, per unpaired subtree, minus what the selection ignores."""
    records = []
    for record in unpaired:
        leaves = [
            (p, leaf)
            for p, leaf in iter_leaves(record.subtree, record.path)
            if counts_as_unexpected(leaf) and selection.accepts_source(p, left_out)
        ]
        if leaves:
            leaf_paths = [p for p, _ in leaves]
            shapes = tuple(getattr(leaf, "shape", None) for _, leaf in leaves)
            leaf = record.subtree
            what = leaf.reason if isinstance(leaf, BadLeaf) else ""
            position = positions[record.position]
            records.append(Unexpected(record.path, leaf_paths, position, record.beside, what, shapes))
    return records
