"""Turning the walk's findings into `Problem`s people can act on.

Problems come out in walk (module) order, one per place where the trees
diverge: a whole missing submodule is one problem naming it, with its tensor
count; a numbered container whose lengths differ is one problem at the
container; unexpected source subtrees likewise. Messages add "did you mean"
suggestions for near-miss names and, when the two trees differ by a common
prefix (``module.``, ``_orig_mod.``, ``model.``, ...), the exact ``rename=``
that fixes it.
"""

from __future__ import annotations

import operator
import re
from collections import Counter

from ._problems_shapes import (
    ALIGN_HINT,
    entry_shape,
    looks_like_another_implementation,
    suggest_by_path,
    suggest_by_sibling,
)
from ._report import Problem, ProblemKind
from ._rules import Entry, Status, Unexpected
from ._text import number_ranges, option_text, plural, shape_text
from ._walk import Clash
from .sources import ABSENT, SourceTensor

#: Who usually adds a prefix, for the hint's wording.
KNOWN_PREFIXES = {
    "module.": "DistributedDataParallel and DataParallel add it",
    "_orig_mod.": "torch.compile adds it",
    "model.": "training wrappers often add it",
}

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
    problems = _with_transposed_hint(problems, entries)
    extra = {**new_head_hints(entries), **legacy_weight_norm_hints(entries, unexpected)}
    if extra:
        problems = [_with_extra(p, extra) for p in problems]
    hints = list(dict.fromkeys(extra.values()))
    problems, general = _general_hints(problems, entries, unexpected, suggestions)
    return problems, general + hints


def _general_hints(problems, entries, unexpected, suggestions) -> tuple[list[Problem], list[str]]:
    hint = prefix_hint(entries, unexpected)
    if hint is not None:
        prefix, text, direction = hint
        return [_with_hint(p, prefix, text, direction) for p in problems], [text]
    moves = layout_matches(entries, unexpected, suggestions)
    if moves:
        return [_with_move(p, moves) for p in problems], list(moves.values())
    missing = [entry_shape(e) for e in entries if e.status == Status.MISSING]
    loaded = sum(e.status == Status.LOADED for e in entries)
    if (
        missing
        and not suggestions
        and looks_like_another_implementation(missing, [s for r in unexpected for s in r.shapes], loaded)
    ):
        first = problems[0]  # said once, where the error starts, and among the report's hints
        return [Problem(first.kind, first.path, f"{first.message}; {ALIGN_HINT}"), *problems[1:]], [ALIGN_HINT]
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


TRANSPOSED = (
    "the source stores matrices transposed ((in, out), like GPT-2's Conv1D); square matrices of the same role "
    "need the same, and no shape check can see them: port by structure with align=True (structload align)"
)


def _with_transposed_hint(problems: list[Problem], entries: list[Entry]) -> list[Problem]:
    """Shape problems that are exact transposes say what that means for the square matrices beside them."""
    flipped = {
        e.path
        for e in entries
        if e.mismatch == ProblemKind.SHAPE
        and e.src_shape is not None
        and len(e.src_shape) == 2
        and tuple(e.slot.tensor.shape) == tuple(e.src_shape)[::-1]
    }
    if not flipped:
        return problems
    return [Problem(p.kind, p.path, f"{p.message}; {TRANSPOSED}") if p.path in flipped else p for p in problems]


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


def prefix_hint(entries: list[Entry], records: list[Unexpected]) -> tuple[str, str, str] | None:
    """``(prefix, hint text, "strip" | "add")`` when source and destination paths differ by a prefix."""
    unexpected = [p for record in records for p in record.leaf_paths]
    missing = [e.path for e in entries if e.status == Status.MISSING]
    if not unexpected or not missing:
        return None
    dst_paths = {e.path for e in entries}
    prefix = _common_prefix(unexpected, dst_paths)
    if prefix is not None:
        why = KNOWN_PREFIXES.get(prefix, "")
        text = (
            f"the source paths carry the prefix '{prefix}'"
            + (f" ({why})" if why else "")
            + f"; pass {option_text('rename', {'^' + re.escape(prefix): ''})}"
        )
        return prefix, text, "strip"
    prefix = _common_prefix(missing, set(unexpected))
    if prefix is not None:
        text = f"the source paths lack the destination's prefix '{prefix}'; pass {option_text('rename', {'^': prefix})}"
        return prefix, text, "add"
    return None


def _common_prefix(paths: list[str], targets: set[str]) -> str | None:
    """A prefix of one to three names that, removed, turns most of `paths` into `targets`."""
    counts: Counter[str] = Counter()
    for path in paths:
        parts = path.split(".")
        for k in range(1, min(4, len(parts))):
            prefix = ".".join(parts[:k]) + "."
            if path[len(prefix) :] in targets:
                counts[prefix] += 1
    if not counts:
        return None
    prefix, n = counts.most_common(1)[0]
    return prefix if 2 * n >= len(paths) else None


