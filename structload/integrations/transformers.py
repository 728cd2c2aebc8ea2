"""transformers' declared checkpoint conversions, applied as structload renames and converters.

transformers 5 keeps hub checkpoints in their historical layout: ``save_pretrained`` writes
the old names and ``from_pretrained`` converts them through the transforms each model type
declares (``transformers.conversion_mapping.get_model_conversion_mapping(model)``):
``WeightRenaming`` (a regex on names) and ``WeightConverter`` (names, then operations such as
``MergeModulelist``, ``Concatenate``, ``Chunk``, ``Transpose``, ``PermuteForRope``).

This module reads that declaration for every transformers model in the destination and
applies it to the flat source, the way ``from_pretrained`` does: keys in transformers' sort
order, every renaming then at most one converter, ``base_model_prefix`` added or removed
where only that makes the key exist, and the original key kept when renaming loses it.
Names are computed by transformers' own transforms (the declaration is evidence, never a
guess). Each converter group becomes one lazy source tensor: the common operations are
structload views and gathers (`_ops`), read straight into the destination; any other
operation runs transformers' own code when the tensor is read. Either way its output names,
shapes and dtypes are known in the plan, from a run of transformers' code on ``meta``
stand-ins, so a wrong checkpoint is a problem before anything is written.

Imported only when the destination is a transformers model (`declared_library`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import torch

from .._report import Problem, ProblemKind
from ..sources import SourceTensor, iter_leaves
from ..sources._leaves import ConvertedTensor
from ..sources.nesting import insert
from . import _ops
from ._declarations import declared_transforms


def apply_declared(tree, dst: torch.nn.Module) -> tuple[object, list[Problem], list[str]]:
    """The source `tree` with the conversions declared by `dst`'s transformers models applied;
    the problems found, and one line per transform that touched the source (for the report)."""
    if type(tree) is not dict:
        return tree, [], []
    flat = dict(iter_leaves(tree))
    problems: list[Problem] = []
    applied: list[str] = []
    for prefix, model in _models(dst):
        problems += _apply_for(flat, prefix, model, applied)
    converted: dict = {}
    for path, leaf in flat.items():
        insert(converted, path, leaf)
    return converted, problems, applied


def _models(dst: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Module]]:
    """The outermost transformers models in `dst`, with their paths (each declares for its subtree)."""
    from transformers import PreTrainedModel

    roots: list[str] = []
    for path, module in dst.named_modules():
        if isinstance(module, PreTrainedModel) and not any(_under(path, root) for root in roots):
            roots.append(path)
            yield path, module


def _under(path: str, root: str) -> bool:
    return root == "" or path == root or path.startswith(root + ".")


class _Declaration:
    """One model's declared transforms, split as transformers splits them, with use counts."""

    def __init__(self, model: Any):
        from transformers.core_model_loading import WeightConverter, WeightRenaming

        self.model = model
        transforms = declared_transforms(model)  # fresh copies: transforms keep state
        self.renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
        self.converters = [t for t in transforms if isinstance(t, WeightConverter)]
        self.by_pattern = {p: c for c in self.converters for p in c.source_patterns}
        self.expected = dict.fromkeys(model.state_dict(keep_vars=True), True)  # names only: no detach
        self.uses: Counter = Counter()

    def rename(self, key: str) -> tuple[str, str | None]:
        """`key` renamed as ``from_pretrained`` renames it, and the converter pattern it matched."""
        from transformers.core_model_loading import rename_source_key

        touched: list = []
        renamed = key
        for renaming in self.renamings:  # every renaming, in order (they may chain)
            new, _ = renaming.rename_source_key(renamed)
            touched += [renaming] if new != renamed else []
            renamed = new
        pattern = None
        for converter in self.converters:  # then at most one converter
            renamed, pattern = converter.rename_source_key(renamed)
            if pattern is not None:
                touched.append(converter)
                break
        prefix = self.model.base_model_prefix
        renamed, _ = rename_source_key(renamed, [], [], base_model_prefix=prefix, meta_state_dict=self.expected)
        if renamed not in self.expected and key in self.expected:  # as from_pretrained: keep a key that exists
            return rename_source_key(key, [], [], base_model_prefix=prefix, meta_state_dict=self.expected)
        if touched:
            self.uses.update(id(t) for t in touched)
        return renamed, pattern

    def lines(self, name: str, renamed: int) -> list[str]:
        """What was applied, for the report: one line per transform that touched the source."""
        used = [t for t in self.renamings + self.converters if self.uses[id(t)]]
        if not used and not renamed:
            return []
        lines = [f"{name}: {len(used)} of the {len(self.renamings) + len(self.converters)} declared transforms"]
        return lines + [f"{name}: {describe(t)} on {self.uses[id(t)]} entries" for t in used]


