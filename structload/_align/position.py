"""Two structural signals of `align` for layers that names alone do not tell apart.

**Position among siblings of the same kind.** torchvision's ``layer1.0.conv2`` and transformers'
``encoder.stages.0.layers.0.layer.1.convolution`` are both "the second conv of the first block of
the first stage": the numbers in their paths say so. `pair_by_position` pairs same-shape
candidates by those numbers, and only when they decide: each side's candidates of one kind (the
first kind word of the path, `_vocabulary.KINDS`) have the same count and, once the numbers that
do not vary are dropped and each number is counted from the smallest, the same positions (a
side whose only kind is unnamed, ``body.0`` / ``body.1``, is of the other side's kind). Names
with no numbers (``zz`` / ``aa``: the order of a state dict is no evidence), a layer missing in
the middle (1, 2, 4 against 0, 1, 2) or a position held twice (two stacks) decide nothing.

**A norm follows its layer.** A ``BatchNorm`` / ``LayerNorm`` right after a conv or linear is
paired with it: `companions` finds, per module, the norm that belongs to it (the only layer and
the only norm of their parent, or the one with the same number: ``bn1`` of ``conv1``), so once the
layers are paired their norms pair too.

>>> from structload._align.match import Leaf
>>> def leaves(*paths):
...     return [Leaf(p, (8, 8, 3, 3), None, None, p) for p in paths]
>>> dst = leaves("layer1.0.conv1.weight", "layer1.0.conv2.weight")
>>> src = leaves("stages.0.layers.0.layer.1.convolution.weight", "stages.0.layers.0.layer.0.convolution.weight")
>>> [(d.path, s.path) for d, s, _ in pair_by_position(dst, src)]
[('layer1.0.conv1.weight', 'stages.0.layers.0.layer.0.convolution.weight'), ('layer1.0.conv2.weight', 'stages.0.layers.0.layer.1.convolution.weight')]
>>> pair_by_position(leaves("0.weight", "1.weight"), leaves("zz.weight", "aa.weight")) is None
True
"""

from __future__ import annotations

import re
from typing import Any

from .vocabulary import KINDS, token

_NUMBER = re.compile(r"\d+")


def kind_of(module: str) -> str | None:
    """The first kind word of a module path (``conv`` for ``layer.0.convolution``), or None."""
    for name in module.split("."):
        stem = token(name).rstrip("0123456789")
        if stem in KINDS:
            return stem
    return None


def pair_by_position(dst: list, src: list) -> list[tuple[Any, Any, str]] | None:
    """Pairs of same-shape candidates (leaves) by their positions among siblings of the same kind,
    with the evidence; None when positions do not decide every candidate."""
    dst_kinds, src_kinds = _by_kind(dst), _by_kind(src)
    if len(dst_kinds) == len(src_kinds) == 1 and None in (*dst_kinds, *src_kinds):  # ``body.0`` is a conv too
        (kind,) = {*dst_kinds, *src_kinds} - {None} or {None}
        dst_kinds, src_kinds = {kind: dst}, {kind: src}
    if sorted(dst_kinds, key=str) != sorted(src_kinds, key=str):
        return None
    pairs = []
    for kind, ds in dst_kinds.items():
        dst_at, src_at = _positions(ds), _positions(src_kinds[kind])
        if dst_at is None or src_at is None or dst_at.keys() != src_at.keys():
            return None
        for at, d in dst_at.items():
            name = f"the {kind} layers" if kind else "their siblings"
            pairs.append((d, src_at[at], f"position {at} among {name} of this shape, on both sides"))
    return pairs


def _by_kind(leaves: list) -> dict[str | None, list]:
    kinds: dict[str | None, list] = {}
    for leaf in leaves:
        kinds.setdefault(kind_of(leaf.module), []).append(leaf)
    return kinds


def _positions(leaves: list) -> dict[tuple[int, ...], object] | None:
    """Each leaf by the numbers of its module path that vary among `leaves`, each counted from
    its smallest; None when they do not tell every leaf apart."""
    numbers = [[int(n) for n in _NUMBER.findall(leaf.module)] for leaf in leaves]
    if len(leaves) < 2 or len({len(n) for n in numbers}) != 1:
        return None
    varying = [i for i in range(len(numbers[0])) if len({n[i] for n in numbers}) > 1]
    if not varying:
        return None
    lowest = {i: min(n[i] for n in numbers) for i in varying}
    at = {tuple(n[i] - lowest[i] for i in varying): leaf for n, leaf in zip(numbers, leaves)}
    return at if len(at) == len(leaves) else None


def companions(modules: dict[str, list]) -> dict[str, str]:
    """Layer module -> the norm module that belongs to it (see the module docstring).

    `modules` maps a module path to its leaves."""
    by_parent: dict[str, tuple[list[str], list[str]]] = {}
    for module, leaves in modules.items():
        layers, norms = by_parent.setdefault(module.rpartition(".")[0], ([], []))
        if _is_norm(leaves):
            norms.append(module)
        elif any(leaf.raw_param == "weight" and len(leaf.shape) >= 2 for leaf in leaves):
            layers.append(module)
    found = {}
    for layers, norms in by_parent.values():
        if len(layers) == 1 and len(norms) == 1:
            found[layers[0]] = norms[0]
            continue
        for norm in norms:
            same = [layer for layer in layers if _trailing(layer) is not None and _trailing(layer) == _trailing(norm)]
            if len(same) == 1:
                found[same[0]] = norm
    return found


def _is_norm(leaves: list) -> bool:
    names = {leaf.raw_param for leaf in leaves}
    weight = next((leaf for leaf in leaves if leaf.raw_param == "weight"), None)
    return weight is not None and len(weight.shape) == 1 and names <= _NORM_PARAMS


_NORM_PARAMS = frozenset({"weight", "bias", "running_mean", "running_var", "num_batches_tracked"})


def _trailing(module: str) -> str | None:
    """The number a module's own name ends with (``1`` for ``bn1``), not a bare index."""
    name = module.rpartition(".")[2]
    found = re.fullmatch(r"(.*\D)(\d+)", name)
    return found[2] if found else None
