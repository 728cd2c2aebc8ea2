"""``align=`` with ``adapt=``: the tensors alignment leaves unmatched because their shapes differ.

`align` pairs tensors by names and shapes, so a position embedding of another image size
(``pos_embed`` against ``embeddings.position_embeddings``) stays unmatched on both sides.
With ``adapt=`` the adapters' own evidence can pair them: an unmatched destination tensor and
an unmatched source tensor pair when an adapter that knows names (`PosEmbed`, `InChannels`,
`PatchEmbed`, `RelPosTable`) knows **both** names and its shape arithmetic holds, and no other
leftover would do on either side (never a guess). The pair becomes one more rename of the
alignment, with its evidence, and the adapter then adapts it in the load like any other.
"""

from __future__ import annotations

import dataclasses
import re

from .._align.alignment import Alignment, Match
from .._plan.dest import TENSOR_SLOTS
from .._plan.walk import walk
from .._rename import compile_rename, rename_tree
from .._render.text import shape_text
from ..adapt import Adapter, CannotAdapt, Target
from ..sources import SourceTensor, iter_leaves, to_source_tree
from .step import adapters_of, stem_of


def pair_adaptable(alignment: Alignment, dst, src, adapt, rename=None) -> Alignment:
    """`alignment` with the unmatched tensors that an adapter pairs (see the module) matched."""
    if not alignment.unmatched_dst or not alignment.unmatched_src:
        return alignment
    pins, enabled = adapters_of(adapt)
    knowing = [a for a in enabled + [p.adapter for p in pins] if type(a).named is not Adapter.named]
    tree = to_source_tree(src)
    renamer = compile_rename(rename)
    flat = dict(iter_leaves(rename_tree(tree, renamer) if renamer is not None else tree))
    sources = {p: flat[p] for p in alignment.unmatched_src if isinstance(flat.get(p), SourceTensor)}
    tensors = [p for p in walk(dst, {}).pairs if p.slot.kind in TENSOR_SLOTS]
    slots, stem = {p.path: p.slot for p in tensors}, stem_of(tensors)
    found: dict[str, list[tuple[str, Adapter]]] = {}
    for path in alignment.unmatched_dst:
        if path in slots:
            target = Target(path, slots[path].tensor, None, slots[path].owner, slots[path].name, path == stem)  # type: ignore[arg-type]
            found[path] = [(s, a) for s, leaf in sources.items() if (a := _pairs(knowing, target, s, leaf))]
    taken = [s for options in found.values() for s, _ in options]
    pairs = {d: options[0] for d, options in found.items() if len(options) == 1 and taken.count(options[0][0]) == 1}
    if not pairs:
        return alignment
    matches = [
        Match(
            d,
            (s,),
            (),
            (
                f"adapt: {a!r} knows both names, {shape_text(sources[s].shape)} adapts to "
                f"{shape_text(slots[d].tensor.shape)}",
            ),
        )
        for d, (s, a) in pairs.items()
    ]
    paired_src = {s for s, _ in pairs.values()}
    return dataclasses.replace(
        alignment,
        rename={**{f"^{re.escape(s)}$": d for d, (s, _) in pairs.items()}, **alignment.rename},
        matched=alignment.matched + matches,
        unmatched_dst=[p for p in alignment.unmatched_dst if p not in pairs],
        unmatched_src=[p for p in alignment.unmatched_src if p not in paired_src],
    )


def _pairs(adapters: list[Adapter], target: Target, src_path: str, leaf: SourceTensor) -> Adapter | None:
    """The first adapter that knows both names and adapts the source's shape to the destination's
    (the source's name is asked as if it were the destination's: a stem's, a position embedding's)."""
    if tuple(leaf.shape) == tuple(target.tensor.shape):
        return None  # equal shapes: alignment's own business
    target = dataclasses.replace(target, source=leaf)
    for adapter in adapters:
        if not (adapter.named(target) and adapter.named(dataclasses.replace(target, path=src_path, stem=True))):
            continue
        try:
            adapter.adapt(target)
        except CannotAdapt:
            continue
        return adapter
    return None
