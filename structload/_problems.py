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

import difflib
import re
from collections import Counter

from ._report import Problem
from ._rules import MISMATCHED, MISSING, NO_BIAS
from ._walk import Entry, Unexpected, Walk

#: Who usually adds a prefix, for the hint's wording.
KNOWN_PREFIXES = {
    "module.": "DistributedDataParallel and DataParallel add it",
    "_orig_mod.": "torch.compile adds it",
    "model.": "training wrappers often add it",
}


def compose_problems(found: Walk) -> tuple[list[Problem], list[str]]:
    """Every problem in walk order, and the hints that apply to the whole load."""
    roots = _root_counts(found.entries)
    events: list[tuple[int, Problem]] = []
    done_roots: set[str] = set()
    for index, entry in enumerate(found.entries):
        problem = _entry_problem(entry, found, roots, done_roots)
        if problem is not None:
            events.append((index, problem))
    _suggest_by_path(found)
    for record in found.unexpected:
        events.append((record.position - 0.5, _unexpected_problem(record)))
    events.sort(key=lambda pair: pair[0])
    problems = [problem for _, problem in events]
    hint = prefix_hint(found)
    if hint is not None:
        prefix, text, direction = hint
        return [_with_hint(p, prefix, text, direction) for p in problems], [text]
    moves = layout_matches(found)
    if moves:
        return [_with_move(p, moves) for p in problems], list(moves.values())
    return problems, []


def _root_counts(entries: list[Entry]) -> dict[str, list[int]]:
    """For each subtree root: [tensors under it, tensors still missing or clashing there]."""
    counts: dict[str, list[int]] = {}
    for entry in entries:
        if entry.root is not None:
            pair = counts.setdefault(entry.root, [0, 0])
            pair[0] += 1
            pair[1] += entry.status in (MISSING, MISMATCHED)
    return counts


def _entry_problem(entry: Entry, found: Walk, roots, done_roots: set[str]) -> Problem | None:
    if entry.problem is not None:
        kind, message = entry.problem
        return Problem(kind, entry.path, message)
    if entry.status == MISMATCHED and entry.root in found.clashes:
        return _once(entry.root, done_roots, lambda: Problem("type", entry.root, found.clashes[entry.root]))
    if entry.status != MISSING:
        return None
    total, remaining = roots.get(entry.root, (1, 1))
    if remaining == total:  # the source lacks the whole subtree at entry.root
        parent, _, name = entry.root.rpartition(".")
        if name.isdigit() and parent in found.lengths:
            return _once(f"[length] {parent}", done_roots, lambda: _length_problem(parent, found, roots))
        if entry.root != entry.path and total > 1:
            message = f"missing in source (whole subtree, {plural(total, 'tensor')})" + _did_you_mean(found, entry.root)
            return _once(entry.root, done_roots, lambda: Problem("missing", entry.root, message))
    return Problem("missing", entry.path, "missing in source" + _did_you_mean(found, entry.path))


def _once(key: str, done: set[str], make) -> Problem | None:
    """`make()` the first time `key` comes up, ``None`` after."""
    if key in done:
        return None
    done.add(key)
    return make()


def _length_problem(parent: str, found: Walk, roots) -> Problem:
    """One problem for a numbered container (``ModuleList``, list) shorter in the source."""
    prefix = f"{parent}." if parent else ""
    with_state = {e.path[len(prefix) :].split(".", 1)[0] for e in found.entries if e.path.startswith(prefix)}
    n_dst = sum(1 for name in with_state if name.isdigit())
    n_src = found.lengths[parent]
    missing_roots = [r for r in roots if r.startswith(prefix) and r[len(prefix) :].isdigit()]
    indices = sorted(int(r[len(prefix) :]) for r in missing_roots)
    tensors = sum(roots[r][1] for r in missing_roots)
    message = (
        f"destination has {n_dst} entries, source has {n_src}; "
        f"{_ranges(indices)} missing in source ({plural(tensors, 'tensor')})"
    )
    return Problem("missing", parent, message)


def plural(n: int, noun: str) -> str:
    """``1 tensor``, ``2 tensors``."""
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _ranges(indices: list[int]) -> str:
    """``0–2, 5`` for ``[0, 1, 2, 5]``."""
    spans: list[list[int]] = []
    for i in indices:
        if spans and i == spans[-1][1] + 1:
            spans[-1][1] = i
        else:
            spans.append([i, i])
    return ", ".join(f"{a}" if a == b else f"{a}–{b}" for a, b in spans)


#: Above this many (unexpected path, candidate) pairs, path-level suggestions are skipped.
MAX_SUGGESTION_PAIRS = 100_000


