"""The outcome of a load as plain data: `LoadReport`, `Problem`, `LoadError`.

Nothing here knows how to draw itself beyond plain text; the rich tree lives
in `_render.py` and only reads these objects.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum

import torch

from ._render.text import Hint, display_path, dtype_text, hint_text, plural, shape_text


class ProblemKind(StrEnum):
    """What kind of problem a `Problem` is. Members are strings: ``kind == "missing"`` holds."""

    MISSING = "missing"  # the destination expects a tensor the source lacks
    UNEXPECTED = "unexpected"  # the source holds a tensor the destination has no place for
    SHAPE = "shape"  # shapes differ (R1), or a converter cannot make its output
    ABSENT = "absent"  # a non-zero source tensor for a destination registered as None (R3)
    TIED = "tied"  # tied destination paths given different values (R4)
    TYPE = "type"  # a value that is not a tensor, or a tensor that cannot go there
    SOURCE = "source"  # the source itself is unreadable or inconsistent
    PATTERN = "pattern"  # an include / exclude / rename pattern (or an align hint) that matches nothing
    AMBIGUOUS = "ambiguous"  # tensors `align` cannot tell apart (same shape, no name evidence)


@dataclass(frozen=True)
class Problem:
    """One thing that stops a strict load, found at one path.

    `kind` is one of ``missing``, ``unexpected``, ``shape``, ``absent``,
    ``tied``, ``type`` or ``source``; `path` is a dotted destination path (for
    ``unexpected``, the source path after `rename`); `message` says what is
    wrong and, where it can, what to do. When that advice names a load option,
    `hint` holds it as a `Hint`, and ``message_in("cli")`` writes the option as
    the command line's flags.

    Examples:
        >>> str(Problem("shape", "fc.weight", "shape (3, 4) in destination, (4, 4) in source"))
        'fc.weight: shape (3, 4) in destination, (4, 4) in source'
    """

    kind: ProblemKind
    path: str
    message: str
    #: the advice in `message` that names a load option, as data (`Hint`): the command line writes it as flags
    hint: Hint | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", ProblemKind(self.kind))  # a plain string is checked and converted

    def __str__(self) -> str:
        return f"{display_path(self.path)}: {self.message}"

    def message_in(self, syntax: str) -> str:
        """`message` with its hint's option written in `syntax`: ``"python"`` (as `message` has it)
        or ``"cli"`` (``--exclude head`` for ``exclude="head"``)."""
        return hint_text(self.message, (self.hint,), syntax) if self.hint is not None else self.message

    def to_dict(self) -> dict:
        return {"kind": self.kind.value, "path": self.path, "message": self.message}


@dataclass(frozen=True)
class Mismatch:
    """A destination tensor the source could not fill as it is.

    `kind` is ``"shape"`` (the shapes differ), ``"type"`` (the source holds
    something that is not a tensor there) or ``"tied"`` (tied paths were
    given different values). `src_shape` is ``None`` when the source has no
    shape at that path.
    """

    path: str
    dst_shape: tuple[int, ...]
    src_shape: tuple[int, ...] | None
    kind: ProblemKind = ProblemKind.SHAPE

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", ProblemKind(self.kind))

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "kind": self.kind.value,
            "dst_shape": list(self.dst_shape),
            "src_shape": None if self.src_shape is None else list(self.src_shape),
        }


@dataclass(frozen=True)
class Cast:
    """A tensor whose values were converted to the destination's dtype (rule R1)."""

    path: str
    src_dtype: torch.dtype
    dst_dtype: torch.dtype

    def to_dict(self) -> dict:
        return {"path": self.path, "src_dtype": dtype_text(self.src_dtype), "dst_dtype": dtype_text(self.dst_dtype)}


@dataclass(frozen=True)
class Converted:
    """A destination tensor made by converters: which ones, from which source paths."""

    path: str
    made_by: str
    sources: tuple[str, ...]

    def to_dict(self) -> dict:
        return {"path": self.path, "made_by": self.made_by, "sources": list(self.sources)}


