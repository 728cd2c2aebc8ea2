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

from .._plan.select import Selection
from .._rename import compile_rename, rename_tree
from .._runtime import collector_paused
from ..convert import Concat, Converter, Split, Transpose
from ..sources import to_source_tree
from .alignment import Alignment, Ambiguity, Match
from .hints import resolve_hints
from .layers import layer_rules
from .match import GroupMatcher, GroupResult, Leaf, Pair, group_layout, transposed
from .paths import (
    all_leaves,
    block_pattern,
    block_template,
    by_container,
    full_path,
    named_stages,
    parent,
    same_layout,
    sends,
)
from .rules import generalise
from .sides import destination, flattened, source


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
    with collector_paused():  # as in `load`: many small objects, none in cycles
        result = _aligned(dst, src, Selection(include, exclude, filter), exclude, rename, hints)
        # the leaves and the source tree are freed on return, before the collector resumes: its
        # first pass then scans the result only (scanning them too was a tenth of a 20k align)
    if reference is not None:  # verification as evidence: structload/_verify/_evidence.py
        from .._verify._evidence import resolve_ambiguities

        options = {"include": include, "exclude": exclude, "filter": filter, "rename": rename, "hints": hints}
        result = resolve_ambiguities(dst, src, result, reference, options)
    return result


def _aligned(dst, src, selection: Selection, exclude, rename, hints) -> Alignment:
    tree = to_source_tree(src)
    renamer = compile_rename(rename)
    if renamer is not None:
        tree = rename_tree(tree, renamer)
    dst_leaves, dst_tied, buffers = destination(dst, selection)
    src_leaves, src_tied = source(tree, Selection(exclude=exclude) if exclude is not None else None)
    ignored = [leaf.path for leaf in src_leaves if leaf.path in buffers]
    src_leaves = [leaf for leaf in src_leaves if leaf.path not in buffers]
    result = Alignment(ignored=ignored)
    if isinstance(rename, dict):
        result.rename.update(rename)
    # a tied tensor is one tensor, on either side: its other paths are matched after the rest
    followers = [leaf for leaf in dst_leaves if leaf.path in dst_tied]
    src_followers = [leaf for leaf in src_leaves if leaf.path in src_tied]
    dst_leaves = [leaf for leaf in dst_leaves if leaf.path not in dst_tied]
    src_leaves = [leaf for leaf in src_leaves if leaf.path not in src_tied]
    _Aligner(result, dst_leaves, src_leaves, dst_tied, dict(hints or {})).run(followers, src_followers)
    return result


