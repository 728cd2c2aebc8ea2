"""In-memory sources: tensors, arrays, numbers, mappings, lists and any optree pytree."""

from __future__ import annotations

import warnings
from collections import OrderedDict
from typing import Any

import numpy as np
import torch
from torch.nn.parameter import UninitializedTensorMixin  # type: ignore[attr-defined]

from .._plan.dest import EXTRA_STATE
from .._pytree import children
from ._leaves import ABSENT, SKIP, BadLeaf, ExtraState, MemoryTensor, SourceTensor, Value
from .formats.pickled import Pickled, is_module, module_state, numpy_value, pickled_type_name
from .nesting import insert


def leaf_from_value(value):
    """The source leaf for a non-container value, or ``None`` if `value` is a container.

    >>> leaf_from_value(None), leaf_from_value(False)
    (SKIP, ABSENT)
    >>> leaf_from_value(2.5)
    MemoryTensor(shape=(), dtype=None)
    """
    if value is None:
        return SKIP
    if value is False:
        return ABSENT
    if isinstance(value, SourceTensor):
        return value
    if isinstance(value, torch.Tensor):
        return tensor_leaf(value)
    if isinstance(value, (np.ndarray, np.generic)):
        return _array_leaf(value)
    if value is True:
        return BadLeaf("True is not a tensor (False marks an absent parameter)")
    if isinstance(value, (int, float)):
        # a Python float is a double: kept as float64 so a float64 destination gets it exactly
        number = torch.tensor(value, dtype=torch.float64) if isinstance(value, float) else torch.tensor(value)
        return MemoryTensor(number, number=value)
    return None


def tensor_leaf(tensor: torch.Tensor):
    """A `MemoryTensor`, or a `BadLeaf` for a tensor that holds no data.

    No ``detach()``: every read happens under ``torch.no_grad()``, and a
    detached alias per tensor is measurable on models with many tensors.
    """
    if isinstance(tensor, UninitializedTensorMixin):
        return BadLeaf("an uninitialized parameter of a lazy module: run a forward pass to initialize it first")
    if tensor.is_meta:
        return BadLeaf("the source tensor is on the meta device and holds no data")
    if tensor.is_quantized:
        return BadLeaf(f"a quantized tensor ({tensor.dtype}); dequantize it first (tensor.dequantize())")
    return MemoryTensor(tensor)


def _array_leaf(array):
    array = np.asarray(array)
    if array.dtype.hasobject or array.dtype.kind in "USV":
        return BadLeaf(f"a numpy array of dtype {array.dtype} is not numeric")
    if any(s < 0 for s in array.strides):
        array = np.ascontiguousarray(array)
    try:
        with warnings.catch_warnings():  # read-only arrays: structload never writes into a source
            warnings.simplefilter("ignore", UserWarning)
            return MemoryTensor(torch.from_numpy(array))
    except TypeError as error:
        return BadLeaf(f"a numpy array of dtype {array.dtype} cannot become a tensor ({error})")


def tree_from_object(obj):
    """The nested source tree of an in-memory object.

    Keys with dots are split, so flat and nested mappings give the same tree;
    an ``_extra_state`` entry is kept whole for ``set_extra_state``.

    >>> import torch
    >>> tree = tree_from_object({"fc.weight": torch.ones(2), "fc": {"bias": None}, "head": [False]})
    >>> tree
    {'fc': {'weight': MemoryTensor(shape=(2,), dtype=torch.float32), 'bias': SKIP}, 'head': {'0': ABSENT}}
    """
    if type(obj) is torch.Tensor or type(obj) is torch.nn.Parameter:  # the common case, first
        return tensor_leaf(obj)
    if isinstance(obj, torch.nn.Module):
        from .module import tree_from_module  # module sources build on this module

        return tree_from_module(obj)
    if isinstance(obj, Pickled):
        return _tree_from_pickled(obj)
    leaf = leaf_from_value(obj)
    if leaf is not None:
        return leaf
    mapping = type(obj) is dict or type(obj) is OrderedDict
    items = list(obj.items()) if mapping else children(obj)
    if (
        items is not None
        and not (mapping and set(map(type, obj)) <= {str})
        and any(type(k) is not str for k, _ in items)
    ):
        items = [(str(k), v) for k, v in items]
    if items is None:
        return Value(obj, f"a value of type {type(obj).__name__} is not a tensor or a tree of tensors")
    return _tree_from_items(items)


def _tree_from_items(items) -> dict:
    """The tree of named children. A name whose parent is known (``fc.bias`` after ``fc.weight``,
    ``blocks.1.fc.weight`` after ``blocks.1.norm.weight``) goes straight into it, and a new parent
    is made inside the nearest known one; `insert` runs only for what needs its rules: a subtree
    value, a name given twice, a leaf where a parent would go."""
    tree: dict = {}
    parents: dict[str, dict] = {}  # dotted path -> the subtree there, made by this call
    value: Any
    for name, child in items:
        if (type(child) is torch.Tensor or type(child) is torch.nn.Parameter) and not (
            child.is_meta or child.is_quantized
        ):
            value = MemoryTensor(child)  # the common case of `tensor_leaf`, without the call
        elif name.endswith(EXTRA_STATE) and name.rsplit(".", 1)[-1] == EXTRA_STATE:
            value = ExtraState(child)
        else:
            value = tree_from_object(child)
        if type(value) is not dict:
            head, dot, last = name.rpartition(".")
            parent = parents.get(head) if dot else tree
            if parent is None and head:
                parent = _new_parent(parents, tree, head)
            if parent is not None and last not in parent:
                parent[last] = value
                continue
        insert(tree, name, value)  # a subtree, a name given twice, a leaf where a parent would go
        parents.clear()  # which may have moved subtrees aside: find parents anew
    return tree


def _new_parent(parents: dict[str, dict], tree: dict, head: str) -> dict | None:
    """The subtree at the dotted path `head`, made as `insert` would make it (inside the nearest
    known parent), or ``None`` when a name on the way is taken (`insert` then decides)."""
    above, dot, name = head.rpartition(".")
    node = tree if not dot else parents.get(above)
    if node is None and above:
        node = _new_parent(parents, tree, above)
    if node is None or name in node:
        return None
    child = node[name] = {}
    parents[head] = child
    return child


def _tree_from_pickled(obj: Pickled):
    """What a placeholder of a torch file's pickle loads as: a pickled module's state tree, a numpy
    value, a pickled mapping's items; any other object is a read-only `Value`."""
    if is_module(obj):
        return {name: ABSENT if child is None else tree_from_object(child) for name, child in module_state(obj)}
    array = numpy_value(obj)
    if array is not None:
        return leaf_from_value(array.item() if array.ndim == 0 and array.dtype.kind != "c" else array)
    if obj.items and obj._state is None:
        return _tree_from_items((str(k), v) for k, v in obj.items.items())
    return Value(
        obj, f"what the pickle makes with {pickled_type_name(obj)}, which was not imported or run; not a tensor"
    )