def layout_matches(
    entries: list[Entry], records: list[Unexpected], suggestions: dict[int, Suggestion]
) -> dict[str, str]:
    """Unexpected source subtrees laid out like a missing destination subtree.

    Returns ``{source path: hint text with the rename=}`` where the two
    subtrees' relative tensor paths overlap so that one holds the other and
    at least half of it (``blocks`` against ``layers``, the source without
    the biases the destination adds), when exactly one destination subtree fits.
    """
    missing: dict[str, set[str]] = {}
    for entry in entries:
        root = entry.root
        if entry.status == Status.MISSING and root is not None and root != entry.path:
            missing.setdefault(root, set()).add(entry.path[len(root) + 1 :])
    if not missing:
        return {}
    moves = {}
    for i, record in enumerate(records):
        if len(record.leaf_paths) < 2 or record.path in record.leaf_paths or i in suggestions:
            continue
        layout = {p[len(record.path) + 1 :] for p in record.leaf_paths}
        alike = [root for root, paths in missing.items() if _same_layout(layout, paths)]
        if len(alike) == 1:
            root = alike[0]
            text = (
                f"'{record.path}' in source is laid out like '{root}' in destination; "
                f"pass {option_text('rename', {'^' + re.escape(record.path + '.'): root + '.'})}"
            )
            moves[record.path] = text
    return moves


def _same_layout(a: set[str], b: set[str]) -> bool:
    """One set of relative paths holds the other and at least half of it, with 3 tensors or more."""
    small, big = sorted((a, b), key=len)
    return len(small) >= 3 and small <= big and 2 * len(small) >= len(big)


def new_head_hints(entries: list[Entry]) -> dict[str, str]:
    """``{path: hint}`` for the tensors of each module whose shape problems all differ in the first
    dimension only (a classifier with another number of classes, an embedding with another vocabulary)."""
    by_module: dict[str, list[Entry]] = {}
    for entry in entries:
        if entry.status == Status.MISMATCHED and entry.mismatch == ProblemKind.SHAPE and entry.src_shape:
            by_module.setdefault(entry.path.rpartition(".")[0], []).append(entry)
    hints = {}
    for module, mismatched in by_module.items():
        pairs = [(tuple(e.slot.tensor.shape), tuple(e.src_shape or ())) for e in mismatched]
        if module and all(len(d) == len(s) >= 1 and d[1:] == s[1:] for d, s in pairs):
            dst, src = pairs[0][0][0], pairs[0][1][0]
            hint = (
                f"'{module}' differs in its first dimension only ({dst} in destination, {src} in source: another "
                f"number of classes or tokens?); if it is a new head, keep the destination's own with "
                f"{option_text('exclude', module)}"
            )
            hints.update({e.path: hint for e in mismatched})
    return hints


def legacy_weight_norm_hints(entries: list[Entry], records: list[Unexpected]) -> dict[str, str]:
    """``{path: hint}`` for ``weight_g`` / ``weight_v`` of the old ``torch.nn.utils.weight_norm`` where the
    destination uses the parametrization (``parametrizations.weight.original0`` / ``original1``): the
    names ``load_state_dict``'s compatibility hook converts."""
    missing = {e.path for e in entries if e.status == Status.MISSING}
    old = [p for r in records for p in r.leaf_paths if p.endswith((".weight_g", ".weight_v"))]
    moved = [p for p in old if p[: -len("weight_g")] + "parametrizations.weight.original0" in missing]
    if not moved:
        return {}
    rename = {
        r"\.weight_g$": ".parametrizations.weight.original0",
        r"\.weight_v$": ".parametrizations.weight.original1",
    }
    hint = f"the source uses the old weight_norm names (weight_g, weight_v); pass {option_text('rename', rename)}"
    return dict.fromkeys(old, hint)


def _with_extra(problem: Problem, extra: dict[str, str]) -> Problem:
    hint = extra.get(problem.path)
    return Problem(problem.kind, problem.path, f"{problem.message}; {hint}") if hint else problem


def _with_move(problem: Problem, moves: dict[str, str]) -> Problem:
    hint = moves.get(problem.path) if problem.kind == ProblemKind.UNEXPECTED else None
    return Problem(problem.kind, problem.path, f"{problem.message}; {hint}") if hint else problem


def _with_hint(problem: Problem, prefix: str, text: str, direction: str) -> Problem:
    kind = ProblemKind.UNEXPECTED if direction == "strip" else ProblemKind.MISSING
    path = problem.path + "."
    if problem.kind == kind and (path.startswith(prefix) or prefix.startswith(path)):
        return Problem(problem.kind, problem.path, f"{problem.message}; {text}")
    return problem
