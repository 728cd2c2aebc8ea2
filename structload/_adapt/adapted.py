"""What an adapter works on and what it makes: `Target` (one destination tensor whose source has
another shape), `AdaptedTensor` (the lazy source leaf of the destination's shape) and `OwnInit`
(the destination's own values, initialized by ``reset_parameters()`` for a module on meta).

`structload.adapt` holds the adapters and re-exports these names.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..sources import SourceTensor
from ..sources._leaves import ComputedTensor


class CannotAdapt(Exception):
    """An adapter cannot make this destination tensor from this source tensor; the message says why."""


@dataclass(frozen=True)
class Target:
    """One destination tensor whose source has another shape: what an adapter is asked about.

    `tensor` is the destination's (perhaps on ``meta``), `source` the lazy source leaf,
    `owner` / `name` the module and attribute holding the tensor (``None`` in a pytree),
    `stem` whether it is the weight of the model's first convolution or linear layer.
    """

    path: str
    tensor: torch.Tensor
    source: SourceTensor
    owner: torch.nn.Module | None = None
    name: str | None = None
    stem: bool = False
    #: One initialized copy per module on meta, shared by the tensors of one load (`OwnInit`).
    scratches: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

    @property
    def own_name(self) -> str:
        """What the tensor is called: its last name, or its module's for a ``weight``
        (``position_embeddings.weight`` of an ``nn.Embedding``)."""
        parts = self.path.split(".")
        return parts[-2] if parts[-1] == "weight" and len(parts) > 1 else parts[-1]

    @property
    def words(self) -> set[str]:
        """The words of the path (``patch_embed.proj.weight`` -> patch, embed, proj, weight, ...)."""
        parts = self.path.split(".")
        return set(parts) | {w for p in parts for w in re.split(r"_", p)}


class AdaptedTensor(ComputedTensor):
    """A source tensor an adapter made into the destination's shape, read when applied.

    `own` (for `Resize(init="keep")` and `Reinit`) gives the destination's own values, which
    the adapter's `fill` then partly overwrites.
    """

    __slots__ = ("adapter", "base", "fill", "own", "src_shape")

    def __init__(self, target: Target, adapter: Any, compute: Callable | None, dtype=None, own=None, fill=None):
        dtype = dtype if dtype is not None else (target.source.dtype or target.tensor.dtype)
        super().__init__(tuple(target.tensor.shape), dtype, compute or self._with_own)
        self.adapter, self.base, self.src_shape = adapter, target.source, tuple(target.source.shape)
        self.own, self.fill = own, fill
        if own is not None:
            self.writer = self._write_over_own

    def _with_own(self) -> torch.Tensor:
        values = self.own.values().clone()
        self.fill(values)
        return values

    def _write_over_own(self, target: torch.Tensor) -> None:
        if self.own.scratch is not None or target is not self.own.tensor:
            target.copy_(self.own.values())  # materialized from meta: the module's own initialization
        self.fill(target)

    def same_data(self, other: SourceTensor) -> bool:
        """Tied paths adapted alike from one source tensor give the same values (R4, unread)."""
        return self is other or (
            isinstance(other, AdaptedTensor)
            and other.adapter == self.adapter
            and other.shape == self.shape
            and self.base.same_data(other.base)
        )


class OwnInit:
    """The destination's own values of a tensor: the tensor itself, or for one on ``meta``, what
    its module's ``reset_parameters()`` gives on a copy (never uninitialized memory)."""

    def __init__(self, target: Target):
        self.tensor, self.name = target.tensor, target.name or ""
        self.scratch: Scratch | None = None
        if target.tensor.is_meta:
            owner = target.owner
            if owner is None or not callable(getattr(owner, "reset_parameters", None)):
                kind = type(owner).__name__ if owner is not None else "a pytree"
                raise CannotAdapt(
                    f"it is on the meta device and its module ({kind}) has no reset_parameters() to initialize it"
                )
            self.scratch = target.scratches.setdefault(id(owner), Scratch(owner))

    def values(self) -> torch.Tensor:
        if self.scratch is None:
            return self.tensor
        return getattr(self.scratch.initialized(), self.name).detach()


class Scratch:
    """A copy of a module built on meta, materialized and initialized by its ``reset_parameters()``
    once, for all its tensors (a weight and its bias take the draws the constructor would)."""

    def __init__(self, module: torch.nn.Module):
        self.module = copy.deepcopy(module)  # on meta: nothing copied but shapes
        self.ready = False

    def initialized(self) -> torch.nn.Module:
        if not self.ready:
            with torch.no_grad():
                self.module.to_empty(device="cpu")
                self.module.reset_parameters()  # type: ignore[operator]  # OwnInit checked it is callable
            self.ready = True
        return self.module
