"""Objects of a pickle that structload does not know: inert placeholders, and what they hold.

A ``torch.save`` file can pickle any object: an ``argparse.Namespace`` of
hyper-parameters, numpy scalars, a whole ``nn.Module`` of a training repo.
structload never imports or calls what a pickle names outside its
allow-list. Each such global becomes a *placeholder type* (a `PickledType`
named after it), and everything the pickle does with it is only recorded:

- calling it (``REDUCE``, ``INST``, ``OBJ``, ``NEWOBJ``) records the
  arguments on a new `Pickled` object; no ``__init__`` or ``__new__`` of the
  real class exists here to run;
- ``BUILD`` records the state instead of setting attributes;
- ``APPENDS`` / ``SETITEMS`` record list items and mapping items;
- calling a `Pickled` object records another one.

Afterwards `tree_of` reads the recorded parts as data: a pickled module
becomes its state tree (parameters, persistent buffers, submodules, in
registration order), a numpy scalar or array becomes its value, and any other
placeholder stays a read-only `Pickled` value that ``sl.open`` shows.

    >>> Namespace = placeholder_type("argparse", "Namespace")
    >>> hparams = Namespace()
    >>> hparams.__setstate__({"lr": 0.1, "layers": 4})
    >>> hparams, hparams.lr, hparams["layers"]
    (argparse.Namespace(lr=0.1, layers=4), 0.1, 4)
"""

from __future__ import annotations

import math
import reprlib
import types
from collections.abc import Mapping

import numpy as np

#: How many distinct unknown globals one pickle may name (each is a new placeholder type).
MAX_PLACEHOLDER_TYPES = 10_000


class PickledType(type):
    """The type of placeholders: calling one only records its arguments; it cannot be changed."""

    type_name: str

    def __call__(cls, *args, **kwargs):
        return cls.__new__(cls, *args, **kwargs)  # type: ignore[arg-type]  # Pickled.__new__, which only records

    def __setattr__(cls, name, value):
        raise AttributeError(f"the placeholder for {cls.type_name} is read-only")

    def __repr__(cls) -> str:
        return f"<placeholder for {cls.type_name}>"


class Pickled(metaclass=PickledType):
    """An object of a type that structload did not import: what the pickle recorded for it, read-only.

    `type_name` is the qualified name the pickle gave (``"argparse.Namespace"``);
    `args` and `kwargs` what it was constructed with; `state` what ``BUILD``
    gave it (usually its ``__dict__``), `items` / `elements` what was added
    as to a mapping / a list. Fields of a dict state read as attributes and
    items: ``hparams.lr``, ``hparams["lr"]``.
    """

    __slots__ = ("_args", "_elements", "_items", "_kwargs", "_state")
    type_name = "object"

    def __new__(cls, *args, **kwargs):
        self = object.__new__(cls)
        for name, value in (("_args", args), ("_kwargs", kwargs), ("_state", None), ("_items", {}), ("_elements", [])):
            object.__setattr__(self, name, value)
        return self

    # What the unpickler's opcodes call: they only record.

    def __setstate__(self, state) -> None:
        object.__setattr__(self, "_state", state)

    def __setitem__(self, key, value) -> None:
        self._items[key] = value

    def append(self, value) -> None:
        self._elements.append(value)

    def extend(self, values) -> None:
        self._elements.extend(values)

    def __call__(self, *args, **kwargs) -> Pickled:
        return placeholder_type("", f"{self.type_name}(...)")(*args, **kwargs)

    # Read-only access for users.

    def __setattr__(self, name, value):
        raise AttributeError(f"a pickled {self.type_name} is read-only")

    def __delattr__(self, name):
        raise AttributeError(f"a pickled {self.type_name} is read-only")

    @property
    def args(self) -> tuple:
        return self._args

    @property
    def kwargs(self) -> Mapping:
        return types.MappingProxyType(self._kwargs)

    @property
    def state(self):
        return types.MappingProxyType(self._state) if isinstance(self._state, dict) else self._state

    @property
    def items(self) -> Mapping:
        return types.MappingProxyType(self._items)

    @property
    def elements(self) -> tuple:
        return tuple(self._elements)

    def fields(self) -> Mapping:
        """The named parts: a dict state's fields, then recorded mapping items."""
        named = dict(self._state) if isinstance(self._state, dict) else {}
        named.update((str(k), v) for k, v in self._items.items())
        return types.MappingProxyType(named)

    def __getattr__(self, name: str):
        if not name.startswith("_") and isinstance(self._state, dict) and name in self._state:
            return self._state[name]
        raise AttributeError(f"a pickled {self.type_name} has no field '{name}'")

    def __getitem__(self, key):
        if key in self._items:
            return self._items[key]
        if isinstance(key, int) and self._elements:
            return self._elements[key]
        if isinstance(self._state, dict) and key in self._state:
            return self._state[key]
        raise KeyError(f"a pickled {self.type_name} has no item {key!r}")

    def __repr__(self) -> str:
        short = _SHORT
        parts = [short.repr(a) for a in self._args]
        parts += [f"{k}={short.repr(v)}" for k, v in self._kwargs.items()]
        if isinstance(self._state, dict) and all(isinstance(k, str) for k in self._state):
            parts += [f"{k}={short.repr(v)}" for k, v in list(self._state.items())[:8]]
            parts += ["..."] * (len(self._state) > 8)
        elif self._state is not None:
            parts.append(f"state={short.repr(self._state)}")
        return f"{self.type_name}({', '.join(parts)})"