def _suggest_by_path(found: Walk) -> None:
    """Suggest, for single unexpected tensors the walk found no sibling for, the closest
    destination path the source did not fill (missing, or zeroed for lack of a bias)."""
    lone = [r for r in found.unexpected if r.suggestion is None and len(r.leaf_paths) == 1]
    if not lone:
        return
    unfilled = [e.path for e in found.entries if e.status == MISSING or e.leaf is NO_BIAS]
    if not unfilled or len(lone) * len(unfilled) > MAX_SUGGESTION_PAIRS:
        return
    by_name: dict[str, list[str]] = {}
    for path in unfilled:  # module paths holding a tensor of each name
        parent, _, name = path.rpartition(".")
        by_name.setdefault(name, []).append(parent)
    for record in lone:
        parent, _, name = record.leaf_paths[0].rpartition(".")
        match = difflib.get_close_matches(parent, by_name.get(name, []), n=1, cutoff=0.6)
        if parent and match:
            record.suggestion, record.path = f"{match[0]}.{name}", record.leaf_paths[0]


def _unexpected_problem(record: Unexpected) -> Problem:
    if len(record.leaf_paths) == 1:
        path = record.leaf_paths[0]
        message = "unexpected in source"
        if record.suggestion:
            return Problem("unexpected", path, f"{message}; did you mean '{record.suggestion}{path[len(record.path):]}'?")
        return Problem("unexpected", path, message)
    message = f"unexpected in source ({plural(len(record.leaf_paths), 'tensor')})"
    if record.suggestion:
        message += f"; did you mean '{record.suggestion}'?"
    return Problem("unexpected", record.path, message)


def _did_you_mean(found: Walk, path: str) -> str:
    similar = found.suggestions.get(path)
    return f"; did you mean '{similar}' in source?" if similar else ""


def prefix_hint(found: Walk) -> tuple[str, str, str] | None:
    """``(prefix, hint text, "strip" | "add")`` when source and destination paths differ by a prefix."""
    unexpected = [p for record in found.unexpected for p in record.leaf_paths]
    missing = [e.path for e in found.entries if e.status == MISSING]
    if not unexpected or not missing:
        return None
    dst_paths = {e.path for e in found.entries}
    prefix = _common_prefix(unexpected, dst_paths)
    if prefix is not None:
        why = KNOWN_PREFIXES.get(prefix, "")
        text = (
            f"the source paths carry the prefix '{prefix}'"
            + (f" ({why})" if why else "")
            + f'; pass rename={{r"^{re.escape(prefix)}": ""}}'
        )
        return prefix, text, "strip"
    prefix = _common_prefix(missing, set(unexpected))
    if prefix is not None:
        text = f"the source paths lack the destination's prefix '{prefix}'; pass rename={{r\"^\": \"{prefix}\"}}"
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


def layout_matches(found: Walk) -> dict[str, str]:
    """Unexpected source subtrees laid out like a missing destination subtree.

    Returns ``{source path: hint text with the rename=}`` where the two
    subtrees' relative tensor paths overlap so that one holds the other and
    at least half of it (``blocks`` against ``layers``, the source without
    the biases the destination adds), when exactly one destination subtree fits.
    """
    missing: dict[str, set[str]] = {}
    for entry in found.entries:
        if entry.status == MISSING and entry.root is not None and entry.root != entry.path:
            missing.setdefault(entry.root, set()).add(entry.path[len(entry.root) + 1 :])
    if not missing:
        return {}
    moves = {}
    for record in found.unexpected:
        if len(record.leaf_paths) < 2 or record.path in record.leaf_paths or record.suggestion:
            continue
        layout = {p[len(record.path) + 1 :] for p in record.leaf_paths}
        alike = [root for root, paths in missing.items() if _same_layout(layout, paths)]
        if len(alike) == 1:
            root = alike[0]
            text = (
                f"'{record.path}' in source is laid out like '{root}' in destination; "
                f'pass rename={{r"^{re.escape(record.path + ".")}": "{root}."}}'
            )
            moves[record.path] = text
    return moves


def _same_layout(a: set[str], b: set[str]) -> bool:
    """One set of relative paths holds the other and at least half of it, with 3 tensors or more."""
    small, big = sorted((a, b), key=len)
    return len(small) >= 3 and small <= big and 2 * len(small) >= len(big)


def _with_move(problem: Problem, moves: dict[str, str]) -> Problem:
    hint = moves.get(problem.path) if problem.kind == "unexpected" else None
    return Problem(problem.kind, problem.path, f"{problem.message}; {hint}") if hint else problem


def _with_hint(problem: Problem, prefix: str, text: str, direction: str) -> Problem:
    kind = "unexpected" if direction == "strip" else "missing"
    path = problem.path + "."
    if problem.kind == kind and (path.startswith(prefix) or prefix.startswith(path)):
        return Problem(problem.kind, problem.path, f"{problem.message}; {text}")
    return problem