class _Aligner:
    def __init__(self, result: Alignment, dst: list[Leaf], src: list[Leaf], tied: dict[str, str], hints: dict):
        self.result, self.dst, self.src, self.tied, self.hints = result, dst, src, tied, hints
        self.pins, self.refused_hints = resolve_hints(hints, dst, src)
        self.matcher = GroupMatcher(self.pins)
        self.rules: dict[str, str | None] = {}
        self.narrow: dict[str, str] = {}  # a module rule -> the same rule for its own tensors only
        self.by_module: dict[str, list[tuple[str, str]]] = {}  # a module rule -> the tensor rules it stands for
        self.split: set[str] = set()  # module rules given up: their tensors go to several modules
        self.layouts: set[str] = set()  # how the groups aligned so far store their matrices
        self.ambiguous_dst: set[str] = set()
        self.diverging: str | None = None  # the destination container whose depth no source one has
        self.all_src = list(src)
        self.expected: dict[str, str] = {}  # source path -> where the rules must send it
        self.matched_src: set[str] = set()
        self.matched_dst: set[str] = set()

    def run(self, followers: list[Leaf], src_followers: list[Leaf]) -> None:
        dst_blocks, dst_top = by_container(self.dst)
        src_blocks, src_top = by_container(self.src)
        scratch = Alignment()  # pairing twice when pins cross groups: notes only from the last
        pairs = self._pair_containers(dst_blocks, src_blocks, scratch)
        crossing = self._crossing_pins(dict(pairs))
        if crossing:
            self._align_group([flattened(d) for d, _ in crossing], [flattened(s) for _, s in crossing])
            pinned = {leaf.path for pair in crossing for leaf in pair}
            self.dst = [leaf for leaf in self.dst if leaf.path not in pinned]
            self.src = [leaf for leaf in self.src if leaf.path not in pinned]
            dst_blocks, dst_top = by_container(self.dst)
            src_blocks, src_top = by_container(self.src)
            scratch = Alignment()
            pairs = self._pair_containers(dst_blocks, src_blocks, scratch)
        self.result.ambiguous += scratch.ambiguous
        for dst_c, src_c in pairs:
            self._align_blocks(dst_c, dst_blocks.pop(dst_c), src_c, src_blocks.pop(src_c))
        # the rest by whole paths (a Sequential's "body.3.weight", lpips' lin0..lin4 against a list)
        rest_dst = dst_top + [flattened(leaf) for blocks in dst_blocks.values() for leaf in all_leaves(blocks)]
        rest_src = src_top + [flattened(leaf) for blocks in src_blocks.values() for leaf in all_leaves(blocks)]
        self._align_group(rest_dst, rest_src)
        self._match_followers(followers, src_followers)
        self._finish()
        diverging = f"{self.diverging}." if self.diverging else ""
        if scratch.divergence and any(  # the depths differ where tensors stay undecided: say so, with both counts
            path.startswith(diverging) for path in [*self.result.unmatched_dst, *self.ambiguous_dst]
        ):
            self.result.divergence = scratch.divergence

    def _crossing_pins(self, partner: dict) -> list[tuple[Leaf, Leaf]]:
        """Pinned pairs whose two tensors are in different groups (a block's tensor and a top-level
        one, or two blocks of other numbers): aligned on their own, by whole paths."""
        if not self.pins:
            return []
        dst_by_path = {leaf.path: leaf for leaf in self.dst}
        src_by_path = {leaf.path: leaf for leaf in self.src}
        crossing = []
        for dst_path, (src_path, *_) in self.pins.items():
            d, s = dst_by_path.get(dst_path), src_by_path.get(src_path)
            if d is None or s is None:
                continue
            if d.container in partner:
                same = partner[d.container] == s.container and d.index == s.index
            else:
                same = s.container not in partner.values()
            if not same:
                crossing.append((d, s))
        return crossing

    def _match_followers(self, followers: list[Leaf], src_followers: list[Leaf]) -> None:
        """A tied destination tensor after the first counts as matched with it; a source tensor
        left over that its names (not its shape alone) pair it with is loaded into it too. A tied
        source tensor nothing claims is dropped (``None`` in ``rename``): its data is loaded once."""
        self.all_src += src_followers  # the rules are checked on them too
        left = [leaf for leaf in self.src if leaf.path not in self.matched_src] + src_followers
        if followers and left:
            found = self.matcher.match([flattened(f) for f in followers], [flattened(s) for s in left])
            found.pairs = [p for p in found.pairs if not p.evidence[0].startswith("shape")]
            found.ambiguous = []
            self._emit(found, None, None, [None], None)
        for leaf in src_followers:
            if leaf.path not in self.matched_src:
                self.rules[f"^{re.escape(leaf.path)}$"] = None
                self.matched_src.add(leaf.path)

    # --- containers ------------------------------------------------------------------------

    def _pair_containers(self, dst_blocks: dict, src_blocks: dict, notes: Alignment) -> list[tuple[str, str]]:
        """Numbered containers of both sides paired by their number of blocks; `notes` gets the
        ambiguities and the divergence."""
        stages = named_stages([*dst_blocks, *src_blocks])  # aligned by whole paths instead
        pairs, free = [], {c: b for c, b in src_blocks.items() if c not in stages}
        for dst_c, blocks in ((c, b) for c, b in dst_blocks.items() if c not in stages):
            same = [c for c, b in free.items() if len(b) == len(blocks)]
            if len(same) > 1:
                named = [c for c in same if c.rsplit(".", 1)[-1] == dst_c.rsplit(".", 1)[-1]]
                same = named if len(named) == 1 else same
            if len(same) == 1:
                pairs.append((dst_c, same[0]))
                del free[same[0]]
            elif len(same) > 1:
                reason = f"{len(same)} numbered containers of the source have {len(blocks)} entries, as '{dst_c}' does"
                notes.ambiguous.append(Ambiguity((dst_c,), tuple(same), reason))
            elif free and notes.divergence is None:
                other = min(free, key=lambda c: abs(len(free[c]) - len(blocks)))
                self.diverging = dst_c
                notes.divergence = (
                    f"destination '{dst_c or '<root>'}' has {len(blocks)} entries, source '{other or '<root>'}' has "
                    f"{len(free[other])} (source '{other or '<root>'}' has {len(free[other])}, destination "
                    f"'{dst_c or '<root>'}' has {len(blocks)})"
                )
        return pairs

    def _align_blocks(self, dst_c: str, dst_blocks: dict, src_c: str, src_blocks: dict) -> None:
        dst_first, src_first = dst_blocks[min(dst_blocks)], src_blocks[min(src_blocks)]
        template = self.matcher.match(dst_first, src_first)
        uniform = all(same_layout(dst_blocks[i], dst_first) for i in dst_blocks) and all(
            same_layout(src_blocks[i], src_first) for i in src_blocks
        )
        count = f"numbered blocks: {len(dst_blocks)} = {len(src_blocks)}"
        if uniform and sorted(dst_blocks) == sorted(src_blocks):
            self._check_block_pins(template, dst_c, dst_blocks)
            self._emit(template, dst_c, src_c, list(dst_blocks), count)
            return
        for i, j in zip(sorted(dst_blocks), sorted(src_blocks)):  # blocks that differ: one by one, by full path
            dst_i, src_j = [flattened(leaf) for leaf in dst_blocks[i]], [flattened(leaf) for leaf in src_blocks[j]]
            self._emit(self.matcher.match(dst_i, src_j), None, None, [None], count)

    def _check_block_pins(self, template: GroupResult, dst_c: str, dst_blocks: dict) -> None:
        """Pins in the blocks after the template one hold when the template pairs the same (they
        are applied through it); one that contradicts it is refused."""
        if not self.pins:
            return
        paired = {p.dst[0].rel: p.src[0].rel for p in template.pairs if len(p.dst) == len(p.src) == 1}
        first = min(dst_blocks)
        for leaf in (leaf for i in dst_blocks if i != first for leaf in dst_blocks[i]):
            pin = self.pins.get(leaf.path)
            if pin is None:
                continue
            src_path, text, dst_glob = pin
            if leaf.rel in paired and src_path.endswith("." + paired[leaf.rel]):
                self.matcher.applied_pins.add(leaf.path)
            else:
                self.refused_hints.setdefault(
                    dst_glob,
                    f"hint {text}: pins '{leaf.path}' to '{src_path}', which the blocks of '{dst_c}' pair "
                    "otherwise; pin every block alike ('*' for the number)",
                )

    def _align_group(self, dst: list[Leaf], src: list[Leaf]) -> None:
        if dst or src:
            self._emit(self.matcher.match(dst, src), None, None, [None], None)

    # --- matching inside a group -------------------------------------------------------------

    def _emit(self, found: GroupResult, dst_c, src_c, indices: list, count: str | None) -> None:
        layout = group_layout(found.pairs)
        if layout in ("direct", "transposed"):
            self.layouts.add(layout)
        elif layout == "unknown" and len(self.layouts) == 1:  # nothing in the group shows it: the model does
            layout = next(iter(self.layouts))
        for pair in found.pairs:
            pair.transposed, note = transposed(pair, layout)
            if note:
                pair.evidence.append(note)
            if note and note.startswith("ambiguous"):
                found.ambiguous.append((pair.dst, pair.src, note.removeprefix("ambiguous: ")))
                continue
            self._emit_pair(pair, dst_c, src_c, indices, count)
        for dst, src, reason in found.ambiguous:
            dst_paths = tuple(block_pattern(d, dst_c, indices) for d in dst)
            src_paths = tuple(block_pattern(s, src_c, indices) for s in src)
            self.result.ambiguous.append(Ambiguity(dst_paths, src_paths, reason))
            for i in indices:
                self.ambiguous_dst.update(full_path(d, dst_c, i) for d in dst)
                self.matched_dst.update(full_path(d, dst_c, i) for d in dst)  # not unmatched: listed as ambiguous
                self.matched_src.update(full_path(s, src_c, i) for s in src)

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
            temp = self._temporary(parent(pair.dst), s)
            self._rule(s, temp, dst_c, src_c)
            pattern = star(temp) if generic else temp
            into = [block_template(d.rel, dst_c) if generic else d.path for d in pair.dst]
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
            converters.append(Concat(temps, into=block_template(d.rel, dst_c) if generic else d.path, dim=dim))
        self.result.convert += converters
        evidence, acting = tuple(pair.evidence + ([count] if count else [])), tuple(converters)
        matched, matched_dst, matched_src = self.result.matched, self.matched_dst, self.matched_src
        dst_rels, src_rels = [d.rel for d in pair.dst], [s.rel for s in pair.src]
        for i in indices:  # once per block of the model: the paths written out inline (no call per tensor)
            if i is None:
                dst_paths, sources = [d.path for d in pair.dst], tuple(s.path for s in pair.src)
            else:
                dst_head, src_head = f"{dst_c}.{i}." if dst_c else f"{i}.", f"{src_c}.{i}." if src_c else f"{i}."
                dst_paths, sources = [dst_head + rel for rel in dst_rels], tuple(src_head + rel for rel in src_rels)
            for path in dst_paths:
                matched.append(Match(path, sources, acting, evidence))
            matched_dst.update(dst_paths)
            matched_src.update(sources)

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
        exact = (head_s + re.escape(src.rel) + "$", head_d + dst_rel)
        key = head_s + re.escape(src.module) + r"\."  # the module, as a person writes it
        same_name = src.raw_param == dst_param and src.module and dst_module and key not in self.split
        if same_name and self.rules.setdefault(key, f"{head_d}{dst_module}.") == f"{head_d}{dst_module}.":
            self.narrow[key] = key + "(?=[^.]+$)"  # its own tensors only, when a submodule must stay
            self.by_module.setdefault(key, []).append(exact)
            return
        if key in self.by_module:  # its tensors go elsewhere too (a stacked LSTM's layers): one rule per tensor
            del self.rules[key]
            self.rules.update(self.by_module.pop(key))
        self.split.add(key)
        self.rules[exact[0]] = exact[1]

    def _rules(self) -> dict:
        """The simplest rules that send every source path where the matches say: a stacked RNN in
        one rule, one rule per module, a module's own tensors only (look-ahead), or, when rules
        would meet, one rule per tensor in two steps."""
        candidates = (
            lambda: generalise(layer_rules(self.rules)),  # rules alike but for their numbers: one rule
            lambda: layer_rules(self.rules),
            lambda: dict(self.rules),
            lambda: {self.narrow.get(key, key): value for key, value in self.rules.items()},
        )
        for make in candidates:
            rules = make()
            if (sent := sends(rules, self.all_src, self.expected)) is not None:
                return sent
        rules = {f"^{re.escape(path)}$": "@" + target for path, target in self.expected.items()}
        rules["^@"] = ""  # two steps, so that no rule's output meets another rule
        rules.update({key: None for key, value in self.rules.items() if value is None})
        return rules

    def _finish(self) -> None:
        result = self.result
        result.rename.update(self._rules())
        followers: dict[str, list[str]] = {}
        for path, first in self.tied.items():
            followers.setdefault(first, []).append(path)
        groups = {path: [first, *followers[first]] for first in followers for path in [first, *followers[first]]}
        result.unmatched_dst = [
            leaf.path
            for leaf in self.dst
            if leaf.path not in self.matched_dst
            and not (leaf.path in groups and any(p in self.matched_dst for p in groups[leaf.path]))
        ]
        result.unmatched_src = [leaf.path for leaf in self.src if leaf.path not in self.matched_src]
        result.claimed_dst, result.claimed_src = set(self.matched_dst), set(self.matched_src)
        applied = {self.pins[path][1] for path in self.matcher.applied_pins}
        for dst_glob, src_glob in self.hints.items():
            text = f"{dst_glob!r} = {src_glob!r}"
            if dst_glob not in self.refused_hints and text not in applied:  # never silently unused
                self.refused_hints[dst_glob] = f"hint {text}: its tensors were paired otherwise before it applied"
        result.unmatched_hints = list(self.refused_hints)
        result.hint_problems = dict(self.refused_hints)
        by_dst = {m.dst: m for m in result.matched}
        for path, group in groups.items():  # tied to a matched tensor: matched too
            origin = next((by_dst[p] for p in group if p in by_dst), None)
            if path not in by_dst and origin is not None:
                evidence = (*origin.evidence, f"tied to '{origin.dst}'")
                result.matched.append(Match(path, origin.src, origin.converters, evidence))
