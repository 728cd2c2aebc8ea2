"""Turning the walk's findings into `Problem`s people can act on.

Problems come out in walk (module) order, one per place where the trees
diverge: a whole missing submodule is one problem naming it, with its tensor
count; a numbered container whose lengths differ is one problem at the
container; unexpected source subtrees likewise. Messages add "did you mean"
suggestions for near-miss names and, when the two trees differ by a common
prefix (``module.``, ``_orig_mod.``, ``model.``, ...), the exact ``rename=``
that fixes it: the hints are `_hints`' to find, this module only adds them.
"""

from __future__ import annotations

import operator

from .._render.text import number_ranges, plural, shape_text
from .._report import Problem, ProblemKind
from ..sources import ABSENT, SourceTensor
from .hints import (
    TRANSPOSED,
    layout_matches,
    legacy_weight_norm_hints,
    new_head_hints,
    prefix_applies,
    prefix_hint,
    transposed_paths,
    with_note,
)
from .problem_shapes import (
    ALIGN_HINT,
    entry_shape,
    looks_like_another_implementation,
    suggest_by_path,
    suggest_by_sibling,
)
from .records import Entry, Status, Unexpected
from .walk import Clash

#: A suggestion for an unexpected source subtree: (the source path it is for, the destination path meant).
Suggestion = tuple[str, str]


def compose_problems(
    entries: list[Entry], unexpected: list[Unexpected], lengths: dict[str, int]
) -> tuple[list[Problem], list[str]]:
    """Every problem in walk order, and the hints that apply to the whole load."""
    if not unexpected and not _may_have_problems(entries):  # a clean load: nothing to compose
        return [], []
    roots = _root_counts(entries)
    suggestions = suggest_by_sibling(unexpected, entries)
    meant = {dst: src for src, dst in suggestions.values()}  # missing path -> the source path like it
    suggestions.update(suggest_by_path(entries, unexpected, suggestions))
    events: list[tuple[float, Problem]] = []
    done_roots: set[str] = set()
    for index, entry in enumerate(entries):
        if entry.status is Status.LOADED:  # never a problem, never under a missing root
            continue
        problem = _entry_problem(entry, entries, lengths, roots, meant, done_roots)
        if problem is not None:
            events.append((index, problem))
    for i, record in enumerate(unexpected):
        parent, _, name = record.path.rpartition(".")
        if name.isdigit() and parent in lengths:  # a longer numbered list: one problem for the extra entries
            problem = _once(f"[length] {parent}", done_roots, lambda p=parent: _longer_problem(p, unexpected, lengths))
            if problem is not None:
                events.append((record.position - 0.5, problem))
            continue
        events.append((record.position - 0.5, _unexpected_problem(record, suggestions.get(i))))
    events.sort(key=lambda pair: pair[0])
    problems = [problem for _, problem in events]
    flipped = transposed_paths(entries)
    problems = [with_note(p, TRANSPOSED) if p.path in flipped else p for p in problems]
    extra = {**new_head_hints(entries), **legacy_weight_norm_hints(entries, unexpected)}
    if extra:
        problems = [with_note(p, extra[p.path]) if p.path in extra else p for p in problems]
    hints: list[str] = list(dict.fromkeys(extra.values()))
    problems, general = _general_hints(problems, entries, unexpected, suggestions)
    return problems, general + hints


def _general_hints(problems, entries, unexpected, suggestions) -> tuple[list[Problem], list[str]]:
    """The hint that concerns the whole load, if any: a prefix, a subtree laid out like another, or
    another implementation of the architecture; added to the problems it concerns."""
    found = prefix_hint(entries, unexpected)
    if found is not None:
        prefix, hint, direction = found
        return [with_note(p, hint) if prefix_applies(p, prefix, direction) else p for p in problems], [hint]
    moves = layout_matches(entries, unexpected, suggestions)
    if moves:
        moved = [
            with_note(p, moves[p.path]) if p.kind == ProblemKind.UNEXPECTED and p.path in moves else p for p in problems
        ]
        return moved, list(moves.values())
    missing = [entry_shape(e) for e in entries if e.status == Status.MISSING]
    loaded = sum(e.status == Status.LOADED for e in entries)
    if (
        missing
        and not suggestions
        and looks_like_another_implementation(missing, [s for r in unexpected for s in r.shapes], loaded)
    ):
        first = problems[0]  # said once, where the error starts, and among the report's hints
        return [with_note(first, ALIGN_HINT), *problems[1:]], [ALIGN_HINT]
    return problems, []


def _root_counts(entries: list[Entry]) -> dict[str, list[int]]:
    """For each subtree root: [tensors under it, tensors still missing or clashing there]."""
    counts: dict[str, list[int]] = {}
    for entry in entries:
        if entry.status is Status.LOADED:  # a tensor, or a tied path another entry writes: no root
            continue
        root = entry.root
        if root is not None:
            pair = counts.setdefault(root, [0, 0])
            pair[0] += 1
            pair[1] += entry.status in (Status.MISSING, Status.MISMATCHED)
    return counts


