"""Modules that customise loading run their own code, learnt before anything is written (API.md §10).

``load_state_dict`` lets a module change what it loads: ``_load_state_dict_pre_hook``\\ s and
``register_load_state_dict_pre_hook``\\ s rename, drop or copy entries of the state dict, an
overridden ``_load_from_state_dict`` migrates old key names or drops ``num_batches_tracked``
(torchvision's and transformers' ``FrozenBatchNorm2d``, FPN, MNASNet, transformers' Mamba / ESM
key hooks). structload learns what that code does by running it once, in the plan, against a
*recording view*: the module's own source entries as a dict of stand-in meta tensors (shape and
dtype, no values), handed to a shadow of the module (its tensors on meta) whose
``nn.Module._load_from_state_dict`` records what it would load instead of copying. The dict the
code leaves behind, mapped back from stand-ins to source leaves, replaces the module's source
subtree; the walk and the rules then judge it like any source, and apply writes it. Code whose
effect a recording cannot carry (it reads values, computes new tensors, raises, changes the
module) is a problem at the module's path saying why. Post-hooks run once, in apply, after the
last write (`run_post_hooks`).

>>> import torch, structload as sl
>>> class OldNames(torch.nn.Linear):
...     def _load_from_state_dict(self, state_dict, prefix, *args):
...         if prefix + "w" in state_dict:  # checkpoints of an older version
...             state_dict[prefix + "weight"] = state_dict.pop(prefix + "w")
...         super()._load_from_state_dict(state_dict, prefix, *args)
>>> model = torch.nn.Sequential(OldNames(2, 2))
>>> sl.load(model, {"0.w": torch.ones(2, 2), "0.bias": torch.zeros(2)}).loaded
['0.weight', '0.bias']
"""

from __future__ import annotations

import contextlib
import copy
import threading
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.overrides import TorchFunctionMode

from .._render.text import Hint
from .._report import Problem, ProblemKind
from ..sources import SourceTensor, SourceTree, iter_leaves
from ..sources.formats.versions import versions_of
from ..sources.nesting import insert
from .dest import EXTRA_STATE, has_extra_state, overrides
from .load_hooks import KNOWN_LOAD_HOOKS, hook_name


def runs_own_code(module: nn.Module) -> bool:
    """Whether ``load_state_dict`` would run code of this module's own that structload must run too:
    an ``_load_from_state_dict`` of its class (BatchNorm's, reproduced by the rules, excepted) or a
    load hook that is not one of `KNOWN_LOAD_HOOKS`."""
    cls = type(module)
    if overrides(cls, "_load_from_state_dict") and _owner(cls) is not _NormBase:
        return True
    hooks = [*module._load_state_dict_pre_hooks.values(), *module._load_state_dict_post_hooks.values()]
    return any(hook_name(hook) not in KNOWN_LOAD_HOOKS for hook in hooks)


def _owner(cls: type) -> type:
    """The class whose ``_load_from_state_dict`` `cls` uses (cached: asked once per module of a load)."""
    owner = _OWNERS.get(cls)
    if owner is None:
        owner = _OWNERS[cls] = next(c for c in cls.__mro__ if "_load_from_state_dict" in vars(c))
    return owner


_OWNERS: dict[type, type] = {}


class Recorded(NamedTuple):
    """What running one module's loading code against the recording view gave."""

    tree: Any  # the source tree with the module's subtree replaced by what its code left
    problem: Problem | None


class CustomLoading(NamedTuple):
    """Every module's recording, in walk order: the source tree they leave, their problems, and the
    modules whose post-hooks apply runs (children before parents, as ``load_state_dict``)."""

    tree: Any
    problems: list[Problem]
    post_hooks: list[tuple[str, nn.Module]]


def record_own_loading(
    tree, modules: list[tuple[str, nn.Module]], metadata: Callable[[], dict] | None
) -> CustomLoading:
    """Run the loading code of `modules` (``(path, module)`` in walk order, outermost first) once each
    against recording views of `tree`; `metadata` gives ``state_dict()._metadata`` of the source,
    when it has one (versions that migrations read)."""
    problems: list[Problem] = []
    versions = (metadata() if metadata is not None else None) or {}
    for path, module in modules:
        if any(path.startswith(f"{p.path}.") or not p.path for p in problems):
            continue  # inside a module already refused: one problem, at the outermost
        recorded = record_module(tree, path, module, dict(versions.get(path, {})))
        tree = recorded.tree
        if recorded.problem is not None:
            problems.append(recorded.problem)
    with_post_hooks = [(p, m) for p, m in modules if _post_hooks(m)]
    return CustomLoading(tree, problems, post_order(with_post_hooks))


