"""`Verification`: what `structload.verify` found, as plain data, and how it prints.

>>> v = Verification(rtol=1e-4, atol=1e-5, compared=[Compared("fc", "dense", 0, 0.0, 0.0, ((2, 3), (2, 3)), True)])
>>> v.ok, v.summary()
(True, 'verification: 1 module compared, all agree (rtol 0.0001, atol 1e-05)')
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from .._render.text import display_path, plural, shape_text
from .._report import Problem


class Compared(NamedTuple):
    """One paired call: the model's module `path` against the reference's `reference_path` (their
    `call`-th run), the largest absolute and relative errors of their outputs, the shapes of the
    worst output tensor (model's, reference's), and whether they agree within the tolerances."""

    path: str
    reference_path: str
    call: int
    max_abs: float
    max_rel: float
    shapes: tuple[tuple[int, ...], tuple[int, ...]]
    agree: bool

    def to_dict(self) -> dict:
        return {**self._asdict(), "shapes": [list(s) for s in self.shapes]}


class Unpaired(NamedTuple):
    """A module that ran on one side only (``side`` is ``"model"`` or ``"reference"``)."""

    side: str
    path: str


@dataclass(frozen=True)
class Divergence:
    """The first paired module whose inputs agree and whose outputs do not.

    `message` names the tensors loaded into the module and what commonly causes such a
    difference for its kind; `inputs_reordered` is true when its inputs agree only up to the order
    of their elements (a flatten order).
    """

    path: str
    reference_path: str
    max_abs: float
    max_rel: float
    shapes: tuple[tuple[int, ...], tuple[int, ...]]
    message: str
    inputs_reordered: bool = False

    def to_dict(self) -> dict:
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data["shapes"] = [list(s) for s in self.shapes]
        return data

    def headline(self) -> str:
        where = display_path(self.path)
        if self.reference_path != self.path:
            where += f" (reference: {display_path(self.reference_path)})"
        mine, theirs = self.shapes
        shapes = shape_text(mine) if mine == theirs else f"{shape_text(mine)} vs {shape_text(theirs)}"
        return f"first divergence at {where}: max abs error {self.max_abs:.3g}, max rel {self.max_rel:.3g}, {shapes}"


@dataclass
class Verification:
    """Whether the model computes what the reference computes, module by module.

    `ok` is true when every paired module agreed; `first_divergence` is the first module (in
    execution order) whose inputs agree and whose outputs do not, or ``None``; `compared` holds every
    paired call with its error, in execution order; `unpaired` the modules that ran on one side only;
    `problems` what was wrong with the request itself (a ``rename=`` key that renamed nothing, as a
    ``pattern`` problem, as `load` reports it): then `ok` is false, since the modules it was meant to
    pair were compared by path or not at all.
    """

    rtol: float
    atol: float
    compared: list[Compared] = field(default_factory=list)
    unpaired: list[Unpaired] = field(default_factory=list)
    first_divergence: Divergence | None = None
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and all(c.agree for c in self.compared)

    @property
    def disagreeing(self) -> list[Compared]:
        return [c for c in self.compared if not c.agree]

    def summary(self) -> str:
        n = len(self.compared)
        verdict = f"{len(self.disagreeing)} disagree" if self.disagreeing else "all agree"
        text = f"verification: {plural(n, 'module')} compared, {verdict} (rtol {self.rtol:g}, atol {self.atol:g})"
        if self.unpaired:
            text += f"; {plural(len(self.unpaired), 'module')} ran on one side only"
        if self.problems:
            text += f"; {plural(len(self.problems), 'problem')} with the request"
        return text

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "rtol": self.rtol,
            "atol": self.atol,
            "first_divergence": self.first_divergence.to_dict() if self.first_divergence else None,
            "compared": [c.to_dict() for c in self.compared],
            "unpaired": [u._asdict() for u in self.unpaired],
            "problems": [p.to_dict() for p in self.problems],
        }

    def __str__(self) -> str:
        lines = [self.summary()]
        lines += [f"  {p.path}: {p.message}" for p in self.problems]
        if self.first_divergence is not None:
            lines.append("  " + self.first_divergence.headline())
            lines += ["    " + line for line in self.first_divergence.message.splitlines()]
        shown = self.first_divergence.path if self.first_divergence is not None else None
        later = [c for c in self.disagreeing if c.path != shown][:10]
        if later:
            lines.append("  then disagree: " + ", ".join(display_path(c.path) for c in later))
        for side in ("model", "reference"):
            paths = _distinct(u.path for u in self.unpaired if u.side == side)
            if paths:
                lines.append(f"  ran in the {side} only: " + _listed(paths))
        return "\n".join(lines)

    def __rich__(self):
        from rich.console import Group
        from rich.panel import Panel
        from rich.table import Table
        from rich.text import Text

        parts: list = [Text(self.summary(), style="green" if self.ok else "bold red")]
        parts += [Text(f"{p.path}: {p.message}", style="red") for p in self.problems]
        divergence = self.first_divergence
        if divergence is not None:
            parts.append(Panel(divergence.message, title=divergence.headline(), title_align="left", style="red"))
        if self.disagreeing:
            table = Table("module", "reference", "max abs", "max rel", "shape")
            for c in self.disagreeing[:20]:
                style = "bold red" if divergence is not None and c.path == divergence.path else None
                row = (display_path(c.path), display_path(c.reference_path), f"{c.max_abs:.3g}", f"{c.max_rel:.3g}")
                table.add_row(*row, shape_text(c.shapes[0]), style=style)
            parts.append(table)
        for side in ("model", "reference"):
            paths = _distinct(u.path for u in self.unpaired if u.side == side)
            if paths:
                parts.append(Text(f"ran in the {side} only: " + _listed(paths), style="dim"))
        return Group(*parts)


def _distinct(paths) -> list[str]:
    return list(dict.fromkeys(paths))


def _listed(paths: list[str], most: int = 12) -> str:
    shown = ", ".join(display_path(p) for p in paths[:most])
    return shown + (f" and {len(paths) - most} more" if len(paths) > most else "")
