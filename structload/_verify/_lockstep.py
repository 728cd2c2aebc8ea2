"""Running the model and the reference side by side, so that only the outputs compared now are kept.

The model runs in the calling thread, the reference in a helper thread, and only one of them runs
at a time. Forward hooks on every module of both record what ran. When a module of the model that
has a counterpart finishes, its hook asks the reference to run on until that counterpart has
finished, then compares the two at once and lets both go. Run in the same order, the reference
therefore holds at most one module's outputs beyond its own forward pass; a counterpart that ran
earlier than asked for (another execution order) waits in a buffer, copied, since the reference
may later change its tensors in place.

Storing every activation of the reference instead would cost the memory of all of them at once
(a GPT-2-small forward keeps about 150 module outputs); running the reference again for each
module would cost a forward pass each.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import torch

from ._compare import tensor_leaves

Key = tuple[str, int]  # (module path, how many times it ran before)


class Ran:
    """What one module computed in one call: its input tensors and its output."""

    __slots__ = ("inputs", "output")

    def __init__(self, inputs: list[torch.Tensor], output: Any):
        self.inputs, self.output = inputs, output


class _Aborted(Exception):
    """Raised in the reference's thread to end its forward pass when the model's failed."""


class Lockstep:
    """One verification run: `run` calls both models; `on_pair(model_key, reference_key, model_ran,
    reference_ran)` sees every paired call; `ran_alone` lists (side, path) of modules that ran on
    one side only."""

    def __init__(self, pairs: dict[str, str], on_pair: Callable[[Key, Key, Ran, Ran], None]):
        self.pairs = pairs  # model path -> reference path
        self.paired_reference = set(pairs.values())
        self.model_of = {reference: model for model, reference in pairs.items()}
        self.on_pair = on_pair
        self.ran_alone: list[tuple[str, str]] = []
        self._buffer: dict[Key, Ran] = {}
        # what the hooks hold, for the memory test and bench/verify.py: the most reference calls and
        # bytes (inputs and outputs) held at once, and the bytes of every paired output together
        self.peak_buffered = self.peak_bytes = self.all_output_bytes = 0
        self._calls: dict[tuple[str, str], int] = {}
        self._wanted: Key | None = None
        self._turn = "model"
        self._draining = self._aborted = self._done = False
        self._error: BaseException | None = None
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def run(self, model: torch.nn.Module, reference: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        handles = _hook_all(model, self._model_hook) + _hook_all(reference, self._reference_hook)
        self._thread = threading.Thread(target=self._reference_main, args=(reference, args, kwargs), daemon=True)
        try:
            self._thread.start()
            with torch.no_grad():
                model(*args, **kwargs)
            self._drain()
        except BaseException:
            self._abort()
            raise
        finally:
            for handle in handles:
                handle.remove()
        if self._error is not None:
            raise self._error
        for key in self._buffer:  # ran on the reference's side, its counterpart never did
            self.ran_alone.append(("reference", key[0]))
        self._buffer.clear()

    # --- the model's side (calling thread) ---------------------------------------------------

    def _model_hook(self, module, path: str, args, kwargs, output) -> None:
        if threading.current_thread() is self._thread:
            return  # a module shared by both models, running in the reference
        key = (path, self._count("model", path))
        try:
            self._compare_with_counterpart(key, args, kwargs, output)
        finally:
            self._forget_inside(path)

    def _compare_with_counterpart(self, key: Key, args, kwargs, output) -> None:
        path = key[0]
        counterpart = self.pairs.get(path)
        if counterpart is None:
            self.ran_alone.append(("model", path))
            return
        reference_key = (counterpart, key[1])
        found = self._reference_ran(reference_key)
        if found is None:
            self.ran_alone.append(("model", path))
            return
        self.on_pair(key, reference_key, Ran(_input_tensors(args, kwargs), output), found)

    def _forget_inside(self, path: str) -> None:
        """`path` has finished: reference outputs still waiting for a module inside it wait in vain
        (a container such as an ``nn.Sequential`` whose forward is never called, only its layers)."""
        with self._cond:
            for key in [k for k in self._buffer if _inside(self.model_of[k[0]], path)]:
                del self._buffer[key]
                self.ran_alone.append(("reference", key[0]))

    def _reference_ran(self, key: Key) -> Ran | None:
        """Let the reference run until `key` has run (or it has finished); what it computed."""
        with self._cond:
            if key not in self._buffer and not self._done:
                self._wanted, self._turn = key, "reference"
                self._cond.notify_all()
                self._cond.wait_for(lambda: self._turn == "model")
            if self._error is not None:
                raise self._error
            return self._buffer.pop(key, None)

    def _drain(self) -> None:
        """The model has finished: let the reference finish, keeping nothing more."""
        with self._cond:
            self._draining, self._wanted, self._turn = True, None, "reference"
            self._cond.notify_all()
            self._cond.wait_for(lambda: self._done)

    def _abort(self) -> None:
        with self._cond:
            self._aborted, self._turn = True, "reference"
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()

    # --- the reference's side (helper thread) ------------------------------------------------

    def _reference_main(self, reference, args, kwargs) -> None:
        try:
            with self._cond:
                self._cond.wait_for(lambda: self._turn == "reference")
            if not self._aborted:
                with torch.no_grad():  # grad mode is per thread
                    reference(*args, **kwargs)
        except _Aborted:
            pass
        except BaseException as error:
            self._error = error
        with self._cond:
            self._done, self._turn = True, "model"
            self._cond.notify_all()

    def _reference_hook(self, module, path: str, args, kwargs, output) -> None:
        if threading.current_thread() is not self._thread:
            return
        key = (path, self._count("reference", path))
        if self._aborted:
            raise _Aborted
        # what the model asked for is inside this module, which has finished: it did not run
        passed = self._wanted is not None and _inside(self._wanted[0], path)
        if path not in self.paired_reference or self._draining:
            self.ran_alone.append(("reference", path))
            if passed:
                self._hand_back()
            return
        inputs = _input_tensors(args, kwargs)
        if key == self._wanted:  # the model finished its counterpart: nothing inside that will come
            self._forget_inside(self.model_of[path])
        else:  # kept until asked for, while the reference goes on: a copy
            inputs, output = [t.detach().clone() for t in inputs], _copied(output)
        with self._cond:
            self._buffer[key] = Ran(inputs, output)
            self._measure(key)
        if key == self._wanted or passed:
            self._hand_back()

    def _hand_back(self) -> None:
        """Pause the reference and let the model go on."""
        with self._cond:
            self._wanted, self._turn = None, "model"
            self._cond.notify_all()
            self._cond.wait_for(lambda: self._turn == "reference")
        if self._aborted:
            raise _Aborted

    def _measure(self, key: Key) -> None:
        self.all_output_bytes += _bytes(self._buffer[key].output)
        held = sum(_bytes(ran.output) + _bytes(ran.inputs) for ran in self._buffer.values())
        self.peak_buffered = max(self.peak_buffered, len(self._buffer))
        self.peak_bytes = max(self.peak_bytes, held)

    def _count(self, side: str, path: str) -> int:
        n = self._calls.get((side, path), 0)
        self._calls[(side, path)] = n + 1
        return n


def _hook_all(root: torch.nn.Module, hook) -> list:
    handles = []
    for path, module in root.named_modules():
        bound = _bind(hook, path)
        handles.append(module.register_forward_hook(bound, with_kwargs=True))
    return handles


def _bind(hook, path: str):
    def bound(module, args, kwargs, output):
        hook(module, path, args, kwargs, output)

    return bound


def _input_tensors(args: tuple, kwargs: dict) -> list[torch.Tensor]:
    """The tensors among a module's positional and keyword arguments, in order."""
    return [t for _, t in tensor_leaves(list(args) + list(kwargs.values()))]


def _inside(path: str, ancestor: str) -> bool:
    """Whether `path` is a module strictly inside `ancestor`."""
    return path != ancestor and (not ancestor or path.startswith(ancestor + "."))


def _bytes(value) -> int:
    return sum(t.numel() * t.element_size() for _, t in tensor_leaves(value))


def _copied(value):
    """`value` with every tensor leaf copied (containers rebuilt as plain lists and dicts)."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    leaves = tensor_leaves(value)
    return {key: tensor.detach().clone() for key, tensor in leaves}