def describe(transform) -> str:
    """``WeightRenaming('encoder\\.layer\\.' -> 'layers.')``: a transform in one line."""
    sources = ", ".join(repr(p) for p in transform.source_patterns)
    targets = ", ".join(repr(p) for p in transform.target_patterns)
    ops = getattr(transform, "operations", None)
    tail = f" by {', '.join(repr(op) for op in ops)}" if ops else ""
    return f"{type(transform).__name__}({sources} -> {targets}{tail})"


def _apply_for(flat: dict, prefix: str, model: torch.nn.Module, applied: list[str]) -> list[Problem]:
    """Apply one model's declaration to the entries under `prefix`, in place."""
    from transformers.core_model_loading import dot_natural_key

    declaration = _Declaration(model)
    head = f"{prefix}." if prefix else ""
    keys = sorted((k[len(head) :] for k in flat if k.startswith(head)), key=dot_natural_key)
    renames: dict[str, str] = {}
    groups: dict[str, tuple[object, dict[str, list[str]]]] = {}
    for key in keys:
        renamed, pattern = declaration.rename(key)
        if pattern is not None and renamed in declaration.expected:
            converter, collected = groups.setdefault(renamed, (declaration.by_pattern[pattern], {}))
            collected.setdefault(pattern, []).append(key)  # (the converter is copied before it runs: it keeps state)
        elif renamed != key and pattern is None:
            renames[key] = renamed
    problems = _move(flat, head, renames)
    for target, (converter, collected) in groups.items():
        problems += _convert_group(flat, head, model, target, converter, collected)
    name = f"transformers {type(model).__name__}" + (f" at '{prefix}'" if prefix else "")
    applied += declaration.lines(name, len(renames))
    return problems


def _move(flat: dict, head: str, renames: dict[str, str]) -> list[Problem]:
    """Rename entries. Where a declared renaming makes several entries one name that the source
    does not hold (ESM's per-layer ``inv_freq`` becoming the model's one buffer), the first in
    natural order is kept, as the model's own load hook and ``from_pretrained`` do, and the others
    are dropped; that holds only for entries of one shape and dtype. Any other clash (an entry
    renamed onto a name the source already holds, or entries of other shapes) is a problem, and
    none of them is loaded."""
    leaves = {key: flat.pop(head + key) for key in renames}
    problems = []
    by_target: dict[str, list[str]] = {}
    for key, new in renames.items():
        by_target.setdefault(new, []).append(key)
    for new, keys in by_target.items():
        if head + new in flat or (len(keys) > 1 and not _alike([leaves[k] for k in keys])):
            others = keys[1:] or [new]
            message = f"'{head}{keys[0]}' and '{head}{others[0]}' both become '{head}{new}' by transformers' declared renaming"
            problems += [Problem(ProblemKind.SOURCE, head + key, message) for key in keys]
            continue
        flat[head + new] = leaves[keys[0]]
    return problems


def _alike(leaves: list) -> bool:
    """Whether every leaf is a source tensor of the first one's shape and dtype."""
    first = leaves[0]
    return all(
        isinstance(leaf, SourceTensor) and tuple(leaf.shape) == tuple(first.shape) and leaf.dtype == first.dtype
        for leaf in leaves
    )


def _convert_group(flat, head, model, target, converter, collected: dict[str, list[str]]) -> list[Problem]:
    """One ``WeightConverter`` application: its source entries replaced by the tensors it makes."""
    leaves = {pattern: [flat.pop(head + key) for key in keys] for pattern, keys in collected.items()}
    sources = tuple(head + key for keys in collected.values() for key in keys)
    for path, leaf in zip(sources, (leaf for group in leaves.values() for leaf in group)):
        if not isinstance(leaf, SourceTensor):
            return [Problem(ProblemKind.TYPE, path, f"{describe(converter)} needs a tensor at '{path}'")]
    made = _ops.lazy(converter, target, leaves)
    if made is None:  # no lazy form: transformers' own code, run on meta stand-ins now to know the outputs
        try:
            planned = _ops.on_meta(converter, target, model, leaves)
        except Exception as error:  # it refused the shapes: the plan says so, nothing is read
            message = f"{describe(converter)} cannot convert {', '.join(sources)}: {type(error).__name__}: {error}"
            return [Problem(ProblemKind.SHAPE, head + target, message)]
        made = _ops.computed(converter, target, model, leaves, planned)
    made_by = f"transformers {describe(converter)}"
    problems = []
    for name, leaf in made.items():
        if head + name in flat:
            problems.append(
                Problem(ProblemKind.SOURCE, head + name, f"'{head + name}' is in the source and made by {made_by}")
            )
            continue
        flat[head + name] = ConvertedTensor(leaf, f"{made_by} of " + ", ".join(f"'{s}'" for s in sources), sources)
    return problems
