"""`align`: work out ``rename`` and ``convert`` from structure when names differ.

The steps, each reading metadata only (no tensor data):

1. flatten both trees into leaves (path, shape); split each path at its first
   number into a numbered container (``h``, ``model.layers``), an index and a
   path relative to the block;
2. pair numbered containers by their number of blocks (12 = 12), and align
   one block of each pair as a template, checked against every other block;
   the rest (embeddings, final norm, head) is aligned as one group;
3. inside a group, pair leaves by evidence, strongest first: exact names,
   pins from ``hints``, roles from the vocabulary (`_vocabulary`: ``c_attn`` is
   ``qkv``, ``wq`` is ``q``), fused tensors by shape arithmetic (``qkv`` =
   ``q`` + ``k`` + ``v``, GQA, ``gate_up``), then a shape no other leaf of the
   group has. Same-shape tensors that nothing tells apart are an `Ambiguity`;
4. decide which matrices the source stores transposed: a non-square one shows
   it by its shape; a square one follows the non-square matrices of its group
   (GPT-2's ``Conv1D`` stores all of them as (in, out)), or is ambiguous;
5. write the result as one ``rename`` rule per module pattern (numbered blocks
   generalised with ``(\\d+)``) and the converters, and check that the rules
   send every source path exactly where the matches say.
"""

from __future__ import annotations

import re

import torch

from ._align_match import GroupMatcher, GroupResult, Leaf, Pair, group_layout, transposed
from ._alignment import Alignment, Ambiguity, Match
from ._dest import SlotKind, as_dest, dest_children, is_container
from ._rename import Renamer, compile_rename, rename_tree
from ._runtime import collector_paused
from ._select import Selection
from .convert import Concat, Converter, Split, Transpose
from .sources import SourceTensor, iter_leaves, to_source_tree


def align(dst, src, *, include=None, exclude=None, filter=None, rename=None, hints=None, reference=None) -> Alignment:
    """Work out how the source's names and layouts map onto the destination's, from structure.

    Reads no tensor data. The result's ``rename`` and ``convert`` go straight
    into `load`; what structure cannot decide is listed, never guessed.

    Examples:
        >>> import torch, torch.nn as nn, structload as sl
        >>> class Conv1D(nn.Module):  # GPT-2's layout: weight is (in, out)
        ...     def __init__(self, n_in, n_out):
        ...         super().__init__()
        ...         self.weight, self.bias = nn.Parameter(torch.randn(n_in, n_out)), nn.Parameter(torch.zeros(n_out))
        >>> src = nn.ModuleDict({"c_attn": Conv1D(4, 12), "c_proj": Conv1D(4, 4)})
        >>> dst = nn.ModuleDict({n: nn.Linear(4, 4) for n in ("q", "k", "v", "o")})
        >>> m = sl.align(dst, src)
        >>> m.ok, [type(c).__name__ for c in m.convert]
        (True, ['Transpose', 'Split', 'Split', 'Transpose'])
        >>> sl.load(dst, src, rename=m.rename, convert=m.convert).ok
        True
        >>> torch.equal(dst["o"].weight, src["c_proj"].weight.T)  # square, transposed like its siblings
        True

    Options: ``include`` / ``exclude`` / ``filter`` as in `load`, on
    destination paths; ``rename`` is applied to the source first (a dict is
    merged into the result's ``rename``); ``hints={dst_glob: src_glob}`` pins
    what names cannot tell (``{"*.w1": "*.gate_proj"}``; ``*`` spans dots);
    ``reference=(module, args)`` settles an ambiguity when exactly one assignment makes a scratch
    copy of `dst` compute what `module` computes on `args` (see `structload.verify`).
    """
    renamer = compile_rename(rename)
    with collector_paused():  # as in `load`: many small objects, none in cycles
        tree = to_source_tree(src)
        if renamer is not None:
            tree = rename_tree(tree, renamer)
        dst_leaves, dst_tied, buffers = _destination(dst, Selection(include, exclude, filter))
        src_leaves = [
            _leaf(path, tuple(leaf.shape)) for path, leaf in iter_leaves(tree) if isinstance(leaf, SourceTensor)
        ]
        ignored = [leaf.path for leaf in src_leaves if leaf.path in buffers]
        src_leaves = [leaf for leaf in src_leaves if leaf.path not in buffers]
        result = Alignment(ignored=ignored)
        if isinstance(rename, dict):
            result.rename.update(rename)
        _Aligner(result, dst_leaves, src_leaves, dst_tied, dict(hints or {})).run()
    if reference is not None:  # verification as evidence: structload/_verify/_evidence.py
        from ._verify._evidence import resolve_ambiguities

        options = {"include": include, "exclude": exclude, "filter": filter, "rename": rename, "hints": hints}
        result = resolve_ambiguities(dst, src, result, reference, options)
    return result


