"""transformers' declaration of a model, read once per kind of model.

``get_model_conversion_mapping(model)`` walks the model and deep-copies the transforms of each
model type it finds (about 0.4 ms for a small model, every load). What it returns depends only
on the transformers models in the tree (their paths, class names, ``model_type`` and whether
they are custom code), the root's ``base_model_prefix`` and transformers' registry of
mappings; `declared_transforms` keeps one pristine copy per such signature and hands out
shallow copies, because the transforms keep state while a checkpoint is renamed
(``GroupWeightRename`` activates on its first key): two loads, even on two threads, never
share one. A mapping registered later (``register_checkpoint_conversion_mapping``) is part
of the signature, so it is honoured.

Renaming keys costs more than reading the declaration (about 8 µs a key, in transformers'
own ``rename_source_key``); testing each transform's regex first does not make it cheaper
(measured: the keys it matches are searched twice), so every key goes through them all.
"""

from __future__ import annotations

import copy
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
