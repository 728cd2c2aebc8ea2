"""The side-by-side walk: destination and source trees, node by node.

At each destination container the walk pairs its children with the source
node's children by name. A destination child the source lacks becomes
`Missing` at that point, so a whole missing submodule is one root; a source
child the destination lacks becomes one `Unexpected` record for its whole
subtree. At each slot it asks the rules table (`_rules.decide`) what to do.

The walk reads no tensor data (only R3's zero test does, inside its rule)
and writes nothing: it produces `Entry` records, in module order, for
`_plan` to turn into problems and actions.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from ._dest import TENSOR, Slot, as_dest, dest_children, is_container
from ._report import shape_text
from ._rules import EXCLUDED, NO_BIAS, NOTHING, Clash, Missing, decide
from ._select import Selection
from .sources import SKIP, SourceTensor, iter_leaves
from .sources import ABSENT as ABSENT_LEAF

_NOTHING = object()


class Entry:
    """What the load does at one destination path."""

    __slots__ = ("path", "slot", "leaf", "status", "problem", "root", "src_shape", "mismatch", "write", "group")

    def __init__(self, path: str, slot: Slot, leaf, status: str, problem=None, root=None, src_shape=None):
        self.path = path
        self.slot = slot
        self.leaf = leaf  # the source leaf (or marker) the rule saw
        self.status = status
        self.problem = problem  # (kind, message) of a problem at this path, or None
        self.root = root  # the subtree root a Missing / Clash came from
        self.src_shape = src_shape
        self.mismatch = "shape" if problem and problem[0] == "shape" else "type"
        self.write = True  # False for the tied paths whose tensor another entry writes
        self.group = None  # every entry sharing this tensor (weight tying), when more than one

    def __repr__(self) -> str:
        return f"Entry({self.path!r}, {self.status})"


@dataclass
class Unexpected:
    """A source subtree (or leaf) at `path` with no destination counterpart."""

    path: str
    leaf_paths: list[str]
    position: int  # how many entries came before it, to keep walk order
    suggestion: str | None = None


@dataclass
class Walk:
    """Everything the walk found, for `_plan` to judge."""

    entries: list[Entry] = field(default_factory=list)
    unexpected: list[Unexpected] = field(default_factory=list)
    by_tensor: dict[int, list[Entry]] = field(default_factory=dict)
    lengths: dict[str, int] = field(default_factory=dict)  # numbered container -> entries in the shorter source
    clashes: dict[str, str] = field(default_factory=dict)  # subtree root -> message
    suggestions: dict[str, str] = field(default_factory=dict)  # missing root -> similar source path


def walk(dst, tree, selection: Selection) -> Walk:
    """Walk `dst` and the source `tree` together and record an `Entry` per destination path."""
    root = as_dest(dst)
    if root is None:
        raise TypeError(f"structload: cannot load into {type(dst).__name__}; expected a module, a tensor or a pytree of tensors")
    walker = _Walker(selection)
    if is_container(root):
        walker.container(root, tree, "", selection.include is None)
    else:
        walker.slot(root, tree, "")
    return walker.found


class _Walker:
    def __init__(self, selection: Selection):
        self.selection = selection
        self.found = Walk()

    def container(self, node, src, path: str, included: bool) -> None:
        kids = dest_children(node)
        src_is_node = type(src) is dict
        marker = None if src_is_node else self._marker(src, path)
        missing_names = []
        # R3: a source node that matches this module (shares a name with it) but has no
        # `bias` entry is the checkpoint of a bias-free module
        matches = src_is_node and any(name in src for name, _ in kids)
        for name, child in kids:
            child_path = f"{path}.{name}" if path else name
            child_src = marker
            if src_is_node:
                child_src = src.get(name, _NOTHING)
                if child_src is _NOTHING:
                    is_bias = name == "bias" and matches and not is_container(child)
                    child_src = NO_BIAS if is_bias else Missing(child_path)
                    missing_names.append(name)
            verdict = self._enter(child_path, child, included)
            if verdict is None or (verdict is False and not is_container(child)):
                self.exclude(child, child_path)
            elif is_container(child):
                self.container(child, child_src, child_path, verdict)
            else:
                self.slot(child, child_src, child_path)
        if src_is_node:
            self._unexpected(path, kids, src, missing_names)

    def _enter(self, path: str, child, included: bool):
        """The selection's verdict; `filter` sees modules, containers and tensors only."""
        if self.selection.everything:
            return True
        if isinstance(child, Slot):
            if child.kind != TENSOR:
                return self.selection.enter(path, None, included, ask_filter=False)
            return self.selection.enter(path, child.tensor, included)
        return self.selection.enter(path, child, included)

    def _marker(self, src, path: str):
        """What every slot under a container gets when the source has no subtree there."""
        if src is SKIP or isinstance(src, (Missing, Clash)):
            return src
        if src is ABSENT_LEAF:
            message = "a subtree in destination, False in source (False marks one absent tensor; None skips a subtree)"
        elif isinstance(src, SourceTensor):
            message = f"a subtree in destination, a tensor of shape {shape_text(src.shape)} in source"
        else:
            message = f"a subtree in destination; in source, {getattr(src, 'reason', type(src).__name__)}"
        self.found.clashes[path] = message
        return Clash(path, message)

    def slot(self, slot: Slot, src, path: str) -> None:
        verdict = decide(slot, src)
        problem = (verdict.problem_kind, verdict.message) if verdict.problem_kind else None
        root = src.root if isinstance(src, (Missing, Clash)) else None
        entry = Entry(path, slot, src, verdict.status, problem, root, verdict.src_shape)
        if slot.kind == TENSOR:
            self.found.entries.append(entry)
            self.found.by_tensor.setdefault(id(slot.tensor), []).append(entry)
        elif verdict.status != NOTHING or problem:
            self.found.entries.append(entry)

    def exclude(self, child, path: str) -> None:
        """Record every tensor under an excluded child; the source there is not unexpected."""
        if is_container(child):
            for name, grandchild in dest_children(child):
                self.exclude(grandchild, f"{path}.{name}")
        elif child.kind == TENSOR:
            entry = Entry(path, child, None, EXCLUDED)
            self.found.entries.append(entry)
            self.found.by_tensor.setdefault(id(child.tensor), []).append(entry)

    def _unexpected(self, path: str, kids, src: dict, missing_names: list[str]) -> None:
        known = {name for name, _ in kids}
        if _is_shorter_list(known, src):
            self.found.lengths[path] = len(src)
        extra_names = [name for name in src if name not in known]
        for name in extra_names:
            child_path = f"{path}.{name}" if path else name
            leaf_paths = [
                p
                for p, leaf in iter_leaves(src[name], child_path)
                if leaf is not SKIP and leaf is not ABSENT_LEAF and self.selection.accepts_source(p)
            ]
            if leaf_paths:
                suggestion = _similar(name, missing_names)
                record = Unexpected(child_path, leaf_paths, len(self.found.entries))
                if suggestion:
                    record.suggestion = f"{path}.{suggestion}" if path else suggestion
                    self.found.suggestions[record.suggestion] = child_path
                self.found.unexpected.append(record)


def _is_shorter_list(known: set[str], src: dict) -> bool:
    """Whether the source is a numbered list ``0..n-1`` shorter than the destination's."""
    return (
        len(src) < len(known)
        and all(n.isdigit() for n in known)
        and set(src) == {str(i) for i in range(len(src))}
    )


def _similar(name: str, candidates: list[str]) -> str | None:
    """The destination name a source name was probably meant to be (``lm_head`` -> ``head``)."""
    if name.isdigit():
        return None
    matches = difflib.get_close_matches(name, [c for c in candidates if not c.isdigit()], n=1, cutoff=0.6)
    return matches[0] if matches else None