def _destination(dst, selection: Selection) -> tuple[list[Leaf], dict[str, str], set[str]]:
    """Destination tensors (tied paths after the first left out: they follow it), the tied paths
    with the path they follow, and the paths of non-persistent buffers."""
    root = as_dest(dst)
    left_out = selection.left_out(dst)
    excluded = left_out.paths if left_out is not None else frozenset()
    leaves: list[Leaf] = []
    tied: dict[str, str] = {}
    buffers: set[str] = set()
    first_path: dict[int, str] = {}

    def visit(node, path):
        for name, child in dest_children(node):
            child_path = f"{path}.{name}" if path else name
            if is_container(child):
                visit(child, child_path)
            elif child.kind == SlotKind.IGNORED:
                buffers.add(child_path)
            elif child.kind in (SlotKind.TENSOR, SlotKind.SHARDED) and child_path not in excluded:
                key = id(child.tensor)
                if key in first_path:  # tied: matched when any of its paths is
                    tied[child_path] = first_path[key]
                first_path.setdefault(key, child_path)
                leaf = _leaf(child_path, tuple(child.tensor.shape))
                leaf.matrix = len(leaf.shape) == 2 and not isinstance(child.owner, torch.nn.Embedding)
                leaves.append(leaf)

    if root is not None and is_container(root):
        visit(root, "")
    return leaves, tied, buffers


def _leaf(path: str, shape: tuple[int, ...]) -> Leaf:
    parts = path.split(".")
    for i, part in enumerate(parts[:-1]):  # the first number before the tensor's own name
        if part.isdigit():
            return Leaf(path, shape, ".".join(parts[:i]), int(part), ".".join(parts[i + 1 :]))
    return Leaf(path, shape, None, None, path)


