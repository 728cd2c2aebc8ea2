"""The ``adapt=`` step of a load: after ``rename`` and ``convert``, before the plan.

`adapt_tree` pairs the destination with the source (the walk, alone) and, for each
destination tensor whose source tensor has another shape, asks the adapters that
apply there (a pin, or the enabled ones whose name evidence holds) for an
`AdaptedTensor` of the destination's shape. The source tree, copied along the
changed paths only, then goes to the plan like any other: the rules see equal
shapes and load it, and nothing is read before the plan has passed (R6).

What no adapter took stays a ``shape`` problem; `finish_plan` adds to its message
why the adapters that knew the name refused, and lists destination buffers derived
from an adapted shape (`RelPosTable`'s index) as ignored.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field

from torch import nn

from .._plan.dest import TENSOR_SLOTS, SlotKind
from .._plan.hints import with_note
from .._plan.records import Status
from .._plan.select import did_you_mean
from .._plan.walk import SlotPair, walk
from .._render.text import path_prefixes
from .._report import Problem, ProblemKind
from ..adapt import DETECTED, Adapter, CannotAdapt, Target
from ..sources import SKIP, SourceTensor


@dataclass
class Adaptation:
    """What the step did: the new source tree, pins that matched nothing, why adapters
    refused (destination path -> text) and the destination-derived buffers left as they are."""

    tree: object
    problems: list[Problem] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)
    derived: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class Pin:
    glob: str
    regex: re.Pattern
    adapter: Adapter


def adapters_of(adapt) -> tuple[list[Pin], list[Adapter]]:
    """The pins and the enabled adapters an ``adapt=`` value asks for; a bad value is a TypeError."""
    if adapt is True:
        return [], list(DETECTED)
    if isinstance(adapt, dict):
        for glob, adapter in adapt.items():
            if not isinstance(glob, str) or not isinstance(adapter, Adapter):
                raise TypeError(f"adapt= pins are {{glob: adapter}}, got {glob!r}: {type(adapter).__name__}")
        return [Pin(g, re.compile(fnmatch.translate(g)), a) for g, a in adapt.items()], []
    if isinstance(adapt, (list, tuple)) and all(isinstance(a, Adapter) for a in adapt):
        return [], list(adapt)
    raise TypeError(
        "adapt= takes True, a list of structload.adapt adapters or a {glob: adapter} dict, "
        f"got {type(adapt).__name__}"
    )


def adapt_tree(dst, tree, adapt) -> Adaptation:
    """Replace each shape-mismatched source tensor an adapter takes by its adapted leaf."""
    pins, enabled = adapters_of(adapt)
    found = walk(dst, tree)
    tensors = [p for p in found.pairs if p.slot.kind in TENSOR_SLOTS]
    ties: dict[int, list[str]] = {}
    for pair in tensors:
        ties.setdefault(id(pair.slot.tensor), []).append(pair.path)
    stem = stem_of(tensors)
    result = Adaptation(tree)
    replaced: dict[str, object] = {}
    scratches: dict = {}  # modules on meta that Reinit / Resize(init="keep") initialize, one copy each
    for pair in tensors:
        leaf = pair.leaf
        if not isinstance(leaf, SourceTensor) or tuple(leaf.shape) == tuple(pair.slot.tensor.shape):
            continue
        slot = pair.slot
        target = Target(pair.path, slot.tensor, leaf, slot.owner, slot.name, pair.path == stem, scratches)
        pin = _pin_for(pins, ties[id(pair.slot.tensor)])
        asked = [(pin.adapter, f" (pinned by '{pin.glob}')")] if pin else [(a, "") for a in enabled if a.named(target)]
        reasons = []
        for adapter, how in asked:
            try:
                replaced[pair.path] = adapter.adapt(target)
            except CannotAdapt as why:
                reasons.append(f"{adapter!r}{how} cannot adapt it: {why}")
                continue
            _keep_derived(adapter, pair, found.pairs, replaced, result.derived)
            break
        else:
            if reasons:
                result.notes[pair.path] = "; ".join(reasons)
    result.problems = _unused_pins(pins, [p.path for p in found.pairs])
    result.tree = with_leaves(tree, replaced)
    return result


def stem_of(tensors: list[SlotPair]) -> str | None:
    """The path of the model's first convolution or linear weight, in module order."""
    for pair in tensors:
        if pair.slot.name == "weight" and isinstance(pair.slot.owner, (nn.modules.conv._ConvNd, nn.Linear)):
            return pair.path
    return None


