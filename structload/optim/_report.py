"""The report of an optimizer load: a `LoadReport` whose summary says what it counts.

Its lists hold state entries, ``param_path.state_key`` (``fc1.weight.exp_avg``),
while a parameter whose whole state the source lacks is one problem at the
parameter's path (`_load.by_parameter`). The summary counts state entries
and, where entries of several parameters are counted together, of how many
parameters, so that its counts and the problems' agree.
"""

from __future__ import annotations

import dataclasses

from .._report import LoadReport, _problem_summary


class OptimizerReport(LoadReport):
    """A `LoadReport` of optimizer state by parameter path.

    Examples:
        >>> report = OptimizerReport(target="Adam", loaded=["a.weight.step", "a.weight.exp_avg"],
        ...                          missing=["b.weight.step", "b.weight.exp_avg", "c.bias.step"])
        >>> report.summary()
        'Adam: 2 state entries loaded (of 1 parameter), 3 missing (of 2 parameters)'
    """

    def summary(self) -> str:
        parts = []
        for name, paths in self._outcomes().items():
            parameters = len({path.rsplit(".", 1)[0] for path in paths})
            of = f" (of {parameters} parameter{'' if parameters == 1 else 's'})" if parameters != len(paths) else ""
            parts.append(f"{len(paths)} {name}{of}")
        if parts:
            parts[0] = parts[0].replace(" ", f" state {'entry' if parts[0].startswith('1 ') else 'entries'} ", 1)
        parts += [f"{len(self.cast)} cast"] if self.cast else []
        text = f"{self.target}: " + (", ".join(parts) or "no state to load")
        if self.problems:
            text += f"; {_problem_summary(self.problems)}"
        return text if self.applied else text + " (nothing written)"

    def _outcomes(self) -> dict[str, list[str]]:
        """The paths of each outcome the summary counts (`LoadReport.counts`' names), in its order."""
        paths = {name: getattr(self, name) for name in self.counts() if name != "mismatched"}
        paths["mismatched"] = [m.path for m in self.mismatched]
        return {name: paths[name] for name in self.counts() if paths[name]}


def optimizer_report(report: LoadReport) -> OptimizerReport:
    """`report` as an `OptimizerReport` (the plan makes a plain one)."""
    return OptimizerReport(**{f.name: getattr(report, f.name) for f in dataclasses.fields(report)})