class _Aligner:
    def __init__(self, result: Alignment, dst: list[Leaf], src: list[Leaf], tied: dict[str, str], hints: dict):
        self.result, self.dst, self.src, self.tied, self.hints = result, dst, src, tied, hints
        self.matcher = GroupMatcher(hints)
        self.rules: dict[str, str] = {}
        self.expected: dict[str, str] = {}  # source path -> where the rules must send it
        self.matched_src: set[str] = set()
        self.matched_dst: set[str] = set()

    def run(self) -> None:
        dst_blocks, dst_top = _by_container(self.dst)
        src_blocks, src_top = _by_container(self.src)
        pairs = self._pair_containers(dst_blocks, src_blocks)
        for dst_c, src_c in pairs:
            self._align_blocks(dst_c, dst_blocks.pop(dst_c), src_c, src_blocks.pop(src_c))
        if self.result.divergence is None:
            rest_dst = dst_top + [leaf for blocks in dst_blocks.values() for leaf in _all(blocks)]
            rest_src = src_top + [leaf for blocks in src_blocks.values() for leaf in _all(blocks)]
            self._align_group(rest_dst, rest_src, container=None)
        self._finish()

    # --- containers ------------------------------------------------------------------------

    def _pair_containers(self, dst_blocks: dict, src_blocks: dict) -> list[tuple[str, str]]:
        pairs, free = [], dict(src_blocks)
        for dst_c, blocks in dst_blocks.items():
            same = [c for c, b in free.items() if len(b) == len(blocks)]
            if len(same) > 1:
                named = [c for c in same if c.rsplit(".", 1)[-1] == dst_c.rsplit(".", 1)[-1]]
                same = named if len(named) == 1 else same
            if len(same) == 1:
                pairs.append((dst_c, same[0]))
                del free[same[0]]
            elif len(same) > 1:
                reason = f"{len(same)} numbered containers of the source have {len(blocks)} entries, as '{dst_c}' does"
                self.result.ambiguous.append(Ambiguity((dst_c,), tuple(same), reason))
            elif free and self.result.divergence is None:
                other = min(free, key=lambda c: abs(len(free[c]) - len(blocks)))
                self.result.divergence = (
                    f"destination '{dst_c or '<root>'}' has {len(blocks)} entries, source '{other or '<root>'}' has "
                    f"{len(free[other])} (source '{other or '<root>'}' has {len(free[other])}, destination "
                    f"'{dst_c or '<root>'}' has {len(blocks)})"
                )
        return pairs

    def _align_blocks(self, dst_c: str, dst_blocks: dict, src_c: str, src_blocks: dict) -> None:
        dst_first, src_first = dst_blocks[min(dst_blocks)], src_blocks[min(src_blocks)]
        template = self.matcher.match(dst_first, src_first)
        uniform = all(_same_layout(dst_blocks[i], dst_first) for i in dst_blocks) and all(
            _same_layout(src_blocks[i], src_first) for i in src_blocks
        )
        count = f"numbered blocks: {len(dst_blocks)} = {len(src_blocks)}"
        if uniform and sorted(dst_blocks) == sorted(src_blocks):
            self._emit(template, dst_c, src_c, list(dst_blocks), count)
            return
        for i, j in zip(sorted(dst_blocks), sorted(src_blocks)):  # blocks that differ: one by one, by full path
            dst_i, src_j = [_flattened(leaf) for leaf in dst_blocks[i]], [_flattened(leaf) for leaf in src_blocks[j]]
            self._emit(self.matcher.match(dst_i, src_j), None, None, [None], count)

    def _align_group(self, dst: list[Leaf], src: list[Leaf], container) -> None:
        if dst or src:
            self._emit(self.matcher.match(dst, src), None, None, [None], None)

    # --- matching inside a group -------------------------------------------------------------

    def _emit(self, found: GroupResult, dst_c, src_c, indices: list, count: str | None) -> None:
        layout = group_layout(found.pairs)
        for pair in found.pairs:
            pair.transposed, note = transposed(pair, layout)
            if note:
                pair.evidence.append(note)
            if note and note.startswith("ambiguous"):
                found.ambiguous.append((pair.dst, pair.src, note.removeprefix("ambiguous: ")))
                continue
            self._emit_pair(pair, dst_c, src_c, indices, count)
        for dst, src, reason in found.ambiguous:
            dst_paths = tuple(_pattern(d, dst_c, indices) for d in dst)
            src_paths = tuple(_pattern(s, src_c, indices) for s in src)
            self.result.ambiguous.append(Ambiguity(dst_paths, src_paths, reason))
            for i in indices:
                self.matched_dst.update(_full(d, dst_c, i) for d in dst)  # not unmatched: listed as ambiguous
                self.matched_src.update(_full(s, src_c, i) for s in src)

    def _emit_pair(self, pair: Pair, dst_c, src_c, indices, count) -> None:
        generic = dst_c is not None
        star = (lambda rel: f"{dst_c}.*.{rel}" if dst_c else f"*.{rel}") if generic else (lambda rel: rel)
        converters: list[Converter] = []
        if len(pair.dst) == 1 and len(pair.src) == 1:
            d, s = pair.dst[0], pair.src[0]
            self._rule(s, d.rel, dst_c, src_c)
            if pair.transposed:
                converters.append(Transpose(star(d.rel) if generic else d.path))
        elif len(pair.src) == 1:  # split one source tensor into several
            s = pair.src[0]
            temp = self._temporary(_parent(pair.dst), s)
            self._rule(s, temp, dst_c, src_c)
            pattern = star(temp) if generic else temp
            into = [_template(d.rel, dst_c) if generic else d.path for d in pair.dst]
            # transposed: the source turned into the destination's layout first, then split along the
            # dim that stacks the parts there (0 for (out, in) parts, 1 for (in, out) ones)
            dim = 1 if pair.transposed and len(s.shape) == 2 and s.shape[0] == sum(d.shape[1] for d in pair.dst) else 0
            if pair.transposed:
                converters.append(Transpose(pattern))
            sizes = [d.shape[dim] for d in pair.dst]
            converters.append(Split(pattern, into=into, dim=dim, sizes=None if len(set(sizes)) == 1 else sizes))
        else:  # concatenate several into one
            d = pair.dst[0]
            temps = []
            for s in pair.src:
                temp = self._temporary(d.module, s)
                self._rule(s, temp, dst_c, src_c)
                temps.append(star(temp) if generic else temp)
                if pair.transposed:
                    converters.append(Transpose(temps[-1]))
            # the transposed parts stack along dim 0 of an (out, in) destination, dim 1 of an (in, out) one
            dim = 1 if pair.transposed and len(d.shape) == 2 and d.shape[1] == sum(s.shape[0] for s in pair.src) else 0
            converters.append(Concat(temps, into=_template(d.rel, dst_c) if generic else d.path, dim=dim))
        self.result.convert += converters
        evidence = tuple(pair.evidence + ([count] if count else []))
        for i in indices:
            for d in pair.dst:
                self.result.matched.append(
                    Match(_full(d, dst_c, i), tuple(_full(s, src_c, i) for s in pair.src), tuple(converters), evidence)
                )
                self.matched_dst.add(_full(d, dst_c, i))
            self.matched_src.update(_full(s, src_c, i) for s in pair.src)

    def _temporary(self, dst_module: str, src: Leaf) -> str:
        """Where a fused (or to-be-fused) source tensor waits for its converter: under the
        destination module, with its own name."""
        last = src.module.rpartition(".")[2]
        name = f"{dst_module}.{last}" if dst_module else last
        return f"{name}.{src.raw_param}"

    def _rule(self, src: Leaf, dst_rel: str, dst_c, src_c) -> None:
        """A rename rule sending `src` (and, in a block, the same tensor of every block) to `dst_rel`
        (in `dst_c`): one rule per module when the parameter keeps its name."""
        if src_c is not None:  # numbered blocks: one rule for all of them
            head_s = rf"^{re.escape(src_c)}\.(\d+)\." if src_c else r"^(\d+)\."
            head_d = f"{dst_c}.\\1." if dst_c else "\\1."
            self.expected[src.path] = f"{dst_c}.{src.index}.{dst_rel}" if dst_c else f"{src.index}.{dst_rel}"
        else:
            head_s, head_d = "^", ""
            self.expected[src.path] = dst_rel
        dst_module, _, dst_param = dst_rel.rpartition(".")
        if src.rel == dst_rel and src_c == dst_c:
            return
        if src.raw_param == dst_param and src.module and dst_module:
            self.rules[head_s + re.escape(src.module) + r"\.(?=[^.]+$)"] = f"{head_d}{dst_module}."
        else:
            self.rules[head_s + re.escape(src.rel) + "$"] = head_d + dst_rel

    def _finish(self) -> None:
        result = self.result
        rules = dict(self.rules)
        if not _sends(rules, self.src, self.expected, self.dst):
            rules = {f"^{re.escape(path)}$": "@" + target for path, target in self.expected.items()}
            rules["^@"] = ""  # two steps, so that no rule's output meets another rule
        result.rename.update(rules)
        followers: dict[str, list[str]] = {}
        for path, first in self.tied.items():
            followers.setdefault(first, []).append(path)
        groups = {path: [first, *followers[first]] for first in followers for path in [first, *followers[first]]}
        result.unmatched_dst = [
            leaf.path
            for leaf in self.dst
            if leaf.path not in self.matched_dst and not any(p in self.matched_dst for p in groups.get(leaf.path, ()))
        ]
        result.unmatched_src = [leaf.path for leaf in self.src if leaf.path not in self.matched_src]
        result.unmatched_hints = [glob for glob in self.hints if glob not in self.matcher.used_hints]
        by_dst = {m.dst: m for m in result.matched}
        for path, group in groups.items():  # tied to a matched tensor: matched too
            origin = next((by_dst[p] for p in group if p in by_dst), None)
            if path not in by_dst and origin is not None:
                evidence = (*origin.evidence, f"tied to '{origin.dst}'")
                result.matched.append(Match(path, origin.src, origin.converters, evidence))


