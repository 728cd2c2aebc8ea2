"""`Alignment`: what `structload.align` worked out, as plain data, and how it prints.

An alignment is a plan of ``rename`` and ``convert`` for `load`, plus the
evidence behind each match and everything it could not decide. `code()` turns
it into Python you can read, edit and paste; ``str()`` and rich draw a table
destination <-> source with the evidence.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .._rename import OptionalKey
from .._render.text import plural


@dataclass(frozen=True)
class Match:
    """A destination tensor and the source tensor(s) it is made from.

    `src` has one path, or several for a tensor made by ``Concat``; `converters`
    are the converters (from `alignment.convert`) that act on it; `evidence`
    says why the match holds (``"name"``, ``"vocabulary: 'c_attn' is qkv"``,
    ``"shape (768, 768)"``, ``"sibling layout: ..."``).
    """

    dst: str
    src: tuple[str, ...]
    converters: tuple = ()
    evidence: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {
            "dst": self.dst,
            "src": list(self.src),
            "converters": [str(c) for c in self.converters],
            "evidence": list(self.evidence),
        }


@dataclass(frozen=True)
class Ambiguity:
    """Destination and source tensors that structure cannot tell apart, and why; never matched."""

    dst: tuple[str, ...]
    src: tuple[str, ...]
    reason: str

    def to_dict(self) -> dict:
        return {"dst": list(self.dst), "src": list(self.src), "reason": self.reason}


@dataclass
class Alignment:
    """The mapping from a source's names and layouts to a destination's, with its evidence.

    `rename` and `convert` are ready for `load`: ``sl.load(dst, src,
    rename=m.rename, convert=m.convert)`` loads exactly what ``sl.load(dst, src,
    align=m)`` does. `matched` holds a `Match` per destination tensor (tensors
    tied to a matched one count as matched); `ambiguous` what structure cannot
    decide; `unmatched_dst` / `unmatched_src` the rest; `ignored` the source
    entries that land on destination non-persistent buffers. `ok` is true when
    everything matched and nothing is ambiguous.
    """

    rename: dict[str, str | None] = field(default_factory=dict)
    convert: list = field(default_factory=list)
    matched: list[Match] = field(default_factory=list)
    ambiguous: list[Ambiguity] = field(default_factory=list)
    unmatched_dst: list[str] = field(default_factory=list)
    unmatched_src: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    divergence: str | None = None  # where two unrelated trees part (depths differ), with both counts
    unmatched_hints: list[str] = field(default_factory=list)  # `hints` keys refused (see `hint_problems`)
    hint_problems: dict[str, str] = field(default_factory=dict)  # a refused hint's key -> why, naming the side
    # every path of each side that is matched or ambiguous, for collapsing the rest by subtree
    claimed_dst: set[str] = field(default_factory=set, repr=False, compare=False)
    claimed_src: set[str] = field(default_factory=set, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return not (
            self.unmatched_dst or self.unmatched_src or self.ambiguous or self.divergence or self.unmatched_hints
        )

    def code(self) -> str:
        """Runnable Python (public API only) defining ``rename`` and ``convert``; what is ambiguous
        or unmatched is listed in comments, to edit."""
        lines = []
        names = sorted({type(c).__name__ for c in self.convert})
        if any(isinstance(key, OptionalKey) for key in self.rename):
            lines.append("import structload as sl")
        if names:
            lines.append(f"from structload.convert import {', '.join(names)}")
        if lines:
            lines.append("")
        lines.append("rename = {")
        lines += [f"    {_key(pattern)}: {_raw(replacement)}," for pattern, replacement in self.rename.items()]
        lines.append("}")
        lines.append("convert = [")
        lines += [f"    {converter!r}," for converter in self.convert]
        lines.append("]")
        if self.divergence:
            lines.append(f"# the trees diverge: {self.divergence}")
        lines += [f"# {self.hint_problems.get(glob, f'hint {glob!r} refused')}" for glob in self.unmatched_hints]
        for ambiguity in self.ambiguous:
            lines.append(f"# ambiguous: {', '.join(ambiguity.dst)} <- {', '.join(ambiguity.src)}: {ambiguity.reason}")
            lines.append(
                f'#   pin it with hints={{"{ambiguity.dst[0]}": "{ambiguity.src[0]}"}} (or the other way round)'
            )
        if self.unmatched_dst:
            lines.append(
                f"# unmatched in destination ({len(self.unmatched_dst)}): {', '.join(self.unmatched_dst[:20])}"
            )
        if self.unmatched_src:
            lines.append(f"# unmatched in source ({len(self.unmatched_src)}): {', '.join(self.unmatched_src[:20])}")
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "rename": {k: v if v is None or isinstance(v, str) else repr(v) for k, v in self.rename.items()},
            "convert": [repr(c) for c in self.convert],
            "matched": [m.to_dict() for m in self.matched],
            "ambiguous": [a.to_dict() for a in self.ambiguous],
            "unmatched_dst": self.unmatched_dst,
            "unmatched_src": self.unmatched_src,
            "ignored": self.ignored,
            "divergence": self.divergence,
            "code": self.code(),
        }

    def summary(self) -> str:
        parts = [f"{plural(len(self.matched), 'tensor')} matched"]
        if self.ambiguous:
            parts.append(f"{len(self.ambiguous)} ambiguous")
        if self.unmatched_dst:
            parts.append(f"{len(self.unmatched_dst)} unmatched in destination")
        if self.unmatched_src:
            parts.append(f"{len(self.unmatched_src)} unmatched in source")
        if self.divergence:
            parts.append(f"diverging: {self.divergence}")
        return "alignment: " + ", ".join(parts)

    def __str__(self) -> str:
        lines = [self.summary()]
        for match in self.matched:
            how = "; ".join(match.evidence)
            lines.append(f"  {match.dst} <- {', '.join(match.src)}  ({how})")
        lines += [f"  ambiguous: {', '.join(a.dst)} <- {', '.join(a.src)}: {a.reason}" for a in self.ambiguous]
        return "\n".join(lines)

    def __rich__(self):
        from rich.table import Table

        table = Table(title=self.summary())
        table.add_column("destination")
        table.add_column("source")
        table.add_column("evidence", style="dim")
        for match in self.matched:
            table.add_row(match.dst, "\n".join(match.src), "; ".join(match.evidence))
        for ambiguity in self.ambiguous:
            table.add_row("\n".join(ambiguity.dst), "\n".join(ambiguity.src), f"[red]ambiguous: {ambiguity.reason}")
        for path in self.unmatched_dst:
            table.add_row(path, "[red]-", "")
        for path in self.unmatched_src:
            table.add_row("[red]-", path, "")
        return table


def by_subtree(paths: list[str], claimed: set[str]) -> list[tuple[str, int]]:
    """`paths` (unmatched tensors) as (path, count): the highest module whose tensors are all in
    `paths` (none `claimed`) stands for them, so an error has one line per subtree.

    >>> by_subtree(["a.x.weight", "a.x.bias", "a.y.weight", "b.weight"], {"a.y.bias", "c.weight"})
    [('a.x', 2), ('a.y.weight', 1), ('b.weight', 1)]
    """
    blocked = {prefix for path in claimed for prefix in _prefixes(path)}
    counts: dict[str, list] = {}
    for path in paths:
        top = next((p for p in _prefixes(path) if p not in blocked), path)
        counts.setdefault(top, [path, 0])[1] += 1
    return [(top if n > 1 else first, n) for top, (first, n) in counts.items()]


def _prefixes(path: str) -> list[str]:
    parts = path.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def _key(pattern: str) -> str:
    return repr(pattern) if isinstance(pattern, OptionalKey) else _raw(pattern)


def _raw(text) -> str:
    """A Python literal for a pattern or replacement, raw when it holds backslashes."""
    if text is None:
        return "None"
    if not isinstance(text, str):  # a function of the match (`_align_rules.Shifted`): its code
        return repr(text)
    if "\\" in text and not text.endswith("\\") and '"' not in text:
        return f'r"{text}"'
    if '"' not in text and "\\" not in text:
        return f'"{text}"'
    return repr(text)