@dataclass(frozen=True)
class Adapted:
    """A destination tensor an adapter of ``load(adapt=...)`` made from a source tensor of another
    shape; `adapter` is the adapter itself (its repr shows its name and parameters)."""

    path: str
    src_shape: tuple[int, ...]
    dst_shape: tuple[int, ...]
    adapter: object

    def __str__(self) -> str:
        return f"{self.path}: {shape_text(self.src_shape)} -> {shape_text(self.dst_shape)} by {self.adapter!r}"

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "src_shape": list(self.src_shape),
            "dst_shape": list(self.dst_shape),
            "adapter": repr(self.adapter),
        }


@dataclass
class LoadReport:
    """What a load did, or would do, path by path.

    Each destination state path lands in exactly one of `loaded`, `missing`,
    `skipped`, `excluded`, `zeroed` or `mismatched` (paths of a tied group
    that the group's single write fills are listed as `loaded`, and the group
    itself in `tied`). `unexpected` holds source paths (after `rename`) that
    match nothing in the destination; `ignored` holds the paths of destination
    non-persistent buffers the source also has (not state: the destination
    computes them, R5); `dropped` holds destination paths
    registered as absent whose source tensor was all zeros.

    `converted` lists the destination tensors made by ``convert=`` converters;
    `adapted` those made by ``adapt=`` adapters from a source of another shape (`Adapted`);
    `mapped` those that ``mmap=True`` made views of the mapped file (no copy).
    `torn` names the tensor a load that failed while reading it may have left
    partly written (some bytes new, some old); it is not in `loaded`.
    `pickled` maps source paths to the type names of objects in a torch file's
    pickle that were read without importing their code (a whole pickled model's
    modules: ``{"": "models.yolo.DetectionModel", "model.0": ...}``).
    `declared` lists the checkpoint conversions the destination's own library
    declares and the load applied (transformers' renamings and converters for
    its models), one line per transform with how many entries it touched.
    `applied` is ``False`` for a dry run and for a strict load that raised:
    the lists then describe what the load would have done.

    Examples:
        >>> import torch, structload as sl
        >>> report = sl.load(torch.nn.Linear(2, 2, bias=False), {"weight": torch.ones(2, 2), "bias": torch.zeros(2)})
        >>> report.loaded, report.dropped, report.ok
        (['weight'], ['bias'], True)
    """

    target: str = ""
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)
    zeroed: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    mismatched: list[Mismatch] = field(default_factory=list)
    cast: list[Cast] = field(default_factory=list)
    tied: list[tuple[str, ...]] = field(default_factory=list)
    converted: list[Converted] = field(default_factory=list)
    adapted: list[Adapted] = field(default_factory=list)
    mapped: list[str] = field(default_factory=list)
    torn: list[str] = field(default_factory=list)
    pickled: dict[str, str] = field(default_factory=dict)
    declared: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    hints: list[str] = field(default_factory=list)
    applied: bool = True

    @property
    def ok(self) -> bool:
        """``True`` when the load found no problem."""
        return not self.problems

    @property
    def missing_keys(self) -> list[str]:
        """Alias of `missing`, as in `load_state_dict`'s return value."""
        return self.missing

    @property
    def unexpected_keys(self) -> list[str]:
        """Alias of `unexpected`, as in `load_state_dict`'s return value."""
        return self.unexpected

    def counts(self) -> dict[str, int]:
        """How many paths each outcome holds, for summaries."""
        names = ("loaded", "zeroed", "dropped", "skipped", "excluded", "ignored", "missing", "unexpected", "mismatched")
        return {name: len(getattr(self, name)) for name in names}

    def summary(self) -> str:
        """One line: what happened to how many tensors, and how many problems.

        Examples:
            >>> LoadReport(target="Net", loaded=["a", "b"], missing=["c"],
            ...            problems=[Problem("missing", "c", "missing in source")]).summary()
            'Net: 2 loaded, 1 missing; 1 problem (1 missing)'
        """
        parts = [f"{n} {name}" for name, n in self.counts().items() if n]
        if self.cast:
            parts.append(f"{len(self.cast)} cast")
        if self.adapted:
            parts.append(f"{len(self.adapted)} adapted")
        text = f"{self.target}: " + (", ".join(parts) or "nothing to load")
        if self.problems:
            text += f"; {_problem_summary(self.problems)}"
        if not self.applied:
            text += " (nothing written)"
        return text

    def to_dict(self) -> dict:
        """The report as JSON-serialisable data (lists, strings, numbers)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["mismatched"] = [m.to_dict() for m in self.mismatched]
        data["cast"] = [c.to_dict() for c in self.cast]
        data["tied"] = [list(group) for group in self.tied]
        data["converted"] = [c.to_dict() for c in self.converted]
        data["adapted"] = [a.to_dict() for a in self.adapted]
        data["problems"] = [p.to_dict() for p in self.problems]
        data["ok"] = self.ok
        return data

    def __str__(self) -> str:
        lines = [self.summary()]
        if self.pickled:
            lines.append(f"  source: {pickled_text(self.pickled)}")
        lines += [f"  adapted {item}" for item in self.adapted]
        lines += [f"  declared: {line}" for line in self.declared]
        lines += [f"  {problem}" for problem in self.problems]
        lines += [f"  hint: {hint}" for hint in self.hints]
        return "\n".join(lines)

    def __rich__(self):
        from ._render.report import report_tree

        return report_tree(self)


def pickled_text(pickled: dict[str, str]) -> str:
    """``a pickled models.Net (3 types), read without running its code``."""
    kinds = len(set(pickled.values()))
    what = f"a pickled {pickled['']}" if "" in pickled else f"pickled objects ({', '.join(list(pickled.values())[:3])})"
    return f"{what} ({plural(kinds, 'type')}), read without importing or running its code"


def _kind_counts(problems: list[Problem]) -> str:
    """``1 shape, 1 unexpected``: kinds in the order they first appear."""
    by_kind = Counter(p.kind for p in problems)
    return ", ".join(f"{n} {kind}" for kind, n in by_kind.items())


def _problem_summary(problems: list[Problem]) -> str:
    return f"{plural(len(problems), 'problem')} ({_kind_counts(problems)})"


class LoadError(ValueError):
    """A strict load found problems; nothing in the destination was written.

    `problems` lists every problem (not only the first) and `report` the full
    `LoadReport`. The message starts with a one-line summary, then one line
    per problem beginning with its path.

    Examples:
        >>> import torch, structload as sl
        >>> try:
        ...     sl.load(torch.nn.Linear(2, 3), {"weight": torch.ones(2, 2), "bais": torch.ones(3)})
        ... except sl.LoadError as error:
        ...     print(error)
        2 problems loading into Linear (1 shape, 1 unexpected)
          weight: shape (3, 2) in destination, (2, 2) in source
          bais: unexpected in source; did you mean 'bias'?
    """

    def __init__(self, problems: list[Problem], report: LoadReport | None = None, message: str | None = None):
        self.problems = list(problems)
        self.report = report
        if message is None:  # the summary line, then one line per problem
            target = report.target if report is not None else "destination"
            lines = [f"{plural(len(self.problems), 'problem')} loading into {target} ({_kind_counts(self.problems)})"]
            message = "\n".join(lines + [f"  {problem}" for problem in self.problems])
        super().__init__(message)


class SourceError(LoadError):
    """A source that cannot be read: missing file, unknown format, corrupt data.

    The message names the file (or source path) and what is wrong.
    """

    def __init__(self, message: str, path: str = "", report: LoadReport | None = None):
        super().__init__([Problem(ProblemKind.SOURCE, path, message)], report, message=message)