def _pin_for(pins: list[Pin], paths: list[str]) -> Pin | None:
    """The first pin matching one of `paths` (a tied group) or a module above it."""
    for pin in pins:
        if any(pin.regex.match(prefix) for path in paths for prefix in path_prefixes(path)):
            return pin
    return None


def _unused_pins(pins: list[Pin], paths: list[str]) -> list[Problem]:
    """A ``pattern`` problem for each pin that matches no destination path (a typo adapts nothing)."""
    problems = []
    every = sorted({prefix for path in paths for prefix in path_prefixes(path)})
    for pin in pins:
        if not any(pin.regex.match(p) for p in every):
            message = "adapt pin matches no destination path" + did_you_mean(pin.glob, every)
            problems.append(Problem(ProblemKind.PATTERN, pin.glob, message))
    return problems


def _keep_derived(adapter: Adapter, pair: SlotPair, pairs: list[SlotPair], replaced: dict, derived: set[str]) -> None:
    """Buffers of the destination computed from the adapted shape keep their values: the source's
    (for the old shape) is skipped and the path listed as ignored."""
    module = pair.path.rpartition(".")[0]
    names = {f"{module}.{name}" if module else name for name in adapter.derived}
    for other in pairs:
        if other.path in names and isinstance(other.leaf, SourceTensor):
            if other.slot.kind == SlotKind.TENSOR:  # persistent: would be loaded (or mismatch) otherwise
                replaced[other.path] = SKIP
            derived.add(other.path)


def with_leaves(tree, replaced: dict[str, object]):
    """The source tree with the leaves at the dotted paths of `replaced` changed; dicts along
    those paths are copied, the rest shared (the caller's tree, an opened file's, stays as it is)."""
    if not replaced:
        return tree
    if "" in replaced:
        return replaced[""]
    top = dict(tree)
    fresh = {id(top)}
    for path, leaf in replaced.items():
        node, *parents = top, *path.split(".")[:-1]
        for name in parents:
            child = node[name]
            if id(child) not in fresh:
                child = node[name] = dict(child)
                fresh.add(id(child))
            node = child
        node[path.rpartition(".")[2]] = leaf
    return top


def finish_plan(plan, adaptation: Adaptation) -> None:
    """After planning: derived buffers left as they are are ``ignored``; a shape problem says why
    the adapters that were asked refused."""
    derived, notes = adaptation.derived, adaptation.notes
    if derived:
        plan.entries = [
            e._replace(status=Status.IGNORED)
            if e.path in derived and e.status == Status.SKIPPED and e.problem is None
            else e
            for e in plan.entries
        ]
    if notes:
        plan.problems = [
            with_note(p, notes[p.path])  # keeps the hint the problem has
            if p.kind == ProblemKind.SHAPE and p.path in notes
            else p
            for p in plan.problems
        ]


def suggest_adapting(plan) -> None:
    """For a load without ``adapt=``: each shape problem ``adapt=True`` would solve says so."""
    mismatched = [e for e in plan.entries if e.mismatch_kind == ProblemKind.SHAPE and isinstance(e.leaf, SourceTensor)]
    if not mismatched:
        return
    stem = stem_of([e for e in plan.entries if e.slot.kind in TENSOR_SLOTS])
    notes = {}
    for entry in mismatched:
        slot = entry.slot
        target = Target(entry.path, slot.tensor, entry.leaf, slot.owner, slot.name, entry.path == stem)
        adapter = next((a for a in DETECTED if a.named(target) and _adapts(a, target)), None)
        if adapter is not None:
            notes[entry.path] = f"adapt=True would adapt it ({adapter!r}, see structload.adapt)"
    finish_plan(plan, Adaptation(None, notes=notes))


def _adapts(adapter: Adapter, target: Target) -> bool:
    try:
        adapter.adapt(target)
    except CannotAdapt:
        return False
    return True