def record_module(tree, path: str, module: nn.Module, local_metadata: dict) -> Recorded:
    """One module's loading code against the recording view of its source subtree."""
    parts = path.split(".") if path else []
    subtree = _subtree(tree, parts)
    if type(subtree) is not dict:  # skipped, or a leaf where the module is: the walk says so
        return Recorded(tree, None)
    prefix = f"{path}." if path else ""
    view = _View(subtree, path)
    shadow = _Shadow(module)
    try:
        with _InPlaceWrites() as writes:
            _RECORDING.run(module, shadow.module, view.state, prefix, local_metadata)
    except Exception as error:  # any failure of the module's own code is the problem to report
        raised = f"raised {type(error).__name__}: {error}"
        if "meta" in str(error):
            raised += " (it reads the checkpoint's values, which the recording does not have)"
        return Recorded(tree, _problem(path, module, raised))
    why: str | None = writes.found() or shadow.changes() or _RECORDING.stray
    if why is None:
        left, why = view.result(module, prefix, _RECORDING.received)
        if why is None:  # a module the source has nothing for stays missing, reported at its root
            return Recorded(_replace(tree, parts, left) if left or subtree else tree, None)
    return Recorded(tree, _problem(path, module, why))


def refused_once(refusals: list[Problem], problems: list[Problem]) -> list[Problem]:
    """Each refused module once, at its path (the outermost, when refusals nest), then the plan's
    `problems` outside every refused module. Inside one, a tensor missing or unexpected under
    torch's names is a knock-on of the code structload did not run (a migration of old names, a
    packed layout), not a finding of its own: the refusal says what to do for the whole module. A
    refused root hides nothing: its subtree is the whole model, where the other problems are all
    that can be told apart.

    >>> refusal = Problem(ProblemKind.TYPE, "a", "a Old: its own loading code ...")
    >>> knock_ons = [Problem(ProblemKind.MISSING, "a.weight", "missing"), Problem(ProblemKind.UNEXPECTED, "a.w", "")]
    >>> [p.path for p in refused_once([refusal], [*knock_ons, Problem(ProblemKind.MISSING, "ab.weight", "")])]
    ['a', 'ab.weight']
    """
    refused: list[Problem] = []
    for refusal in refusals:
        if not any(_within(refusal.path, r.path) for r in refused):
            refused.append(refusal)
    paths = [r.path for r in refused if r.path]
    return refused + [p for p in problems if not any(_within(p.path, path) for path in paths)]


def _within(path: str, module_path: str) -> bool:
    return not module_path or path == module_path or path.startswith(f"{module_path}.")


def _problem(path: str, module: nn.Module, why: str) -> Problem:
    hint = leave_it_out(path)
    message = f"a {type(module).__name__}: its own loading code {why}, which structload cannot check before writing. "
    return Problem(ProblemKind.TYPE, path, message + hint, hint)


def leave_it_out(path: str) -> Hint:
    """What to do about a module whose own loading code structload cannot follow."""
    where = f"model.{path}" if path else "the module"
    return Hint(f"Load it with {where}.load_state_dict(...), or leave it out (", "exclude", path or "*", ")")


# --- the recording view ------------------------------------------------------------------------------


class _View:
    """A module's source entries as ``load_state_dict`` hands them over (a flat dict, full dotted
    keys), with stand-in meta tensors for source tensors, and the way back to the source leaves."""

    def __init__(self, subtree: dict, path: str):
        self.state: dict[str, Any] = {}
        self.leaves: dict[int, Any] = {}  # id of a stand-in (or of a leaf given as it is) -> source leaf
        self.keep: list[Any] = []  # the stand-ins, alive while their ids are keys
        for key, leaf in iter_leaves(subtree, path):
            value = _stand_in(leaf)
            self.keep.append(value)
            self.leaves[id(value)] = leaf
            self.state[key] = value

    def result(self, module: nn.Module, prefix: str, received: dict | None) -> tuple[dict, str | None]:
        """The module's new source subtree: its own entries (and unknown names) as torch's
        ``_load_from_state_dict`` received them, its children's as its code left them; or why not."""
        own = [*(name for name, t in module._parameters.items() if t is not None), *_persistent(module)]
        if has_extra_state(module):
            own.append(EXTRA_STATE)
        if received is None and own:
            return {}, "does not pass its state to torch's _load_from_state_dict (no super() call)"
        children = set(module._modules)
        entries = [
            (k, v) for k, v in (received if received is not None else self.state).items() if k.startswith(prefix)
        ]
        entries = [(k, v) for k, v in entries if k[len(prefix) :].split(".", 1)[0] not in children]
        entries += [
            (k, v)
            for k, v in self.state.items()
            if k.startswith(prefix) and k[len(prefix) :].split(".", 1)[0] in children
        ]
        left: dict[str, Any] = {}
        for key, value in entries:
            if id(value) not in self.leaves:
                return (
                    {},
                    f"puts a value the recording did not predict at '{key}' (a value computed from the "
                    "checkpoint's, or a new tensor of its own)",
                )
            insert(left, key[len(prefix) :], self.leaves[id(value)])
        return left, None


