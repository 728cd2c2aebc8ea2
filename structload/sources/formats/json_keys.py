"""JSON as checkpoints store it (a safetensors header, a sharded checkpoint's index)."""

from __future__ import annotations


def refuse_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    """A ``json.loads`` ``object_pairs_hook`` that refuses a key given twice.

    >>> import json
    >>> json.loads('{"a": 1, "a": 2}', object_pairs_hook=refuse_duplicate_keys)
    Traceback (most recent call last):
    ...
    ValueError: 'a' is listed twice
    """
    keys = [key for key, _ in pairs]
    if len(keys) != len(set(keys)):
        duplicate = next(key for key in keys if keys.count(key) > 1)
        raise ValueError(f"'{duplicate}' is listed twice")
    return dict(pairs)
