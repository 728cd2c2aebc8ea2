"""Hints: what to do about the problems `_problems` composes, found by looking at the plan.

Each finder reads the plan's entries and unexpected records and returns hint
texts; a hint that names a load option is a `Hint`, so that the command line
writes it with its own flags (``--rename '^module\\.='``) where Python reads
``rename={r"^module\\.": ""}``. `with_note` adds a hint (or any note) to a
problem's message, keeping the `Hint` as the problem's `hint`.

>>> from structload._report import Problem
>>> problem = Problem("unexpected", "module.fc.weight", "unexpected in source")
>>> hinted = with_note(problem, Hint("strip the prefix: pass ", "rename", {"^module\\\\.": ""}))
>>> print(hinted)
module.fc.weight: unexpected in source; strip the prefix: pass rename={r"^module\\.": ""}
>>> hinted.message_in("cli")
"unexpected in source; strip the prefix: pass --rename '^module\\\\.='"
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter

from .._render.text import Hint
from .._report import Problem, ProblemKind
from .records import Entry, Status, Unexpected

#: Who usually adds a prefix, for the hint's wording.
KNOWN_PREFIXES = {
    "module.": "DistributedDataParallel and DataParallel add it",
    "_orig_mod.": "torch.compile adds it",
    "model.": "training wrappers often add it",
}

TRANSPOSED = (
    "the source stores matrices transposed ((in, out), like GPT-2's Conv1D); square matrices of the same role "
    "need the same, and no shape check can see them: port by structure with align=True (structload align)"
)


def with_note(problem: Problem, note: str) -> Problem:
    """`problem` with ``"; note"`` added to its message; a `Hint` note becomes its `hint` too."""
    hint = note if isinstance(note, Hint) else problem.hint
    return dataclasses.replace(problem, message=f"{problem.message}; {note}", hint=hint)


def transposed_paths(entries: list[Entry]) -> set[str]:
    """The paths of shape problems that are exact transposes (see `TRANSPOSED`)."""
    return {
        e.path
        for e in entries
        if e.mismatch_kind == ProblemKind.SHAPE
        and e.src_shape is not None
        and len(e.src_shape) == 2
        and tuple(e.slot.tensor.shape) == tuple(e.src_shape)[::-1]
    }


def prefix_hint(entries: list[Entry], records: list[Unexpected]) -> tuple[str, Hint, str] | None:
    """``(prefix, hint, "strip" | "add")`` when source and destination paths differ by a prefix."""
    unexpected = [p for record in records for p in record.leaf_paths]
    missing = [e.path for e in entries if e.status == Status.MISSING]
    if not unexpected or not missing:
        return None
    dst_paths = {e.path for e in entries}
    prefix = _common_prefix(unexpected, dst_paths)
    if prefix is not None:
        why = KNOWN_PREFIXES.get(prefix, "")
        text = f"the source paths carry the prefix '{prefix}'" + (f" ({why})" if why else "") + "; pass "
        return prefix, Hint(text, "rename", {"^" + re.escape(prefix): ""}), "strip"
    prefix = _common_prefix(missing, set(unexpected))
    if prefix is not None:
        text = f"the source paths lack the destination's prefix '{prefix}'; pass "
        return prefix, Hint(text, "rename", {"^": prefix}), "add"
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


def layout_matches(entries: list[Entry], records: list[Unexpected], suggestions: dict) -> dict[str, Hint]:
    """Unexpected source subtrees laid out like a missing destination subtree.

    Returns ``{source path: hint with the rename=}`` where the two
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
            text = f"'{record.path}' in source is laid out like '{root}' in destination; pass "
            moves[record.path] = Hint(text, "rename", {"^" + re.escape(record.path + "."): root + "."})
    return moves


def _same_layout(a: set[str], b: set[str]) -> bool:
    """One set of relative paths holds the other and at least half of it, with 3 tensors or more."""
    small, big = sorted((a, b), key=len)
    return len(small) >= 3 and small <= big and 2 * len(small) >= len(big)


def new_head_hints(entries: list[Entry]) -> dict[str, Hint]:
    """``{path: hint}`` for the tensors of each module whose shape problems all differ in the first
    dimension only (a classifier with another number of classes, an embedding with another vocabulary)."""
    by_module: dict[str, list[Entry]] = {}
    for entry in entries:
        if entry.status == Status.MISMATCHED and entry.mismatch_kind == ProblemKind.SHAPE and entry.src_shape:
            by_module.setdefault(entry.path.rpartition(".")[0], []).append(entry)
    hints = {}
    for module, mismatched in by_module.items():
        pairs = [(tuple(e.slot.tensor.shape), tuple(e.src_shape or ())) for e in mismatched]
        if module and all(len(d) == len(s) >= 1 and d[1:] == s[1:] for d, s in pairs):
            dst, src = pairs[0][0][0], pairs[0][1][0]
            text = (
                f"'{module}' differs in its first dimension only ({dst} in destination, {src} in source: another "
                f"number of classes or tokens?); if it is a new head, keep the destination's own with "
            )
            hints.update({e.path: Hint(text, "exclude", module) for e in mismatched})
    return hints


def legacy_weight_norm_hints(entries: list[Entry], records: list[Unexpected]) -> dict[str, Hint]:
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
    hint = Hint("the source uses the old weight_norm names (weight_g, weight_v); pass ", "rename", rename)
    return dict.fromkeys(old, hint)


def prefix_applies(problem: Problem, prefix: str, direction: str) -> bool:
    """Whether the prefix hint concerns this problem: an unexpected path carrying the prefix
    ("strip"), or a missing one lacking it ("add")."""
    kind = ProblemKind.UNEXPECTED if direction == "strip" else ProblemKind.MISSING
    path = problem.path + "."
    return problem.kind == kind and (path.startswith(prefix) or prefix.startswith(path))
