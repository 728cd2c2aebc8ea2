"""Building a nested source tree out of dotted names.

A flat ``state_dict()`` (``{"fc.weight": t}``), a nested mapping
(``{"fc": {"weight": t}}``) and a mix of both all become the same nested
dict. A name given twice becomes a `BadLeaf` at that path, so the walk
reports it like any other problem.
"""

from __future__ import annotations

from ._leaves import BadLeaf


def insert(root: dict, dotted: str, value, *, origin: str = "") -> dict | None:
    """Put `value` at the dotted path `dotted` under `root`, merging subtrees. Returns the subtree
    that holds its last name, or ``None`` when a leaf on the way made it go elsewhere.

    >>> tree = {}
    >>> insert(tree, "fc.weight", 1) is tree["fc"]
    True
    >>> _ = insert(tree, "fc", {"bias": 2}); tree
    {'fc': {'weight': 1, 'bias': 2}}
    >>> _ = insert(tree, "fc.bias", 3); tree["fc"]["bias"]
    BadLeaf("given twice in the source (as 'fc.bias')")

    A key that is also the prefix of other keys (``fc.weight`` and
    ``fc.weight.extra``) keeps its value at its name; the longer keys stay
    under their full dotted name beside it, where nothing can pair with them,
    so they are unexpected (as with ``load_state_dict``):

    >>> tree = {}
    >>> insert(tree, "fc.weight", 1) is tree["fc"], insert(tree, "fc.weight.extra", 2)
    (True, None)
    >>> tree
    {'fc': {'weight': 1, 'weight.extra': 2}}
    """
    *parents, name = dotted.split(".")
    node = root
    for depth, part in enumerate(parents):
        child = node.get(part)
        if child is None and part not in node:
            child = node[part] = {}
        elif type(child) is not dict:  # a leaf where this key needs a subtree: keep the leaf
            rest = ".".join([*parents[depth + 1 :], name])
            merge_into(node, f"{part}.{rest}", value, dotted, origin)
            return None
        node = child
    merge_into(node, name, value, dotted, origin)
    return node


def merge_into(node: dict, name: str, value, dotted: str, origin: str = "") -> None:
    """Set ``node[name] = value``; two subtrees merge, a leaf and a subtree share the name (the leaf
    keeps it, the subtree's entries move beside it under dotted names), two leaves are a `BadLeaf`."""
    existing = node.get(name)
    if existing is None and name not in node:
        node[name] = value
    elif type(existing) is dict and type(value) is dict:
        for child_name, child in value.items():
            merge_into(existing, child_name, child, f"{dotted}.{child_name}", origin)
    elif type(existing) is dict or type(value) is dict:
        leaf, subtree = (value, existing) if type(existing) is dict else (existing, value)
        node[name] = leaf
        for path, child in _flat(subtree, name):
            merge_into(node, path, child, path, origin)
    else:
        node[name] = _conflict(dotted, origin)


def _flat(tree: dict, prefix: str):
    for name, child in tree.items():
        path = f"{prefix}.{name}"
        if type(child) is dict:
            yield from _flat(child, path)
        else:
            yield path, child


def _conflict(dotted: str, origin: str) -> BadLeaf:
    how = f"renamed from both {origin}" if origin else f"as '{dotted}'"
    return BadLeaf(f"given twice in the source ({how})", kind="source")


def numbered_in_order(tree):
    """The same tree with numbered children (``0``, ``1``, ..., ``10``) in numeric order.

    Safetensors headers, Hugging Face indexes and DCP metadata list names as
    sorted strings, which puts ``h.10`` before ``h.2``.

    >>> list(numbered_in_order({"h": {"10": 1, "2": 2, "0": 3}})["h"])
    ['0', '2', '10']
    """
    if type(tree) is not dict:
        return tree
    items = [(name, numbered_in_order(child)) for name, child in tree.items()]
    if items and all(name.isdigit() for name, _ in items):
        items.sort(key=lambda item: int(item[0]))
    return dict(items)