def _parent(leaves: tuple[Leaf, ...]) -> str:
    """The module holding all of `leaves`' modules (``attn`` for ``attn.q``, ``attn.k``, ``attn.v``)."""
    parts = [leaf.module.split(".") for leaf in leaves]
    common = []
    for names in zip(*parts):
        if len(set(names)) != 1:
            break
        common.append(names[0])
    if all(len(p) == len(common) for p in parts):  # all in one module: its parent
        common = common[:-1]
    return ".".join(common)


def _flattened(leaf: Leaf) -> Leaf:
    """The leaf seen by its whole path, as at the top level."""
    flat = Leaf(leaf.path, leaf.shape, None, None, leaf.path)
    flat.matrix = leaf.matrix
    return flat


def _by_container(leaves: list[Leaf]) -> tuple[dict[str, dict[int, list[Leaf]]], list[Leaf]]:
    blocks: dict[str, dict[int, list[Leaf]]] = {}
    top = []
    for leaf in leaves:
        if leaf.container is None:
            top.append(leaf)
        else:
            blocks.setdefault(leaf.container, {}).setdefault(leaf.index or 0, []).append(leaf)
    return blocks, top


def _all(blocks: dict[int, list[Leaf]]) -> list[Leaf]:
    return [leaf for i in sorted(blocks) for leaf in blocks[i]]


