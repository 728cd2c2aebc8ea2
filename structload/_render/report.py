"""Drawing reports with rich. Reads `LoadReport` / `Diff`; never changes them.

The report tree is collapsed wherever a whole subtree had one outcome, and
runs of numbered siblings with one outcome (``blocks.0–299``) share a line, so
a 300-layer model that loaded cleanly is one line, and one with a problem in
layer 3 is a handful.
"""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from .._report import LoadReport, pickled_text
from .text import display_path, hint_text, plural
from .tree import node_at, numbered_run_end

STYLES = {
    "loaded": "green",
    "cast": "cyan",
    "zeroed": "yellow",
    "dropped": "yellow",
    "skipped": "dim",
    "excluded": "dim",
    "missing": "bold red",
    "mismatched": "bold red",
    "unexpected": "magenta",
}


class _Node:
    __slots__ = ("children", "count", "outcome", "outcomes", "signature")

    def __init__(self):
        self.children: dict[str, _Node] = {}
        self.outcome: str | None = None
        self.count = 0
        self.outcomes: set[str] = set()
        self.signature: tuple = ()  # the subtree's shape and outcomes, to spot identical siblings


def outcomes_by_path(report: LoadReport) -> dict[str, str]:
    """Every path of the report with its outcome (``cast`` for loaded paths that changed dtype)."""
    cast = {c.path for c in report.cast}
    result: dict[str, str] = {}
    for name in ("loaded", "zeroed", "dropped", "skipped", "excluded", "missing", "unexpected"):
        for path in getattr(report, name):
            result[path] = "cast" if name == "loaded" and path in cast else name
    for mismatch in report.mismatched:
        result[mismatch.path] = "mismatched"
    return result


def _build(outcomes: dict[str, str]) -> _Node:
    root = _Node()
    for path, outcome in outcomes.items():
        node_at(root, path, _Node).outcome = outcome
    _summarize(root)
    return root


def _summarize(node: _Node) -> None:
    if node.outcome is not None:
        node.count, node.outcomes = 1, {node.outcome}
    for child in node.children.values():
        _summarize(child)
        node.count += child.count
        node.outcomes |= child.outcomes
    node.signature = (node.outcome, tuple((name, c.signature) for name, c in node.children.items()))


def _label(name: str, outcome: str, count: int, subtree: bool, message: str | None) -> Text:
    text = Text(name + "  ", style="bold" if subtree else "")
    text.append(outcome + (f" ({plural(count, 'tensor')})" if subtree else ""), style=STYLES[outcome])
    if message:
        text.append(f"  {message}", style="dim" if outcome in ("loaded", "cast") else STYLES[outcome])
    return text


class _Drawing:
    """One report being drawn: its problem messages and which of them are on screen."""

    def __init__(self, messages: dict[str, str]):
        self.messages = messages
        self.drawn: set[str] = set()
        # a subtree holding a problem below its own root is never folded away
        self.unfoldable = {p.rsplit(".", k)[0] for p in messages for k in range(1, p.count(".") + 1)}

    def message(self, path: str) -> str | None:
        if path in self.messages:
            self.drawn.add(path)
        return self.messages.get(path)

    def foldable(self, path: str, node: _Node) -> bool:
        return len(node.outcomes) == 1 and path not in self.unfoldable

    def children(self, tree: Tree, node: _Node, path: str) -> None:
        items = list(node.children.items())
        i = 0
        while i < len(items):
            name, child = items[i]
            child_path = f"{path}.{name}" if path else name
            end = numbered_run_end(items, i, lambda k, first: self._alike(items, k, first, path))
            if end > i + 1:  # numbered siblings with identical subtrees: drawn once
                span = f"{name}–{items[end - 1][0]}"
                count = sum(c.count for _, c in items[i:end])
                if len(child.outcomes) == 1:
                    tree.add(_label(span, next(iter(child.outcomes)), count, True, None))
                else:
                    branch = tree.add(Text(f"{span}  (each alike, {plural(count, 'tensor')})", style="bold"))
                    self.children(branch, child, child_path)
            elif self.foldable(child_path, child):
                outcome = next(iter(child.outcomes))
                tree.add(_label(name, outcome, child.count, bool(child.children), self.message(child_path)))
            else:
                branch = tree.add(Text(name, style="bold"))
                if child_path in self.messages:
                    branch.add(Text(self.message(child_path) or "", style="red"))
                self.children(branch, child, child_path)
            i = end

    def _alike(self, items, k: int, first: int, path: str) -> bool:
        """Whether sibling `k` has a subtree identical to sibling `first`'s and no problem at or under it."""
        name, node = items[k]
        full = f"{path}.{name}" if path else name
        return full not in self.messages and full not in self.unfoldable and node.signature == items[first][1].signature


def report_tree(report: LoadReport, syntax: str = "python"):
    """The report as a rich tree, coloured by outcome, problems and hints underneath (hints that name an
    option written in `syntax`: ``"cli"`` for the command line's flags)."""
    drawing = _Drawing({p.path: p.message_in(syntax) for p in report.problems})
    root = _build(outcomes_by_path(report))
    tree = Tree(Text(report.summary(), style="bold red" if report.problems else "bold green"))
    if root.outcome is not None:  # the destination is a single tensor
        tree.add(_label(display_path(""), root.outcome, 1, False, drawing.message("")))
    else:
        drawing.children(tree, root, "")
    for path, message in drawing.messages.items():
        if path not in drawing.drawn:  # problems at paths the tree has no line for
            tree.add(Text(f"{display_path(path)}: {message}", style="red"))
    parts: list = [tree]
    if report.tied:
        parts.append(Text("tied: " + "; ".join(" = ".join(group) for group in report.tied), style="cyan"))
    if report.converted:
        converters = dict.fromkeys(c.made_by.rsplit(" of ", 1)[0] for c in report.converted)
        text = f"converted: {plural(len(report.converted), 'tensor')}, by " + "; ".join(converters)
        parts.append(Text(text, style="cyan"))
    parts += [Text(f"adapted {item}", style="cyan") for item in report.adapted]
    if report.pickled:
        parts.append(Text(f"source: {pickled_text(report.pickled)}", style="magenta"))
    parts += [Text(f"declared: {line}", style="cyan") for line in report.declared]
    parts += [Text(f"hint: {hint_text(hint, (hint,), syntax)}", style="yellow") for hint in report.hints]
    return Group(*parts)


def diff_table(result, syntax: str = "python") -> Table | Text:
    """A `Diff` as a table: one row per differing path (the footer's option written in `syntax`)."""
    if result.ok:
        return Text(f"no differences: {result.compared(syntax)}", style="green")
    table = Table(title="differences", show_lines=False)
    table.add_column("path")
    table.add_column("difference")
    for path in result.only_in_a:
        table.add_row(path, Text("only in a", style="red"))
    for path in result.only_in_b:
        table.add_row(path, Text("only in b", style="green"))
    for d in result.shape:
        table.add_row(d.path, Text(f"shape {d.to_dict()['a']} vs {d.to_dict()['b']}", style="yellow"))
    for d in result.dtype:
        table.add_row(d.path, Text(f"dtype {d.to_dict()['a']} vs {d.to_dict()['b']}", style="cyan"))
    for path in result.values:
        table.add_row(path, Text("values differ", style="magenta"))
    table.caption = f"{result.compared(syntax)}; {result.same} identical"
    return table
