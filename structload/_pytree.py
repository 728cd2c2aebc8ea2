"""One level of a pytree, through optree: the children of a node, by name.

structload registers nothing of its own with optree: containers are whatever
optree knows in the ``"structload"`` namespace, which includes the global
registry (dict, list, tuple, namedtuple, OrderedDict, ...) and any class a
user registered there::

    optree.register_pytree_node(MyState, flatten, unflatten, namespace="structload")
    @optree.dataclasses.dataclass(namespace="structload")
    class MyState: ...
"""

from __future__ import annotations

from collections.abc import Mapping

import optree

NAMESPACE = "structload"


def children(node) -> list[tuple[str, object]] | None:
    """The named children of a container, in its own order; ``None`` for a leaf.

    Dict keys keep their insertion order and every name is a string, so list
    positions read ``"0"``, ``"1"``, ... exactly as `state_dict()` keys do.

    >>> children({"b": 1, "a": [2, 3]})
    [('b', 1), ('a', [2, 3])]
    >>> children([None, 4])
    [('0', None), ('1', 4)]
    >>> children(5) is None
    True
    """
    if type(node) is dict:  # the common container, without optree's cost per call (same names, same order)
        return [(name if type(name) is str else str(name), child) for name, child in node.items()]
    if optree.tree_is_leaf(node, none_is_leaf=True, namespace=NAMESPACE):
        if isinstance(node, Mapping):  # a mapping type optree does not know
            return [(str(k), v) for k, v in node.items()]
        return None
    with optree.dict_insertion_ordered(True, namespace=NAMESPACE):
        flat = optree.tree_flatten_one_level(node, none_is_leaf=True, namespace=NAMESPACE)
    names = flat.entries
    if optree.is_namedtuple_instance(node):
        names = optree.namedtuple_fields(node)
    elif optree.is_structseq_instance(node):
        names = optree.structseq_fields(node)
    return [(str(name), child) for name, child in zip(names, flat.children)]