def _same_layout(a: list[Leaf], b: list[Leaf]) -> bool:
    return [(leaf.rel, leaf.shape) for leaf in a] == [(leaf.rel, leaf.shape) for leaf in b]


def _full(leaf: Leaf, container, index) -> str:
    if container is None or index is None:
        return leaf.path
    return f"{container}.{index}.{leaf.rel}" if container else f"{index}.{leaf.rel}"


def _pattern(leaf: Leaf, container, indices: list) -> str:
    """The leaf's path, with ``*`` for the block index when it stands for every block."""
    if container is None or len(indices) == 1:
        return _full(leaf, container, indices[0])
    return f"{container}.*.{leaf.rel}" if container else f"*.{leaf.rel}"


def _template(rel: str, container: str) -> str:
    return f"{container}.{{0}}.{rel}" if container else f"{{0}}.{rel}"


def _sends(rules: dict, src: list[Leaf], expected: dict[str, str], dst: list[Leaf]) -> bool:
    """Whether `rules` send every matched source path where expected and no other onto a taken path."""
    renamer = Renamer(rules)
    taken = set(expected.values())
    for leaf in src:
        new = renamer(leaf.path)
        if leaf.path in expected:
            if new != expected[leaf.path]:
                return False
        elif new in taken:
            return False
    return True