def _may_have_problems(entries: list[Entry]) -> bool:
    """Whether `_entry_problem` can find a problem in any entry (one pass each in C, no call per entry)."""
    statuses = set(map(_STATUS, entries))
    if Status.MISSING in statuses or Status.MISMATCHED in statuses:
        return True
    return len(entries) != list(map(_PROBLEM, entries)).count(None)


_STATUS, _PROBLEM = operator.attrgetter("status"), operator.attrgetter("problem")


def _entry_problem(
    entry: Entry, entries, lengths, roots, meant: dict[str, str], done_roots: set[str]
) -> Problem | None:
    if entry.problem is not None:
        return entry.problem
    root = entry.root
    if entry.status == Status.MISMATCHED and isinstance(entry.leaf, Clash) and root is not None:
        clash = entry.leaf
        return _once(root, done_roots, lambda: Problem(ProblemKind.TYPE, root, clash_message(clash.found)))
    if entry.status != Status.MISSING:
        return None
    total, remaining = roots.get(root, (1, 1)) if root is not None else (1, 1)
    if root is not None and remaining == total:  # the source lacks the whole subtree at the root
        parent, _, name = root.rpartition(".")
        if name.isdigit() and parent in lengths:
            return _once(f"[length] {parent}", done_roots, lambda: _length_problem(parent, entries, lengths, roots))
        if root != entry.path and total > 1:
            message = f"missing in source (whole subtree, {plural(total, 'tensor')})" + _did_you_mean(meant, root)
            return _once(root, done_roots, lambda: Problem(ProblemKind.MISSING, root, message))
    return Problem(ProblemKind.MISSING, entry.path, "missing in source" + _did_you_mean(meant, entry.path))


def clash_message(found) -> str:
    """Why a source leaf cannot stand where the destination has a subtree."""
    if found is ABSENT:
        return "a subtree in destination, False in source (False marks one absent tensor; None skips a subtree)"
    if isinstance(found, SourceTensor):
        return f"a subtree in destination, a tensor of shape {shape_text(found.shape)} in source"
    return f"a subtree in destination; in source, {getattr(found, 'reason', type(found).__name__)}"


def _once(key: str, done: set[str], make) -> Problem | None:
    """`make()` the first time `key` comes up, ``None`` after."""
    if key in done:
        return None
    done.add(key)
    return make()


def _length_problem(parent: str, entries: list[Entry], lengths: dict[str, int], roots) -> Problem:
    """One problem for a numbered container (``ModuleList``, list) shorter in the source."""
    prefix = f"{parent}." if parent else ""
    with_state = {e.path[len(prefix) :].split(".", 1)[0] for e in entries if e.path.startswith(prefix)}
    n_dst = sum(1 for name in with_state if name.isdigit())
    n_src = lengths[parent]
    missing_roots = [r for r in roots if r.startswith(prefix) and r[len(prefix) :].isdigit()]
    indices = sorted(int(r[len(prefix) :]) for r in missing_roots)
    tensors = sum(roots[r][1] for r in missing_roots)
    message = (
        f"destination has {n_dst} entries, source has {n_src}; "
        f"{number_ranges(indices)} missing in source ({plural(tensors, 'tensor')})"
    )
    return Problem(ProblemKind.MISSING, parent, message)


def _longer_problem(parent: str, unexpected: list[Unexpected], lengths: dict[str, int]) -> Problem:
    """One problem for a numbered container (``ModuleList``, list) longer in the source."""
    prefix = f"{parent}." if parent else ""
    extra = [r for r in unexpected if r.path.startswith(prefix) and r.path[len(prefix) :].isdigit()]
    indices = sorted(int(r.path[len(prefix) :]) for r in extra)
    tensors = sum(len(r.leaf_paths) for r in extra)
    n_src = lengths[parent]
    message = (
        f"destination has {n_src - len(indices)} entries, source has {n_src}; "
        f"{number_ranges(indices)} unexpected in source ({plural(tensors, 'tensor')})"
    )
    return Problem(ProblemKind.UNEXPECTED, parent, message)


def _unexpected_problem(record: Unexpected, suggestion: Suggestion | None) -> Problem:
    if len(record.leaf_paths) == 1:
        path = record.leaf_paths[0]
        message = f"unexpected in source ({record.what})" if record.what else "unexpected in source"
        if suggestion:
            src, dst = suggestion
            return Problem(ProblemKind.UNEXPECTED, path, f"{message}; did you mean '{dst}{path[len(src) :]}'?")
        return Problem(ProblemKind.UNEXPECTED, path, message)
    message = f"unexpected in source ({plural(len(record.leaf_paths), 'tensor')})"
    if suggestion:
        message += f"; did you mean '{suggestion[1]}'?"
    return Problem(ProblemKind.UNEXPECTED, record.path, message)


def _did_you_mean(meant: dict[str, str], path: str) -> str:
    similar = meant.get(path)
    return f"; did you mean '{similar}' in source?" if similar else ""
