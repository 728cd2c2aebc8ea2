"""Matching inside one group of leaves (a template block, or the top level), for `_align`.

Evidence is taken strongest first: exact names, ``hints`` pins, roles from the
vocabulary, fused tensors by shape arithmetic, then a shape only one leaf of
each side has; same-shape leaves nothing tells apart are ambiguous. Then the
layout: which matrices the source stores transposed (`group_layout`,
`transposed`), a square one following the non-square ones of its group.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any

from .._render.text import shape_text
from .layers import pair_by_layer, rnn_param
from .position import companions, pair_by_position
from .vocabulary import FAMILIES, FUSED, param_name, role_of


class Leaf:
    """One tensor of either side, as alignment sees it (a plain class with slots: there is one per
    tensor of both models, so building it is kept cheap)."""

    __slots__ = ("_read", "container", "context_role", "index", "matrix", "path", "rel", "shape")

    def __init__(self, path: str, shape: tuple[int, ...], container: str | None, index: int | None, rel: str):
        self.path, self.shape = path, shape
        self.container = container  # the numbered container it is in (``h``), or None at the top level
        self.index = index
        self.rel = rel  # the path inside its block (the whole path at the top level)
        self.matrix = False  # a 2-d weight whose layout may be transposed (not an embedding table)
        self.context_role: str | None = None  # a role its siblings give it (`roles_by_content`), over its names
        self._read: tuple[str | None, str] | None = None

    def __repr__(self) -> str:
        return f"Leaf({self.path!r}, {self.shape})"

    # read from `rel` when asked, not stored: only the leaves of template blocks are ever asked
    @property
    def module(self) -> str:
        """`rel` without its last name (``attn.c`` for ``attn.c.weight``)."""
        return self.rel.rpartition(".")[0]

    @property
    def raw_param(self) -> str:
        """The last name of `rel` (``weight``)."""
        return self.rel.rpartition(".")[2]

    @property
    def _role_and_param(self) -> tuple[str | None, str]:
        if self._read is None:
            self._read = self._read_names()
        return self._read

    def _read_names(self) -> tuple[str | None, str]:
        """Read from the names on first use: only the leaves of template blocks ever need them."""
        param = rnn_param(self.raw_param) or param_name(self.raw_param)  # weight_ih_l2 is a weight_ih
        role = role_of(self.module) if self.module else None
        if role is None and param not in ("weight", "bias"):
            stem, _, kind = self.raw_param.rpartition("_")
            if stem and kind in ("weight", "bias"):  # nn.MultiheadAttention's in_proj_weight: a module in a name
                role = role_of(f"{self.module}.{stem}" if self.module else stem)
                if role is not None:
                    return role, kind
            role = role_of(self.rel)  # a parameter that is its own module: cls_token, pos_embed
            if role is not None:
                param = "weight"  # a bare nn.Parameter named for its role is that module's weight
        return role, param

    @property
    def role(self) -> str | None:
        return self.context_role or self._role_and_param[0]

    @property
    def param(self) -> str:
        """The parameter name, one name per meaning (`_vocabulary.param_name`)."""
        return self._role_and_param[1]


@dataclass
class Pair:
    """A match inside a group: destination leaves (several for a Split) and source leaves (several
    for a Concat), by relative path, with the evidence."""

    dst: tuple[Leaf, ...]
    src: tuple[Leaf, ...]
    evidence: list[str] = field(default_factory=list)
    transposed: bool = False


@dataclass
class GroupResult:
    pairs: list[Pair] = field(default_factory=list)
    ambiguous: list[tuple[tuple[Leaf, ...], tuple[Leaf, ...], str]] = field(default_factory=list)


class GroupMatcher:
    """Pairs the leaves of one group; remembers which pins (from ``hints``) it applied.

    `pins` maps a destination path to the source path a hint pins it to, and the hint.
    """

    def __init__(self, pins: dict[str, tuple[str, str, str]] | None = None):
        self.pins = pins or {}
        self.applied_pins: set[str] = set()  # destination paths

    def match(self, dst: list[Leaf], src: list[Leaf]) -> GroupResult:
        found = GroupResult()
        roles_by_content(dst)
        roles_by_content(src)
        free_dst = {leaf.rel: leaf for leaf in dst}
        free_src = {leaf.rel: leaf for leaf in src}
        modules_dst, modules_src = _by_module(dst), _by_module(src)
        norms_dst, norms_src = companions(modules_dst), companions(modules_src)

        views: list[tuple[dict, dict]] = []  # narrower views of the free leaves (`_match_shapes`)

        def take(d: tuple[Leaf, ...], s: tuple[Leaf, ...], evidence: str) -> None:
            found.pairs.append(Pair(d, s, [evidence]))
            for free_d, free_s in [(free_dst, free_src), *views]:
                for leaf in d:
                    free_d.pop(leaf.rel, None)
                for leaf in s:
                    free_s.pop(leaf.rel, None)
            if len(d) == 1 and len(s) == 1 and d[0].module and s[0].module:  # modules move together
                self._follow(d[0], s[0], modules_dst, modules_src, free_dst, free_src, take)
                norm_d, norm_s = norms_dst.get(d[0].module), norms_src.get(s[0].module)
                if norm_d is not None and norm_s is not None:  # and so does the norm after a layer
                    self._follow_norm(norm_d, norm_s, d[0], modules_dst, modules_src, free_dst, free_src, take)

        self._match_pins(free_dst, free_src, take)
        for rel, leaf in list(free_dst.items()):  # exact names
            other = free_src.get(rel)
            if other is not None and rel in free_dst and _fits(leaf, other):
                take((leaf,), (other,), "name")
        self._match_roles(free_dst, free_src, found, take)
        self._match_fused(free_dst, free_src, take)
        self._match_shapes(free_dst, free_src, found, take, views)
        return found

    def _match_pins(self, free_dst, free_src, take) -> None:
        by_path = {leaf.path: leaf for leaf in free_src.values()}
        for leaf in list(free_dst.values()):
            pin = self.pins.get(leaf.path)
            other = by_path.get(pin[0]) if pin else None
            if pin and other is not None and leaf.rel in free_dst and other.rel in free_src:
                self.applied_pins.add(leaf.path)
                take((leaf,), (other,), f"hint {pin[1]}")

    def _follow(self, d: Leaf, s: Leaf, modules_dst, modules_src, free_dst, free_src, take) -> None:
        """The other tensors of a paired module pair by their parameter name (a bias follows its weight)."""
        others_src = [x for x in modules_src.get(s.module, ()) if x.rel in free_src]
        for x in modules_dst.get(d.module, ()):
            partners = [y for y in others_src if y.param == x.param and y.rel in free_src]
            if x.rel in free_dst and x.path not in self.pins and len(partners) == 1 and _fits(x, partners[0]):
                take((x,), (partners[0],), f"module '{d.module}' is paired with '{s.module}' (by its {d.param})")

    def _follow_norm(self, norm_d, norm_s, layer: Leaf, modules_dst, modules_src, free_dst, free_src, take) -> None:
        others_src = [y for y in modules_src.get(norm_s, ()) if y.rel in free_src]
        for x in modules_dst.get(norm_d, ()):
            partners = [y for y in others_src if y.param == x.param and y.rel in free_src]
            if x.rel in free_dst and x.path not in self.pins and len(partners) == 1 and _fits(x, partners[0]):
                evidence = f"the norm of '{layer.module}', paired with '{partners[0].module}''s layer"
                take((x,), (partners[0],), evidence)

    def _match_roles(self, free_dst, free_src, found: GroupResult, take) -> None:
        for leaf in list(free_dst.values()):
            if leaf.rel not in free_dst or leaf.role is None:
                continue
            options = [s for s in free_src.values() if s.role == leaf.role and s.param == leaf.param]
            fitting = [s for s in options if _fits(leaf, s)]
            if len(fitting) == 1:
                take((leaf,), (fitting[0],), f"vocabulary: '{_last(fitting[0].module)}' is {leaf.role}")
            elif len(fitting) > 1:
                self._ambiguous(
                    found, (leaf,), tuple(fitting), f"several source tensors play {leaf.role}", free_dst, free_src
                )
        for family, roles in FAMILIES.items():  # names that do not say which (Meta's w1 / w3), either side
            for param in ("weight", "bias"):
                for vague_side, exact_side in ((free_src, free_dst), (free_dst, free_src)):
                    vague = [x for x in vague_side.values() if x.role == family and x.param == param]
                    exact = [x for x in exact_side.values() if x.role in roles and x.param == param]
                    if not vague or not exact:
                        continue
                    dst, src = (exact, vague) if vague_side is free_src else (vague, exact)
                    if len(dst) == 1 and len(src) == 1 and _fits(dst[0], src[0]):
                        take((dst[0],), (src[0],), f"vocabulary: '{_last(vague[0].module)}' is the only {family}")
                    else:
                        names = ", ".join(sorted({_last(x.module) for x in vague}))
                        reason = f"same shape, and the names {names} do not say which is {' or '.join(roles)}"
                        self._ambiguous(found, tuple(dst), tuple(src), reason, free_dst, free_src)

    def _match_fused(self, free_dst, free_src, take) -> None:
        """``qkv`` = ``q`` + ``k`` + ``v`` (and ``kv``, ``gate_up``), in either direction."""
        for fused, parts in FUSED.items():
            for param in ("weight", "bias"):
                self._fuse(free_dst, free_src, fused, parts, param, take, split=True)
                self._fuse(free_src, free_dst, fused, parts, param, take, split=False)

    def _fuse(self, many_side, one_side, fused, parts, param, take, split: bool) -> None:
        ones = [leaf for leaf in one_side.values() if leaf.role == fused and leaf.param == param]
        for one in ones:
            by_role = {
                r: [leaf for leaf in many_side.values() if leaf.role == r and leaf.param == param] for r in parts
            }
            if not all(len(v) == 1 for v in by_role.values()):
                continue
            pieces = tuple(by_role[r][0] for r in parts)
            matrix = pieces[0].matrix if split else one.matrix
            if _stacking(one, pieces, matrix=matrix) is None:
                continue
            sizes = " + ".join(shape_text(p.shape) for p in pieces)
            evidence = f"fused: '{_last(one.module)}' {shape_text(one.shape)} is {' + '.join(parts)}: {sizes}"
            take(*((pieces, (one,)) if split else ((one,), pieces)), evidence)

    def _match_shapes(self, free_dst, free_src, found: GroupResult, take, views: list) -> None:
        """What is left: a tensor with exactly one candidate on the other side, which has no other
        candidate either (same parameter name, a shape that fits in the group's layout), or
        candidates told apart by their layer numbers or positions; larger weights first, so that
        biases and norms follow them, again until nothing pairs. The rest that could pair is
        ambiguous, as a whole."""
        layout = group_layout(found.pairs)
        order = lambda x: (x.param != "weight", -len(x.shape), x.param)  # noqa: E731
        progress = True
        while progress:
            progress = False
            dst_view, src_view = _with_weights(free_dst, free_src), _with_weights(free_src, free_dst)
            views[:] = [(dst_view, src_view)]
            for d in sorted(dst_view.values(), key=order):
                if d.rel in free_dst:
                    progress |= self._pair_candidates(d, dst_view, src_view, layout, take)
        for weights in (True, False):  # weights first: what is ambiguous with them takes its bias along
            dst_view, src_view = _with_weights(free_dst, free_src), _with_weights(free_src, free_dst)
            for d in sorted(dst_view.values(), key=order):
                if d.rel not in dst_view or (d.param == "weight") != weights:
                    continue
                ds, ss = _candidates(d, dst_view, src_view, layout)
                if ss:
                    shapes = " / ".join(sorted({shape_text(x.shape) for x in ds + ss}))
                    reason = f"{len(ds)} + {len(ss)} tensors of shape {shapes} and no name evidence"
                    self._ambiguous(found, tuple(ds), tuple(ss), reason, free_dst, free_src)
                    self._ambiguous(GroupResult(), ds, ss, reason, dst_view, src_view)
        views.clear()

    @staticmethod
    def _pair_candidates(d: Leaf, free_dst, free_src, layout: str, take) -> bool:
        """Pair `d` (and the candidates it competes with) when the evidence decides; whether it did.
        `free_dst` / `free_src` are views of the free leaves: those paired here leave them too."""
        ds, ss = _candidates(d, free_dst, free_src, layout)
        if len(ds) == 1 and len(ss) == 1:
            take((d,), (ss[0],), f"shape {shape_text(ss[0].shape)}: the only candidate left on each side")
            return True
        found: list[tuple[Any, Any, str]] | None = (pair_by_layer(ds, ss) or pair_by_position(ds, ss)) if ss else None
        for x, y, evidence in found or ():
            if x.rel in free_dst and y.rel in free_src:
                take((x,), (y,), evidence)
        return bool(found)

    @staticmethod
    def _ambiguous(found: GroupResult, dst, src, reason: str, free_dst, free_src) -> None:
        found.ambiguous.append((dst, src, reason))
        for leaf in dst:
            free_dst.pop(leaf.rel, None)
        for leaf in src:
            free_src.pop(leaf.rel, None)

    # --- layouts and output --------------------------------------------------------------------


_ATTENTION_ROLES = frozenset({"q", "k", "v", "o", "qkv", "kv"})
_MLP_ROLES = frozenset({"up", "down", "gate", "gate_up", "mlp_in"})


def roles_by_content(leaves: list[Leaf]) -> None:
    """A plain ``norm`` inside a sub-block plays the role its siblings say: T5's ``layer.0.layer_norm``
    sits beside ``layer.0.SelfAttention`` (the attention's norm), ``layer.1.layer_norm`` beside
    ``layer.1.DenseReluDense`` (the MLP's)."""
    kinds: dict[str, set[str]] = {}
    for leaf in leaves:
        kind = "attn" if leaf.role in _ATTENTION_ROLES else "mlp" if leaf.role in _MLP_ROLES else None
        if kind is not None:
            parts = leaf.module.split(".")
            for i in range(1, len(parts)):
                kinds.setdefault(".".join(parts[:i]), set()).add(kind)
    for leaf in leaves:
        parent = leaf.module.rpartition(".")[0]
        if parent and leaf.context_role is None and leaf.role == "norm_final":
            around = kinds.get(parent, set())
            if len(around) == 1:
                leaf.context_role = "norm_attn" if "attn" in around else "norm_mlp"


def _with_weights(free: dict, other: dict) -> dict:
    """The free leaves less those whose module's weight is free and has no candidate of its shape on
    the other side: a bias or a norm's statistics of a module that matches nothing are not paired
    on their own by shape (modules move together). A bias may still pair its module."""
    shapes = {leaf.shape for leaf in other.values() if leaf.param == "weight"}
    unmatched = {
        leaf.module
        for leaf in free.values()
        if leaf.param == "weight" and leaf.shape not in shapes and not (leaf.matrix and leaf.shape[::-1] in shapes)
    }
    return {rel: x for rel, x in free.items() if x.param == "weight" or x.module not in unmatched}


def _candidates(d: Leaf, free_dst: dict, free_src: dict, layout: str) -> tuple[list[Leaf], list[Leaf]]:
    """Everything `d` could pair with, and everything those could pair with, until nothing is added:
    the destination and source leaves one match by shape would have to choose among."""
    ds, ss = [d], []
    grew = True
    while grew:
        grew = False
        for x in ds:
            for y in free_src.values():
                if y not in ss and y.param == x.param and _fits_layout(x, y, layout):
                    ss.append(y)
                    grew = True
        for y in ss:
            for x in free_dst.values():
                if x not in ds and x.param == y.param and _fits_layout(x, y, layout):
                    ds.append(x)
                    grew = True
    return ds, ss


def _fits_layout(dst: Leaf, src: Leaf, layout: str) -> bool:
    """Whether the shapes fit, as the group stores its matrices when its other pairs show it."""
    square = len(dst.shape) == 2 and dst.shape[0] == dst.shape[1]
    if dst.shape == src.shape:
        return square or not dst.matrix or layout != "transposed"
    return dst.matrix and len(src.shape) == 2 and dst.shape == src.shape[::-1] and layout != "direct"


def _by_module(leaves: list[Leaf]) -> dict[str, list[Leaf]]:
    modules: dict[str, list[Leaf]] = {}
    for leaf in leaves:
        modules.setdefault(leaf.module, []).append(leaf)
    return modules


def _fits(dst: Leaf, src: Leaf) -> bool:
    """Equal shapes, or a 2-d weight stored the other way round."""
    return dst.shape == src.shape or (dst.matrix and len(src.shape) == 2 and dst.shape == src.shape[::-1])


def _stacking(fused: Leaf, pieces: tuple[Leaf, ...], matrix: bool) -> str | None:
    """How `pieces` (destination layout (out, in) when they are the destination's) stack into
    `fused`: ``"direct"`` along dim 0, ``"transposed"`` as an (in, out) matrix, ``"either"`` when
    shapes cannot tell (square pieces), ``None`` when they do not fit."""
    if len(fused.shape) == 1:
        ok = all(len(p.shape) == 1 for p in pieces) and fused.shape[0] == sum(p.shape[0] for p in pieces)
        return "direct" if ok else None
    if len(fused.shape) != 2 or any(len(p.shape) != 2 for p in pieces):
        return None
    # stacked along dim 0 as they are, or one side stored as the other's transpose
    rows, width = sum(p.shape[0] for p in pieces), pieces[0].shape[1]
    direct = all(p.shape[1] == width for p in pieces) and fused.shape == (rows, width)
    t_rows, t_width = sum(p.shape[1] for p in pieces), pieces[0].shape[0]
    transposed = matrix and all(p.shape[0] == t_width for p in pieces) and fused.shape == (t_width, t_rows)
    if direct and transposed:
        return "either"
    return "direct" if direct else "transposed" if transposed else None


def group_layout(pairs: list[Pair]) -> str:
    """How the source stores this group's matrices, from those whose shape shows it."""
    votes = set()
    for pair in pairs:
        d, s = pair.dst[0], pair.src[0]
        if not d.matrix:
            continue
        if len(pair.dst) > 1 or len(pair.src) > 1:
            stacking = _pair_stacking(pair)
            if stacking in ("direct", "transposed"):
                votes.add(stacking)
        elif d.shape[0] != d.shape[1]:
            votes.add("transposed" if d.shape != s.shape else "direct")
    return votes.pop() if len(votes) == 1 else ("mixed" if votes else "unknown")


def transposed(pair: Pair, layout: str) -> tuple[bool, str | None]:
    """Whether the pair's source is stored transposed, and the evidence (or why it is ambiguous)."""
    d, s = pair.dst[0], pair.src[0]
    if not d.matrix:
        return False, None
    if len(pair.dst) > 1 or len(pair.src) > 1:
        stacking = _pair_stacking(pair)
        if stacking == "either":
            stacking = layout if layout in ("direct", "transposed") else None
            if stacking is None:
                return (
                    False,
                    "ambiguous: square parts, and no other matrix of the group shows whether they are stored transposed",
                )
            note = "square parts: stored like the other matrices of their group (sibling layout)"
            return stacking == "transposed", note if stacking == "transposed" else None
        return stacking == "transposed", ("stored transposed (in, out)" if stacking == "transposed" else None)
    if d.shape[0] != d.shape[1]:
        return (d.shape != s.shape), ("stored transposed (in, out)" if d.shape != s.shape else None)
    if layout == "transposed":
        return True, "square: transposed like the other matrices of its group (sibling layout)"
    named = pair.evidence[0] == "name" or pair.evidence[0].startswith("hint")  # the same tensor, by name or pin
    if layout == "direct" or (layout == "unknown" and named):
        return False, None
    why = "the other matrices of its group disagree" if layout == "mixed" else "no non-square matrix shows the layout"
    return False, f"ambiguous: a square matrix, and {why}, so whether it is stored transposed cannot be seen"


def _pair_stacking(pair: Pair) -> str | None:
    if len(pair.src) == 1:  # one source tensor split into the destination's
        return _stacking(pair.src[0], pair.dst, matrix=True)
    return _stacking(pair.dst[0], pair.src, matrix=True)


def _glob(pattern: str, leaf: Leaf) -> bool:
    return fnmatch.fnmatchcase(leaf.path, pattern) or fnmatch.fnmatchcase(leaf.path.rpartition(".")[0], pattern)


def _last(module: str) -> str:
    return module.rpartition(".")[2]
