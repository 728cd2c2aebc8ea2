"""The module versions a ``torch.save`` file carries: each state dict's ``_metadata``.

``state_dict()`` returns an ``OrderedDict`` with a ``_metadata`` attribute (module prefix ->
``{"version": module._version}``), and ``torch.save`` pickles it with the dict. Loading code
that migrates old checkpoints reads it (``local_metadata["version"]``: torchvision's MNASNet, a
user's module with a ``_version``), so a file must hand it over as ``torch.load`` does.

The torch file readers keep ``_metadata`` of every state dict the pickle holds, as plain data
only (`plain_metadata`), with the state dict's place in the tree put in front (``{"model":
state_dict}`` gives ``"model.features"``), in the opened tree's `SourceInfo`; a load reads them
from there (`versions_of`), for the subtree it loads.

Examples:
    >>> import collections
    >>> inner = collections.OrderedDict(w=1)
    >>> inner._metadata = {"": {"version": 1}, "features": {"version": 2}}
    >>> versions_in({"model": inner, "epoch": 3})
    {'model': {'version': 1}, 'model.features': {'version': 2}}
"""

from __future__ import annotations

from collections.abc import Mapping

from ..tree import SourceTree

_PLAIN = (int, float, str, bool, type(None))


def plain_metadata(value) -> dict | None:
    """`value` as a ``_metadata`` mapping of plain data (prefix -> {name: number, text...}), or
    ``None`` when it is anything else (then it is not kept: nothing of a pickle is trusted)."""
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        return None
    kept = {}
    for prefix, entry in value.items():
        if not isinstance(entry, Mapping) or not all(
            isinstance(k, str) and isinstance(v, _PLAIN) for k, v in entry.items()
        ):
            return None
        kept[prefix] = dict(entry)
    return kept


def versions_in(unpickled) -> dict[str, dict]:
    """Every state dict's ``_metadata`` in `unpickled` (mappings, nested), keyed by tree path."""
    found: dict[str, dict] = {}
    stack = [("", unpickled)]
    while stack:
        path, value = stack.pop()
        if not isinstance(value, Mapping):
            continue
        try:
            attributes = vars(value)  # what BUILD set on a state dict; a plain dict has none
        except TypeError:
            attributes = {}
        for prefix, entry in (plain_metadata(attributes.get("_metadata")) or {}).items():
            found.setdefault(".".join(p for p in (path, prefix) if p), entry)
        stack += [(f"{path}.{k}" if path else k, v) for k, v in value.items() if isinstance(k, str)]
    return found


def versions_of(source: SourceTree) -> dict[str, dict]:
    """The versions `source`'s torch file carried, keyed by module path relative to the subtree
    `source` is (``sl.open(path)["model"]``): what its ``state_dict()._metadata`` would be."""
    versions = source.info.versions
    if not source.path:
        return {key: dict(entry) for key, entry in versions.items()}
    path, head = source.path, source.path + "."
    return {
        ("" if key == path else key[len(head) :]): dict(entry)
        for key, entry in versions.items()
        if key == path or key.startswith(head)
    }