_SHORT = reprlib.Repr()  # keyword arguments need Python 3.12
_SHORT.maxlevel, _SHORT.maxdict, _SHORT.maxlist, _SHORT.maxtuple, _SHORT.maxstring, _SHORT.maxother = 2, 8, 8, 8, 40, 60


def placeholder_type(module: str, name: str) -> PickledType:
    """A new placeholder type standing for the global ``module.name`` (nothing is imported)."""
    qualified = f"{module}.{name}" if module else name
    return PickledType(name.rsplit(".", 1)[-1] or "object", (Pickled,), {"__slots__": (), "type_name": qualified})


def pickled_type_name(obj: Pickled) -> str:
    """The type a placeholder stands for, seeing through protocol-0/1 ``copyreg._reconstructor(cls, ...)``."""
    if obj.type_name == "copyreg._reconstructor" and obj.args and isinstance(obj.args[0], PickledType):
        return obj.args[0].type_name
    return obj.type_name


def is_module(obj) -> bool:
    """Whether a placeholder is a pickled ``nn.Module``: its state has the three registries."""
    state = obj._state if isinstance(obj, Pickled) else None
    return isinstance(state, dict) and all(isinstance(state.get(k), Mapping) for k in _MODULE_REGISTRIES)


_MODULE_REGISTRIES = ("_parameters", "_buffers", "_modules")


def module_state(obj: Pickled) -> list[tuple[str, object]]:
    """A pickled module's state, as ``state_dict()`` would list it, without its code: parameters
    (``None`` for one registered as ``None``), persistent buffers, then submodules, in registration order."""
    state = obj._state
    assert isinstance(state, dict)
    transient = state.get("_non_persistent_buffers_set") or ()
    transient = set(transient) if isinstance(transient, (set, frozenset, list, tuple)) else set()
    named: list[tuple[str, object]] = [(str(k), v) for k, v in state["_parameters"].items()]
    named += [(str(k), v) for k, v in state["_buffers"].items() if v is not None and k not in transient]
    named += [(str(k), v) for k, v in state["_modules"].items() if v is not None]
    return named


def types_in(obj, path: str = "", found: dict[str, str] | None = None) -> dict[str, str]:
    """Dotted path -> type name of every placeholder reachable through containers and modules.

    >>> Net = placeholder_type("models", "Net")
    >>> net = Net()
    >>> net.__setstate__({"_parameters": {}, "_buffers": {}, "_modules": {}})
    >>> types_in({"model": net, "epoch": 3})
    {'model': 'models.Net'}
    """
    found = {} if found is None else found
    if isinstance(obj, Pickled):
        if numpy_value(obj) is not None:  # read as its value: not a placeholder in the tree
            return found
        found[path] = pickled_type_name(obj)
        children = module_state(obj) if is_module(obj) else []
    elif isinstance(obj, Mapping):
        children = [(str(k), v) for k, v in obj.items()]
    elif isinstance(obj, (list, tuple)):
        children = [(str(i), v) for i, v in enumerate(obj)]
    else:
        return found
    for name, child in children:
        types_in(child, f"{path}.{name}" if path else name, found)
    return found


#: numpy dtype codes a pickled ``numpy.dtype`` may name; anything else stays a placeholder.
_NUMPY_CODES = frozenset({"b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8", "c8", "c16"})
_NUMPY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray")


def numpy_value(obj: Pickled):
    """The numpy scalar or array a placeholder records, built from its bytes (``np.frombuffer``
    on a checked dtype code; numpy's own unpickling code is not called), or ``None``.

    >>> dtype = placeholder_type("numpy", "dtype")("f8", False, True)
    >>> dtype.__setstate__((3, "<", None, None, None, -1, -1, 0))
    >>> numpy_value(placeholder_type("numpy._core.multiarray", "scalar")(dtype, bytes(8)))
    np.float64(0.0)
    """
    name = obj.type_name
    if name in (f"{m}.scalar" for m in _NUMPY_MODULES) and len(obj.args) == 2:
        dtype, data = _numpy_dtype(obj.args[0]), obj.args[1]
        if dtype is None or not isinstance(data, bytes) or len(data) != dtype.itemsize:
            return None
        return np.frombuffer(data, dtype)[0]
    if name in (f"{m}._reconstruct" for m in _NUMPY_MODULES) and isinstance(obj._state, tuple):
        if len(obj._state) != 5:
            return None
        _, shape, dtype_obj, fortran, data = obj._state
        dtype = _numpy_dtype(dtype_obj)
        if dtype is None or not isinstance(data, bytes) or not isinstance(shape, tuple):
            return None
        if not all(isinstance(n, int) and n >= 0 for n in shape) or math.prod(shape) * dtype.itemsize != len(data):
            return None
        return np.frombuffer(data, dtype).reshape(shape, order="F" if fortran else "C")
    return None


def _numpy_dtype(obj) -> np.dtype | None:
    if not isinstance(obj, Pickled) or obj.type_name != "numpy.dtype" or not obj.args:
        return None
    code, state = obj.args[0], obj._state
    if code not in _NUMPY_CODES:
        return None
    order = state[1] if isinstance(state, tuple) and len(state) > 1 else "|"
    if order not in ("<", ">", "|", "="):
        return None
    return np.dtype(code).newbyteorder(order if order != "|" else "=")
