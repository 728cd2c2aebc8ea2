"""The inventory in `structload._runtime` is complete: no process-wide state exists beside it."""

from __future__ import annotations

import concurrent.futures
import contextvars
import enum
import importlib
import inspect
import pkgutil
import threading
import weakref
from typing import ClassVar

import structload
from structload._runtime import PROCESS_WIDE_STATE, ReaderPool

STATEFUL = (
    dict,
    list,
    set,
    weakref.WeakSet,
    weakref.WeakKeyDictionary,
    weakref.WeakValueDictionary,
    contextvars.ContextVar,
    type(threading.Lock()),
    type(threading.RLock()),
    threading.local,
    threading.Condition,
    threading.Event,
    concurrent.futures.Executor,
    ReaderPool,
)


def _stateful(name: str, value) -> bool:
    """Mutable shared state: a container, lock, registry, pool or context variable. Containers
    named in capitals are constant tables by convention (``RULES``, ``VOCABULARY``)."""
    if not isinstance(value, STATEFUL):
        return False
    return not (name.isupper() and isinstance(value, (dict, list, set)))


def process_wide_state() -> dict[int, str]:
    """Every stateful object the package holds at module or class level, by identity (a name
    imported into another module is the same object), with the first name it was found under."""
    found: dict[int, str] = {}
    for info in pkgutil.walk_packages(structload.__path__, "structload."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if not name.startswith("__") and _stateful(name, value):
                found.setdefault(id(value), f"{info.name}.{name}")
            if inspect.isclass(value) and value.__module__ == info.name and not issubclass(value, enum.Enum):
                for attribute, held in vars(value).items():
                    if attribute == "_field_defaults" or attribute.startswith("__"):  # Python's own
                        continue
                    if _stateful(attribute, held):
                        found.setdefault(id(held), f"{info.name}.{name}.{attribute}")
    return found


def resolve(dotted: str):
    """The object a dotted name of the inventory names."""
    parts = dotted.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            value = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attribute in parts[cut:]:
            value = getattr(value, attribute)
        return value
    raise LookupError(dotted)


def test_every_piece_of_process_wide_state_is_in_the_inventory():
    listed = {id(resolve(name)): name for name in PROCESS_WIDE_STATE}
    found = process_wide_state()
    assert sorted(found[key] for key in set(found) - set(listed)) == []
    assert sorted(listed[key] for key in set(listed) - set(found)) == []


def test_the_scan_finds_a_registry_on_a_class(monkeypatch):
    from structload import _state

    class Registry:
        opened: ClassVar[weakref.WeakSet] = weakref.WeakSet()

    Registry.__module__ = _state.__name__
    monkeypatch.setattr(_state, "Registry", Registry, raising=False)
    assert "structload._state.Registry.opened" in process_wide_state().values()
