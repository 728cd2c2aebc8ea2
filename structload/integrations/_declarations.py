"""transformers' declaration of a model, read once per kind of model, and a cheap test of which keys it can touch.

``get_model_conversion_mapping(model)`` walks the model and deep-copies the transforms of each
model type it finds (about 0.4 ms for a small model, every load). What it returns depends only
on the transformers models in the tree (their paths, class names, ``model_type`` and whether
they are custom code), the root's ``base_model_prefix`` and transformers' registry of
mappings; `declared_transforms` keeps one pristine copy per such signature and hands out
shallow copies, because the transforms keep state while a checkpoint is renamed
(``GroupWeightRename`` activates on its first key): two loads, even on two threads, never
share one. A mapping registered later (``register_checkpoint_conversion_mapping``) is part
of the signature, so it is honoured.

`screen` gives, for a transform whose renaming begins with its own regex test (every class
transformers declares with but a few), that regex's ``search``: a key it does not match is
one the transform leaves alone, known without a Python call per transform and key. Any other
transform has no screen and is always asked.

Examples:
    >>> from transformers.core_model_loading import WeightRenaming
    >>> renaming = WeightRenaming(".block_sparse_moe.", ".mlp.")
    >>> test = screen(renaming)
    >>> test("layers.0.self_attn.q_proj.weight") is None  # left alone: no call to rename_source_key
    True
    >>> renaming.rename_source_key("layers.0.block_sparse_moe.gate.weight")[0]
    'layers.0.mlp.gate.weight'
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

#: At most this many signatures are kept (a process loads few kinds of models).
_KEPT = 32

_declarations: dict[tuple, tuple[tuple, list]] = {}  # signature -> (registry entries it was read from, transforms)


def declared_transforms(model: Any) -> list:
    """``get_model_conversion_mapping(model)``, read once per signature; fresh copies each call.

    >>> from transformers import BertConfig, BertModel
    >>> config = BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8)
    >>> first, second = declared_transforms(BertModel(config)), declared_transforms(BertModel(config))
    >>> [type(t).__name__ for t in first] == [type(t).__name__ for t in second] and first[0] is not second[0]
    True
    """
    from transformers.conversion_mapping import get_model_conversion_mapping

    found = _signature(model)
    if found is None:  # a transformers without the registry read here: no cache
        return get_model_conversion_mapping(model)
    signature, entries = found
    kept = _declarations.get(signature)
    if kept is None or any(a is not b for a, b in zip(kept[0], entries)):
        if len(_declarations) >= _KEPT:
            _declarations.clear()
        kept = (entries, get_model_conversion_mapping(model))
        _declarations[signature] = kept
    return [copy.copy(transform) for transform in kept[1]]  # own state per load (slots copied, not shared)


def _signature(model: Any) -> tuple[tuple, tuple] | None:
    """What ``get_model_conversion_mapping`` reads: the transformers models in `model` and the
    registry's entries for their names (the entries are kept: their ids stay theirs)."""
    from transformers import conversion_mapping
    from transformers.modeling_utils import PreTrainedModel

    registry = getattr(conversion_mapping, "_checkpoint_conversion_mapping_cache", None)
    users = getattr(conversion_mapping, "USER_REGISTERED_MAPPINGS", None)
    if not isinstance(registry, dict) or not isinstance(users, set):
        return None
    models, names = [], ["legacy"]
    for path, module in model.named_modules():
        if isinstance(module, PreTrainedModel):
            kind = (type(module).__name__, module.config.model_type)
            models.append((path, type(module), *kind, module.is_custom_code(), any(n in users for n in kind)))
            names += kind
    entries = tuple(registry.get(name) for name in names)
    return (model.base_model_prefix, tuple(models), tuple(id(e) for e in entries)), entries


def screen(transform: Any) -> Callable[[str], object] | None:
    """The regex test a key must pass for `transform` to rename it, or ``None`` when only a call tells."""
    from transformers.core_model_loading import WeightTransform

    kind = type(transform)
    if transform.scope_prefix is not None or kind._scoped_match is not WeightTransform._scoped_match:
        return None  # scoped: the key is matched after a prefix is cut
    return transform.compiled_sources.search if kind.rename_source_key in _screened() else None


def _screened() -> set:
    """The renaming methods that return the key unchanged unless ``_scoped_match`` matched it."""
    from transformers import core_model_loading as loading

    classes = ("WeightTransform", "GroupWeightRename", "Inkling2IndexOffsetWeightRename")
    return {getattr(loading, name).rename_source_key for name in classes if hasattr(loading, name)}
