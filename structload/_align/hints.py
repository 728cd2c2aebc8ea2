"""``hints`` of `align`: each hint becomes pins (destination tensor -> source tensor) or is refused
with a reason, before any matching; a hint is never silently unused.

A hint is ``{dst_glob: src_glob}`` (fnmatch on dotted paths, ``*`` spans dots), matched against a
tensor's path or its module's path. Each destination tensor the left side names is pinned to the
one source tensor the right side names with the same parameter name (``weight`` to ``weight``),
in the same numbered block when several blocks match, and a shape that fits. When any of them
has no such partner, or several, the whole hint is refused, and the reason says which side
failed.

>>> from structload._align.match import Leaf
>>> dst = [Leaf("alpha.weight", (4, 4), None, None, "alpha.weight")]
>>> src = [Leaf("zeta.weight", (4, 4), None, None, "zeta.weight"), Leaf("eta.weight", (3,), None, None, "eta.weight")]
>>> resolve_hints({"alpha": "zeta"}, dst, src)
({'alpha.weight': ('zeta.weight', "'alpha' = 'zeta'", 'alpha')}, {})
>>> resolve_hints({"alpha": "eta"}, dst, src)[1]["alpha"]
"hint 'alpha' = 'eta': destination 'alpha.weight' (4, 4) does not fit source 'eta.weight' (3,)"
>>> resolve_hints({"alpah": "zeta"}, dst, src)[1]["alpah"]
"hint 'alpah' matches no destination path; did you mean 'alpha'? (the destination side of 'alpah' = 'zeta')"
"""

from __future__ import annotations

import difflib
import fnmatch

from .._render.text import shape_text
from .match import Leaf, _fits


def resolve_hints(
    hints: dict[str, str], dst: list[Leaf], src: list[Leaf]
) -> tuple[dict[str, tuple[str, str, str]], dict[str, str]]:
    """The pins (destination path -> (source path, the hint as text, its destination glob)) and
    the refused hints (destination glob -> why)."""
    pins: dict[str, tuple[str, str, str]] = {}
    refused: dict[str, str] = {}
    pinned_src: dict[str, str] = {}
    for dst_glob, src_glob in hints.items():
        text = f"{dst_glob!r} = {src_glob!r}"
        found, why = _pins_of(dst_glob, src_glob, dst, src)
        taken = [s for s in found.values() if s in pinned_src]
        if why is None and taken:
            why = f"source '{taken[0]}' is already pinned by hint {pinned_src[taken[0]]}"
        if why is not None and not why.startswith("matches no destination path"):
            refused[dst_glob] = f"hint {text}: {why}"
        if why is not None:
            refused.setdefault(dst_glob, f"hint {dst_glob!r} {why} (the destination side of {text})")
            continue
        for d, s in found.items():
            pins[d] = (s, text, dst_glob)
            pinned_src[s] = text
    return pins, refused


def _pins_of(dst_glob: str, src_glob: str, dst: list[Leaf], src: list[Leaf]) -> tuple[dict[str, str], str | None]:
    ds = [leaf for leaf in dst if _glob(dst_glob, leaf)]
    ss = [leaf for leaf in src if _glob(src_glob, leaf)]
    if not ds:
        return {}, "matches no destination path" + _closest(dst_glob, dst)
    if not ss:
        return {}, f"the source side {src_glob!r} matches no source path" + _closest(src_glob, src)
    found: dict[str, str] = {}
    for d in ds:
        options = [s for s in ss if s.param == d.param] if len(ss) > 1 else ss
        if len(options) > 1:  # several blocks: the one with the same block numbers
            options = [s for s in options if _numbers(s.path) == _numbers(d.path)]
        fitting = [s for s in options if _fits(d, s)]
        if len(fitting) == 1:
            found[d.path] = fitting[0].path
        elif len(options) == 1:
            s = options[0]
            return (
                {},
                f"destination '{d.path}' {shape_text(d.shape)} does not fit source '{s.path}' {shape_text(s.shape)}",
            )
        elif not fitting:
            return {}, f"the source side {src_glob!r} has no tensor for destination '{d.path}' {shape_text(d.shape)}"
        else:
            names = ", ".join(f"'{s.path}'" for s in fitting[:3])
            return {}, f"destination '{d.path}' fits {len(fitting)} source tensors ({names}): narrow the source side"
    return found, None


def _glob(pattern: str, leaf: Leaf) -> bool:
    return fnmatch.fnmatchcase(leaf.path, pattern) or fnmatch.fnmatchcase(leaf.path.rpartition(".")[0], pattern)


def _numbers(path: str) -> tuple[str, ...]:
    return tuple(part for part in path.split(".") if part.isdigit())


def _closest(pattern: str, leaves: list[Leaf]) -> str:
    names = sorted({leaf.path.rpartition(".")[0] for leaf in leaves} | {leaf.path for leaf in leaves})
    close = difflib.get_close_matches(pattern, names, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""
