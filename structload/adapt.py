"""Adapters: load weights across small architecture changes (``sl.load(..., adapt=...)``).

Fine-tuning changes a few shapes: input channels, image size, patch size, window
size, vocabulary, number of classes. Where the destination's tensor and the
source's differ in shape, an adapter may turn the source tensor into one of the
destination's shape, lazily (nothing is read before the plan has passed), and the
report lists it in ``report.adapted``.

- ``adapt=True``: `InChannels` (the stem only), `PosEmbed`, `PatchEmbed` and
  `RelPosTable` wherever the tensor's name is one they know **and** the shapes fit
  their arithmetic; never on one of the two alone.
- ``adapt=[...]``: the adapters listed, in order, each where it would apply with
  ``adapt=True``; `Resize` and `Reinit`, which know no names, wherever their shape
  arithmetic holds.
- ``adapt={glob: adapter}``: pins. A glob matches dotted destination paths of
  tensors or modules (a module covers its tensors, a path of a tied group covers
  the group); the pinned adapter needs no name evidence.

Adapters only touch tensors whose shapes differ; whatever no adapter takes stays
a ``shape`` problem, which says why an adapter that knew the name refused.

Examples:
    >>> import torch, structload as sl
    >>> from structload.adapt import InChannels
    >>> rgb = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1))
    >>> grey = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1))
    >>> report = sl.load(grey, rgb.state_dict(), adapt={"0": InChannels()})
    >>> torch.allclose(grey[0].weight, rgb[0].weight.sum(1, keepdim=True))
    True
    >>> report.adapted[0]
    Adapted(path='0.weight', src_shape=(8, 3, 3, 3), dst_shape=(8, 1, 3, 3), adapter=InChannels())
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch

from ._adapt import formulas
from ._adapt.adapted import AdaptedTensor, CannotAdapt, OwnInit, Target
from ._render.text import shape_text
from .sources.views import narrow

__all__ = [
    "AdaptedTensor",
    "Adapter",
    "CannotAdapt",
    "InChannels",
    "PatchEmbed",
    "PosEmbed",
    "Reinit",
    "RelPosTable",
    "Resize",
    "Target",
]

#: Words of a stem's path (``conv1``, ``stem.0``, ``features.0``, ``patch_embed.proj``); with
#: being the model's first convolution or linear layer, what `InChannels` needs under ``adapt=True``.
STEM_WORDS = frozenset(
    {"stem", "conv1", "conv0", "features", "patch", "embed", "embedding", "embeddings", "embedder", "first", "input"}
)
#: Names of absolute position embeddings (a parameter, or an ``nn.Embedding`` module's weight).
POS_EMBED_NAMES = frozenset(
    {"pos_embed", "pos_embedding", "position_embeddings", "position_embedding", "absolute_pos_embed"}
)
#: Most prefix (class, register, distillation) tokens `PosEmbed` looks for when it counts them.
MOST_PREFIX_TOKENS = 16


@dataclass(frozen=True, repr=False)
class Adapter:
    """Base class: `named` is the name evidence ``adapt=True`` needs, `adapt` the shape
    arithmetic and the lazy result (raising `CannotAdapt` with the reason)."""

    #: Sibling buffers of the destination computed from the adapted shape (kept, listed as ignored).
    derived: ClassVar[tuple[str, ...]] = ()

    def named(self, target: Target) -> bool:
        return True

    def adapt(self, target: Target) -> AdaptedTensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        """The call that makes it, with the parameters that differ from the defaults."""
        args = [
            f"{f.name}={getattr(self, f.name)!r}"
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != f.default
        ]
        return f"{type(self).__name__}({', '.join(args)})"


def _floating(target: Target) -> None:
    dtype = target.source.dtype
    if dtype is not None and not dtype.is_floating_point:
        raise CannotAdapt(f"the source is {str(dtype).replace('torch.', '')}, not floating point")


def _choice(value, allowed: tuple, what: str) -> None:
    if value not in allowed:
        raise ValueError(f"{what} must be one of {', '.join(map(repr, allowed))}, got {value!r}")


@dataclass(frozen=True, repr=False)
class InChannels(Adapter):
    """The input-channel dim (dim 1) of a stem convolution or linear layer, from any source
    channel count: ``"repeat"`` (timm's ``adapt_input_conv``: to 1 channel sums; from C to N
    tiles the C channels and scales by C/N, so 3 -> 6 repeats and halves), ``"sum"`` (each
    channel the sum divided by N), ``"zero"`` (shared channels copied, new ones zero).

    >>> import torch, structload as sl
    >>> four_band = torch.nn.Conv2d(4, 2, 1)
    >>> rgb = {"weight": torch.tensor([[1.0, 2.0, 3.0], [0.0, 3.0, 6.0]]).reshape(2, 3, 1, 1), "bias": torch.zeros(2)}
    >>> _ = sl.load(four_band, rgb, adapt={"weight": InChannels(mode="zero")})
    >>> four_band.weight.flatten(1).tolist()
    [[1.0, 2.0, 3.0, 0.0], [0.0, 3.0, 6.0, 0.0]]
    """

    mode: str = "repeat"

    def __post_init__(self):
        _choice(self.mode, ("repeat", "sum", "zero"), "InChannels mode")

    def named(self, target: Target) -> bool:
        return target.stem and bool(target.words & STEM_WORDS)

    def adapt(self, target: Target) -> AdaptedTensor:
        src, dst = tuple(target.source.shape), tuple(target.tensor.shape)
        if len(src) < 2 or len(src) != len(dst) or src[:1] + src[2:] != dst[:1] + dst[2:]:
            raise CannotAdapt("only the input-channel dim (dim 1) may differ")
        _floating(target)
        channels, source = dst[1], target.source
        return AdaptedTensor(target, self, lambda: formulas.input_channels(source.read(), channels, self.mode))


@dataclass(frozen=True, repr=False)
class PosEmbed(Adapter):
    """Absolute position embeddings, ``(1, n, d)`` or ``(n, d)``, for another image size
    (timm's ``resample_abs_pos_embed``): ``n = h * w + p`` with `p` prefix tokens (class,
    registers) kept as they are and the grid resized as an image. `p` is `prefix_tokens`,
    or what the destination's grid leaves, or the one count up to 16 that makes both
    grids square with more cells than prefix tokens. ``adapt=True`` detects ``(1, n, d)``
    embeddings only; pin ``(n, d)`` ones (CLIP's ``position_embedding``): a text model's
    position table has that shape too. The destination's grid is `grid`, or read from the module holding the
    embeddings or its children (``grid_size``, ``patch_grid``, ``patches_resolution``, or
    ``image_size`` / ``patch_size``), or square; the source's is `source_grid` or square.

    >>> import torch
    >>> from structload.sources import MemoryTensor
    >>> src = torch.randn(1, 1 + 4 * 4, 8)
    >>> leaf = PosEmbed().adapt(Target("pos_embed", torch.empty(1, 1 + 6 * 6, 8), MemoryTensor(src)))
    >>> leaf.read().shape, bool(leaf.read()[:, 0].eq(src[:, 0]).all())  # the class token is kept
    (torch.Size([1, 37, 8]), True)
    """

    prefix_tokens: int | None = None
    grid: tuple[int, int] | None = None
    mode: str = "bicubic"
    antialias: bool = False
    source_grid: tuple[int, int] | None = None

    def named(self, target: Target) -> bool:
        """A known name on a ``(1, n, d)`` tensor: an ``(n, d)`` table (an ``nn.Embedding``) is as
        likely a text model's positions, which are no grid, so those are adapted only where pinned."""
        return target.own_name in POS_EMBED_NAMES and target.tensor.dim() == 3

    def adapt(self, target: Target) -> AdaptedTensor:
        src, dst = tuple(target.source.shape), tuple(target.tensor.shape)
        if len(src) not in (2, 3) or len(src) != len(dst) or src[:-2] != dst[:-2] or src[-1] != dst[-1]:
            raise CannotAdapt("only the token count (dim -2) of (1, n, d) or (n, d) embeddings may differ")
        _floating(target)
        prefix, old, new = self.grids(target, src[-2], dst[-2])
        source, mode, antialias = target.source, self.mode, self.antialias
        return AdaptedTensor(
            target, self, lambda: formulas.resample_grid(source.read(), prefix, old, new, mode, antialias)
        )

    def grids(self, target: Target, n_src: int, n_dst: int) -> tuple[int, tuple[int, int], tuple[int, int]]:
        """The prefix count and the source's and destination's grids: ``n = h * w + prefix``."""
        grid = self.grid or grid_of(target.owner, n_dst)
        prefix = self.prefix_tokens
        if prefix is None and grid is not None:
            prefix = n_dst - grid[0] * grid[1]
        if prefix is None:
            fits = [p for p in range(MOST_PREFIX_TOKENS + 1) if _grids_with(p, n_src, n_dst)]
            if len(fits) != 1:
                found = f"for {fits} prefix tokens" if fits else "for no prefix count up to 16"
                raise CannotAdapt(f"{n_src} and {n_dst} tokens make square grids {found}; give prefix_tokens=")
            prefix = fits[0]
        new = grid or _square(n_dst - prefix)
        old = self.source_grid or _square(n_src - prefix)
        return prefix, _grid_fits("source", n_src, old, prefix), _grid_fits("destination", n_dst, new, prefix)


def _grid_fits(what: str, tokens: int, grid: tuple[int, int] | None, prefix: int) -> tuple[int, int]:
    if grid is None or grid[0] * grid[1] + prefix != tokens:
        shown = f"a {grid[0]} x {grid[1]} grid" if grid else "a square grid"
        raise CannotAdapt(f"the {what}'s {tokens} tokens are not {shown} + {prefix} prefix tokens; give grid=")
    return grid


def _grids_with(prefix: int, *tokens: int) -> bool:
    """Whether every token count is a square grid of more cells than `prefix` tokens before it."""
    return all(_square(n - prefix) and n - prefix > prefix for n in tokens)


def _square(count: int) -> tuple[int, int] | None:
    side = formulas.square_side(count)
    return (side, side) if side else None


def _pair(value) -> tuple[int, int] | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return (int(value[0]), int(value[1]))
    return None


def grid_of(module: torch.nn.Module | None, tokens: int) -> tuple[int, int] | None:
    """The patch grid the module holding position embeddings declares (itself or a child:
    timm's ``patch_embed.grid_size``, transformers' ``patch_embeddings.image_size`` /
    ``patch_size``), when it fits `tokens` with at most 16 prefix tokens."""
    if module is None:
        return None
    for holder in (module, *module.children()):
        found = [_pair(getattr(holder, a, None)) for a in ("grid_size", "patch_grid", "patches_resolution")]
        image, patch = _pair(getattr(holder, "image_size", None)), _pair(getattr(holder, "patch_size", None))
        if image and patch:
            found.append((image[0] // patch[0], image[1] // patch[1]))
        for grid in found:
            if grid and 0 <= tokens - grid[0] * grid[1] <= MOST_PREFIX_TOKENS:
                return grid
    return None


@dataclass(frozen=True, repr=False)
class PatchEmbed(Adapter):
    """A patch-embedding kernel ``(out, in, h, w)`` for another patch size (FlexiViT's
    pseudo-inverse resize, timm's ``resample_patch_embed``): a patch resized to the new size
    gives the same embedding through the new kernel as the old patch through the old one."""

    antialias: bool = True

    def named(self, target: Target) -> bool:
        return "patch" in target.words or any(w.startswith("patch") for w in target.words)

    def adapt(self, target: Target) -> AdaptedTensor:
        src, dst = tuple(target.source.shape), tuple(target.tensor.shape)
        if len(src) != 4 or len(dst) != 4 or src[:2] != dst[:2]:
            raise CannotAdapt("only the kernel size (dims 2, 3) of (out, in, h, w) kernels may differ")
        _floating(target)
        source, new, antialias = target.source, (dst[2], dst[3]), self.antialias
        return AdaptedTensor(target, self, lambda: formulas.resample_patch_kernel(source.read(), new, antialias))


@dataclass(frozen=True, repr=False)
class RelPosTable(Adapter):
    """A Swin-style ``relative_position_bias_table`` (``((2h-1)(2w-1), heads)``) for another
    window size: each head's table resized as an image (bicubic, ``align_corners=False``, no
    antialias, as Swin's own loader). The destination's window is its module's
    ``window_size`` or square. Its ``relative_position_index`` (computed from the window) is
    kept and listed in ``report.ignored``."""

    mode: str = "bicubic"
    derived: ClassVar[tuple[str, ...]] = ("relative_position_index",)

    def named(self, target: Target) -> bool:
        return target.own_name == "relative_position_bias_table"

    def adapt(self, target: Target) -> AdaptedTensor:
        src, dst = tuple(target.source.shape), tuple(target.tensor.shape)
        if len(src) != 2 or len(dst) != 2 or src[1] != dst[1]:
            raise CannotAdapt("only the row count of (rows, heads) tables may differ")
        _floating(target)
        old, new = _square(src[0]), _table_side(target.owner, dst[0]) or _square(dst[0])
        if old is None or new is None:
            raise CannotAdapt(f"{src[0]} or {dst[0]} rows are no (2w - 1)^2 window table")
        source, mode = target.source, self.mode
        return AdaptedTensor(target, self, lambda: formulas.resize_table(source.read(), old, new, mode))


def _table_side(module: torch.nn.Module | None, rows: int) -> tuple[int, int] | None:
    window = _pair(getattr(module, "window_size", None)) if module is not None else None
    if window and (2 * window[0] - 1) * (2 * window[1] - 1) == rows:
        return (2 * window[0] - 1, 2 * window[1] - 1)
    return None


@dataclass(frozen=True, repr=False)
class Resize(Adapter):
    """More or fewer rows along `dim` (a vocabulary, a class count): the rows both have are
    copied; new rows get the mean of the source's rows (``init="mean"``, the centre of
    transformers' ``mean_resizing`` without its random draw), zeros, or the destination's
    own initialization (``"keep"``). Tied embeddings stay one tensor.

    >>> import torch, structload as sl
    >>> emb = torch.nn.Embedding(4, 2)
    >>> _ = sl.load(emb, {"weight": torch.tensor([[1.0, 2.0], [3.0, 4.0]])}, adapt={"*": Resize()})
    >>> emb.weight.tolist()
    [[1.0, 2.0], [3.0, 4.0], [2.0, 3.0], [2.0, 3.0]]
    """

    dim: int = 0
    init: str = "mean"

    def __post_init__(self):
        _choice(self.init, ("mean", "zero", "keep"), "Resize init")

    def adapt(self, target: Target) -> AdaptedTensor:
        src, dst = tuple(target.source.shape), tuple(target.tensor.shape)
        if len(src) != len(dst) or not -len(dst) <= self.dim < len(dst):
            raise CannotAdapt(f"dim {self.dim} does not fit {shape_text(src)} and {shape_text(dst)}")
        dim = self.dim % len(dst)
        if src[:dim] + src[dim + 1 :] != dst[:dim] + dst[dim + 1 :]:
            raise CannotAdapt(f"only dim {dim} may differ")
        shared = min(src[dim], dst[dim])
        overlap = narrow(target.source, dim, 0, shared) if shared < src[dim] else target.source  # reads only these

        def fill(out: torch.Tensor) -> None:
            overlap.read_into(out.narrow(dim, 0, shared))

        if self.init == "keep":
            return AdaptedTensor(target, self, None, own=OwnInit(target), fill=fill)
        source, added, init = target.source, dst[dim] - shared, self.init

        def compute() -> torch.Tensor:
            rows = overlap.read()
            if added <= 0:
                return rows
            return torch.cat([rows, formulas.row_fill(source.read(), dim, added, init)], dim)

        return AdaptedTensor(target, self, compute)


@dataclass(frozen=True, repr=False)
class Reinit(Adapter):
    """The destination keeps its own values (a new head for another number of classes); a
    tensor on ``meta`` is materialized and initialized by its module's ``reset_parameters()``,
    never left uninitialized. Only where pinned or listed; tensors of equal shapes load as usual.

    >>> import torch, structload as sl
    >>> head = torch.nn.Linear(4, 3)
    >>> before = head.weight.clone()
    >>> report = sl.load(head, {"weight": torch.ones(10, 4), "bias": torch.ones(10)}, adapt=[Reinit()])
    >>> torch.equal(head.weight, before), [a.path for a in report.adapted]
    (True, ['weight', 'bias'])
    """

    def adapt(self, target: Target) -> AdaptedTensor:
        return AdaptedTensor(target, self, None, dtype=target.tensor.dtype, own=OwnInit(target), fill=_nothing)


def _nothing(out: torch.Tensor) -> None:
    """`Reinit` overwrites none of the destination's own values."""


#: What ``adapt=True`` enables, in the order they are tried.
DETECTED = (InChannels(), PosEmbed(), PatchEmbed(), RelPosTable())