def _persistent(module: nn.Module) -> list[str]:
    skip = module._non_persistent_buffers_set
    return [name for name, t in module._buffers.items() if t is not None and name not in skip]


def _stand_in(leaf):
    """A meta tensor of the leaf's shape and dtype (a source tensor), or the leaf itself (``None``,
    absent, extra state: values code may move but has no reason to compute with)."""
    if isinstance(leaf, SourceTensor):
        return torch.empty(tuple(leaf.shape), dtype=leaf.dtype or torch.float32, device="meta")
    return leaf


def _subtree(tree, parts: list[str]):
    node = tree
    for part in parts:
        if type(node) is not dict:
            return node  # missing, skipped or a leaf above: whatever marks it
        node = node.get(part, {})
    return node


def _replace(tree, parts: list[str], subtree: dict):
    """`tree` with the subtree at `parts` replaced, copying the dicts on the way (a source tree, an
    `sl.open` result, may be shared with the caller)."""
    if not parts:
        return subtree
    node = dict(tree) if type(tree) is dict else {}
    child = node.get(parts[0])
    node[parts[0]] = _replace(child if type(child) is dict else {}, parts[1:], subtree)
    if not subtree and not parts[1:]:
        del node[parts[0]]  # nothing left for the module: missing, as if the source never had it
    return node


class _Shadow:
    """A shallow copy of the module whose own tensors are meta stand-ins: what its
    ``_load_from_state_dict`` does to ``self`` lands here, and `changes` tells whether it did."""

    def __init__(self, module: nn.Module):
        self.original = module
        self.module = copy.copy(module)
        state = self.module.__dict__
        state["_parameters"] = {n: _meta_like(t) for n, t in module._parameters.items()}
        state["_buffers"] = {n: _meta_like(t) for n, t in module._buffers.items()}
        state["_modules"] = dict(module._modules)
        self.tensors = {**state["_parameters"], **state["_buffers"]}
        self.versions = {n: t._version for n, t in self.tensors.items() if t is not None}
        self.modules = dict(module._modules)
        self.attributes = dict(state)

    def changes(self) -> str | None:
        state = self.module.__dict__
        now = {**state["_parameters"], **state["_buffers"]}
        changed = [n for n in now if now[n] is not self.tensors.get(n)]
        changed += [n for n, v in self.versions.items() if self.tensors[n]._version != v]
        changed += [n for n in state["_modules"] if state["_modules"][n] is not self.modules.get(n)]
        skip = ("_parameters", "_buffers", "_modules")
        changed += [n for n in state if n not in skip and state[n] is not self.attributes.get(n, _NONE)]
        if changed:
            return f"changes the module itself while loading ({', '.join(sorted(set(changed)))})"
        return None


_NONE = object()


def _meta_like(tensor):
    if tensor is None:
        return None
    meta = torch.empty(tuple(tensor.shape), dtype=tensor.dtype, device="meta")
    return nn.Parameter(meta, requires_grad=tensor.requires_grad) if isinstance(tensor, nn.Parameter) else meta


class _InPlaceWrites(TorchFunctionMode):
    """Notes every operation that writes into a tensor (``mul_``, ``copy_``, ``out=``) while a
    module's code runs against its view: a write into a stand-in or into the module changes values
    the recording cannot follow (and ``.data`` shares no version counter to tell by)."""

    def __init__(self):
        super().__init__()
        self.names: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if "out" in kwargs or (name.endswith("_") and not name.startswith("__")) or name == "__setitem__":
            self.names.append(name or "out=")
        return func(*args, **kwargs)

    def found(self) -> str | None:
        if not self.names:
            return None
        return f"writes into tensors in place ({', '.join(dict.fromkeys(self.names))})"


