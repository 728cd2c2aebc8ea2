"""Suggestions that look at shapes, for `_problems`: "did you mean" proposes only a destination
entry whose shape fits the source tensor, and a strict load whose problems look like another
implementation of the same architecture (most tensors named otherwise, their shapes pairing up)
points to ``align=True``.

>>> looks_like_another_implementation([(4, 4), (4,), (8, 4)], [(4, 4), (4,), (4, 8)], loaded=0)
True
>>> looks_like_another_implementation([(4, 4)], [(3, 3)], loaded=0)
False
"""

from __future__ import annotations

import difflib
from collections import Counter

from .._render.text import path_prefixes
from .dest import SlotKind
from .records import Entry, Status, Unexpected
from .walk import Missing

#: A suggestion for an unexpected source subtree: (the source path it is for, the destination path meant).
Suggestion = tuple[str, str]

ALIGN_HINT = (
    "most tensors are named otherwise in the source, and their shapes pair up: another implementation of "
    "the same architecture? align=True (or `structload align`) works out the mapping from structure"
)


def fits(dst_shape, src_shape) -> bool:
    """The same shape, or a matrix stored the other way round."""
    if dst_shape is None or src_shape is None:
        return True  # nothing to compare: no reason to drop the suggestion
    dst_shape, src_shape = tuple(dst_shape), tuple(src_shape)
    return dst_shape == src_shape or (len(dst_shape) == 2 and dst_shape == src_shape[::-1])


def subtree_fits(dst_shapes: list, src_shapes: list) -> bool:
    """Whether every source tensor of a subtree has a destination tensor of a fitting shape under
    the suggested destination path (as many of each shape as the source has)."""
    left = Counter(_key(s) for s in dst_shapes)
    for shape in src_shapes:
        if left[_key(shape)] <= 0:
            return False
        left[_key(shape)] -= 1
    return True


def looks_like_another_implementation(missing: list, unexpected: list, loaded: int) -> bool:
    """Most destination tensors missing (not found by name), as many unexpected in the source,
    and at least 80% of the missing shapes found among the unexpected ones."""
    if len(missing) < 2 or len(missing) < loaded or len(unexpected) < len(missing) // 2:
        return False
    have = Counter(_key(s) for s in unexpected)
    paired = 0
    for shape in missing:
        if have[_key(shape)] > 0:
            have[_key(shape)] -= 1
            paired += 1
    return paired >= 0.8 * len(missing)


def _key(shape) -> tuple:
    """Shapes equal up to a transposed matrix share a key (no shape: a key of its own)."""
    if shape is None:
        return ("?",)
    shape = tuple(shape)
    return tuple(sorted(shape)) if len(shape) == 2 else shape


def entry_shape(entry: Entry) -> tuple | None:
    tensor = entry.slot.tensor
    if entry.slot.kind == SlotKind.LAZY:  # an uninitialized parameter has no shape yet (asking raises)
        return None
    return tuple(tensor.shape) if tensor is not None and hasattr(tensor, "shape") else None


def suggest_by_sibling(unexpected: list[Unexpected], entries: list[Entry]) -> dict[int, Suggestion]:
    """The destination name each unexpected subtree was probably meant to be, among the names its
    level left unfilled (``lm_head`` -> ``head``), when the shapes under it fit."""
    suggestions: dict[int, Suggestion] = {}
    under: dict[str, list] | None = None
    for i, record in enumerate(unexpected):
        parent, _, name = record.path.rpartition(".")
        similar = _similar(name, record.beside)
        if similar:
            if under is None:  # destination shapes under every path, built only when needed
                under = {}
                for entry in entries:
                    for prefix in path_prefixes(entry.path):
                        under.setdefault(prefix, []).append(entry_shape(entry))
            meant = f"{parent}.{similar}" if parent else similar
            if subtree_fits(under.get(meant, []), [s for s in record.shapes if s is not None]):
                suggestions[i] = (record.path, meant)
    return suggestions


def _similar(name: str, candidates) -> str | None:
    if name.isdigit():
        return None
    matches = difflib.get_close_matches(name, [c for c in candidates if not c.isdigit()], n=1, cutoff=0.6)
    return matches[0] if matches else None


#: Above this many (unexpected path, candidate) pairs, path-level suggestions are skipped.
MAX_SUGGESTION_PAIRS = 100_000


def suggest_by_path(entries: list[Entry], unexpected: list[Unexpected], found: dict) -> dict[int, Suggestion]:
    """For single unexpected tensors with no sibling suggestion, the closest destination path the
    source did not fill (missing, or zeroed for lack of a bias)."""
    lone = [i for i, r in enumerate(unexpected) if i not in found and len(r.leaf_paths) == 1]
    if not lone:
        return {}
    unfilled = [
        e.path
        for e in entries
        if e.status == Status.MISSING or (e.status == Status.ZEROED and isinstance(e.leaf, Missing))
    ]
    if not unfilled or len(lone) * len(unfilled) > MAX_SUGGESTION_PAIRS:
        return {}
    by_name: dict[str, list[str]] = {}
    for path in unfilled:  # module paths holding a tensor of each name
        parent, _, name = path.rpartition(".")
        by_name.setdefault(name, []).append(parent)
    shapes = {e.path: entry_shape(e) for e in entries}
    suggestions = {}
    for i in lone:
        leaf_path = unexpected[i].leaf_paths[0]
        parent, _, name = leaf_path.rpartition(".")
        shape = unexpected[i].shapes[0] if unexpected[i].shapes else None
        fitting = [p for p in by_name.get(name, []) if fits(shapes.get(f"{p}.{name}"), shape)]
        match = difflib.get_close_matches(parent, fitting, n=1, cutoff=0.6)
        if parent and match:
            suggestions[i] = (leaf_path, f"{match[0]}.{name}")
    return suggestions
