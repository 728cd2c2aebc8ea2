"""`LoadOptions`: the options of one load, built once, checked once, passed by name.

`load`, `structload check` and `load_optimizer` each build one record from
their keywords; every later step reads its fields instead of a dict indexed
by string. Bad options raise here, before any file is opened:

>>> LoadOptions(dtype="half")
Traceback (most recent call last):
...
TypeError: dtype must be a torch.dtype, "auto" or None, got 'half'
>>> options = LoadOptions(exclude="head", mmap=True)
>>> options.strict, options.maps, options.target_device
(True, True, device(type='cpu'))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ._align.alignment import Alignment
from ._plan.select import Selection
from ._rename import compile_rename
from .convert import check_converters


@dataclass(frozen=True, kw_only=True)
class LoadOptions:
    """The keywords of `structload.load` (see its docstring), and what they compile to.

    One record serves one load: `selection` and `renamer` note which patterns
    matched, for the ``pattern`` problems. `meta_is_final` is not a keyword of
    `load`: ``structload check`` builds its model on meta only to dry-run the
    load, so tensors left on meta are not a problem there.
    """

    strict: bool = True
    include: Any = None
    exclude: Any = None
    filter: Callable[[str, object], bool] | None = None
    rename: Any = None
    convert: Any = None
    device: torch.device | str | None = None
    dry_run: bool = False
    progress: bool | None = None
    dtype: torch.dtype | str | None = None
    align: Any = False
    mmap: bool = False
    adapt: Any = None
    meta_is_final: bool = True
    target_device: torch.device = field(init=False, repr=False)  # `device`, or the CPU
    selection: Selection = field(init=False, repr=False, compare=False)
    renamer: Callable[[str], str | None] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # checked in the order the loads always checked them, so a call with two bad options
        # still names the same one
        object.__setattr__(self, "convert", check_converters(self.convert))
        object.__setattr__(self, "selection", Selection(self.include, self.exclude, self.filter))
        object.__setattr__(self, "renamer", compile_rename(self.rename))
        object.__setattr__(self, "target_device", _device(self.device))
        if self.dtype is not None and self.dtype != "auto" and not isinstance(self.dtype, torch.dtype):
            raise TypeError(f'dtype must be a torch.dtype, "auto" or None, got {self.dtype!r}')
        if self.aligns and not isinstance(self.align, (Alignment, dict)) and self.align is not True:
            raise TypeError(
                "align must be True, an Alignment or a dict of structload.align options, "
                f"got {type(self.align).__name__}"
            )

    @property
    def aligns(self) -> bool:
        """Whether the load matches by structure first (``align=``)."""
        return self.align is not False and self.align is not None

    @property
    def adapts(self) -> bool:
        """Whether source tensors of another shape may be adapted (``adapt=``)."""
        return self.adapt is not None and self.adapt is not False

    @property
    def maps(self) -> bool:
        """Whether ``mmap=True`` can take effect: a mapping lives in host memory."""
        return bool(self.mmap) and self.target_device.type == "cpu"

    def with_mapping(self, rename, convert) -> LoadOptions:
        """The same options with `rename` and `convert` replaced (an alignment's mapping)."""
        return dataclasses.replace(self, rename=rename, convert=convert)


def _device(device) -> torch.device:
    """``device=`` as a torch device (the CPU by default), or a clear error naming it."""
    try:
        return torch.device(device if device is not None else "cpu")
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device= takes a torch device such as 'cpu' or 'cuda:0', got {device!r} ({error})") from None