# --- torch's _load_from_state_dict, recording ------------------------------------------------------


class _Recording(threading.local):
    """While a module's code runs against its view, ``nn.Module._load_from_state_dict`` (what
    ``super()._load_from_state_dict`` reaches) runs its pre-hooks and records what it received,
    in this thread; other threads and every other time, torch's own runs."""

    shadow: nn.Module | None = None
    received: dict | None = None
    stray: str | None = None

    def run(self, module: nn.Module, shadow: nn.Module, state: dict, prefix: str, local_metadata: dict) -> None:
        self.shadow, self.received, self.stray = shadow, None, None
        errors: list[str] = []
        with _torch_load_recording():
            try:
                type(module)._load_from_state_dict(shadow, state, prefix, local_metadata, True, [], [], errors)
            finally:
                self.shadow = None
        if errors:
            self.stray = f"reported {'; '.join(map(str, errors))}"


_TORCH_LOAD = nn.Module._load_from_state_dict
_RECORDING = _Recording()
_RECORDERS = [0]  # how many threads are recording now
_RECORDERS_LOCK = threading.Lock()


@contextlib.contextmanager
def _torch_load_recording():
    """``nn.Module._load_from_state_dict`` is `_recording_load` while any thread records (it hands
    over to torch's own everywhere else), and torch's own again once none does."""
    with _RECORDERS_LOCK:
        _RECORDERS[0] += 1
        nn.Module._load_from_state_dict = _recording_load  # type: ignore[method-assign]
    try:
        yield
    finally:
        with _RECORDERS_LOCK:
            _RECORDERS[0] -= 1
            if not _RECORDERS[0]:
                nn.Module._load_from_state_dict = _TORCH_LOAD  # type: ignore[method-assign]


def _recording_load(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
    if _RECORDING.shadow is None:  # another thread, or after the recording: torch's own
        return _TORCH_LOAD(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
    if self is not _RECORDING.shadow:
        raise RuntimeError("it loads another module's state through that module's _load_from_state_dict")
    for hook in self._load_state_dict_pre_hooks.values():
        if hook_name(hook) not in KNOWN_LOAD_HOOKS:
            hook(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
    if _RECORDING.received is not None:
        raise RuntimeError("it calls torch's _load_from_state_dict twice")
    _RECORDING.received = dict(state_dict)


# --- post-hooks --------------------------------------------------------------------------------------


def _post_hooks(module: nn.Module) -> list:
    return [h for h in module._load_state_dict_post_hooks.values() if hook_name(h) not in KNOWN_LOAD_HOOKS]


def post_order(modules: list[tuple[str, nn.Module]]) -> list[tuple[str, nn.Module]]:
    """Modules listed in walk order (parents first), reordered children first, as ``load_state_dict``
    runs post-hooks.

    >>> [p for p, _ in post_order([("", 0), ("a", 1), ("a.b", 2), ("c", 3)])]
    ['a.b', 'a', 'c', '']
    """
    out: list[tuple[str, nn.Module]] = []
    stack: list[tuple[str, nn.Module]] = []
    for item in modules:
        while stack and not (stack[-1][0] == "" or item[0].startswith(f"{stack[-1][0]}.")):
            out.append(stack.pop())
        stack.append(item)
    out.extend(reversed(stack))
    return out


def run_post_hooks(post_hooks: list[tuple[str, nn.Module]], missing: list[str], unexpected: list[str]) -> None:
    """Each module's post-hooks, once, after every write, with ``load_state_dict``'s
    ``(missing_keys, unexpected_keys)``."""
    from torch.nn.modules.module import _IncompatibleKeys

    keys = _IncompatibleKeys(list(missing), list(unexpected))
    for _path, module in post_hooks:
        for hook in _post_hooks(module):
            hook(module, keys)


def source_metadata(src, source=None) -> dict | None:
    """``state_dict()._metadata`` for a source that has it: a state dict that kept it, a module
    (its modules' ``_version``, as ``state_dict()`` writes them), or `source` (the `SourceTree`
    opened) when it is a ``torch.save`` file, whose state dicts carried theirs (`sources.versions`).
    Safetensors files give none, as ``load_state_dict`` of one gets none."""
    if isinstance(src, nn.Module):
        return {name: {"version": m._version} for name, m in src.named_modules()}
    metadata = getattr(src, "_metadata", None)
    if isinstance(metadata, dict):
        return metadata
    if not isinstance(source, SourceTree):
        return None
    return versions_of(source) or None
