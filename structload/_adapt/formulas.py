"""The formulas `structload.adapt` applies: plain functions from tensors to tensors.

Each one is written from its published reference and computes in float32 (float64 stays
float64), returning the source's dtype, as the references do:

- `input_channels`: timm's ``adapt_input_conv`` (``timm/models/_manipulate.py``), from any
  source channel count;
- `resample_grid`: timm's ``resample_abs_pos_embed`` (``timm/layers/pos_embed.py``): prefix
  tokens kept, the grid resized as an image, non-square grids allowed;
- `resample_patch_kernel`: FlexiViT's pseudo-inverse resize (Beyer et al. 2023; timm's
  ``resample_patch_embed``), computed in float64;
- `resize_table`: Swin's bicubic resize of a ``relative_position_bias_table``
  (``align_corners=False``, no antialias: the official ``load_pretrained``);
- `row_fill`: the rows a `Resize` adds (the mean of the old rows, the centre of
  transformers' ``mean_resizing``).

>>> import torch
>>> input_channels(torch.ones(1, 3, 1, 1), 1, "repeat").flatten().tolist()  # to one channel: the sum
[3.0]
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def working(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor in the precision the formulas use: float32, or float64 when it already is."""
    return tensor if tensor.dtype == torch.float64 else tensor.float()


def input_channels(weight: torch.Tensor, channels: int, mode: str) -> torch.Tensor:
    """`weight` (out, C, ...) with `channels` input channels instead of C.

    ``repeat`` (timm's rule): to one channel, the sum of the C channels; otherwise the C
    channels tiled to `channels` and scaled by C / channels, so an input made of copies of
    the original channels gives the original output. ``sum``: every new channel is the sum
    of the C channels divided by `channels` (a grey image repeated gives the same output as
    the same grey image fed to the C channels). ``zero``: the channels both have are copied,
    new ones are zero (an added band starts with no effect).

    >>> w = torch.tensor([[1.0, 2.0, 3.0]])
    >>> input_channels(w, 4, "repeat").tolist()  # 3 -> 4: tiled, times 3/4
    [[0.75, 1.5, 2.25, 0.75]]
    >>> input_channels(w, 2, "sum").tolist(), input_channels(w, 4, "zero").tolist()
    ([[3.0, 3.0]], [[1.0, 2.0, 3.0, 0.0]])
    """
    work, old = working(weight), weight.shape[1]
    if mode == "zero":
        out = work.new_zeros((work.shape[0], channels, *work.shape[2:]))
        keep = min(old, channels)
        out[:, :keep] = work[:, :keep]
    elif mode == "sum":
        out = (work.sum(dim=1, keepdim=True) / channels).expand(-1, channels, *work.shape[2:]).contiguous()
    elif channels == 1:
        out = work.sum(dim=1, keepdim=True)
    else:
        repeats = math.ceil(channels / old)
        out = work.repeat(1, repeats, *[1] * (work.dim() - 2))[:, :channels] * (old / float(channels))
    return out.to(weight.dtype)


def resample_grid(
    embed: torch.Tensor, prefix: int, old: tuple[int, int], new: tuple[int, int], mode: str, antialias: bool
) -> torch.Tensor:
    """Position embeddings (``(1, n, d)`` or ``(n, d)``): the first `prefix` rows (class and
    register tokens) kept, the rest, a row-major `old` grid, resized to `new` as an image.

    >>> grid = torch.arange(4.0).reshape(1, 4, 1)  # a 2 x 2 grid of one channel, no prefix
    >>> resample_grid(grid, 0, (2, 2), (1, 1), "bilinear", False).flatten().tolist()
    [1.5]
    """
    squeezed = embed.dim() == 2
    x = embed[None] if squeezed else embed
    dim = x.shape[-1]
    image = working(x[:, prefix:]).reshape(1, old[0], old[1], dim).permute(0, 3, 1, 2)
    image = F.interpolate(image, size=new, mode=mode, antialias=antialias, **_corners(mode))
    grid = image.permute(0, 2, 3, 1).reshape(1, -1, dim).to(embed.dtype)
    out = torch.cat([x[:, :prefix], grid], dim=1)
    return out[0] if squeezed else out


def _corners(mode: str) -> dict:
    """``align_corners=False`` where `F.interpolate` takes it (timm, transformers and Swin all use it)."""
    return {"align_corners": False} if mode in ("linear", "bilinear", "bicubic", "trilinear") else {}


def resize_matrix(old: tuple[int, int], new: tuple[int, int], antialias: bool) -> torch.Tensor:
    """The linear map of a bicubic resize from `old` to `new` (``new_image = A @ old_image``,
    flattened row-major), in float64: each column is the resize of one basis image."""
    count = old[0] * old[1]
    basis = torch.eye(count, dtype=torch.float64).reshape(count, 1, *old)
    resized = F.interpolate(basis, size=new, mode="bicubic", antialias=antialias, align_corners=False)
    return resized.reshape(count, -1).T


def resample_patch_kernel(kernel: torch.Tensor, new: tuple[int, int], antialias: bool) -> torch.Tensor:
    """A patch-embedding kernel (out, in, h, w) for patches of size `new` (FlexiViT).

    The new kernel is ``pinv(A.T) @ old`` for the resize map ``A``: the least-norm kernel
    whose response to a resized patch equals the old kernel's response to the patch
    (exactly so when `new` is larger).

    >>> k = torch.randn(2, 3, 4, 4)
    >>> x = torch.randn(5, 3, 4, 4)
    >>> big = F.interpolate(x, size=(6, 6), mode="bicubic", antialias=True, align_corners=False)
    >>> torch.allclose((x[:, None] * k).sum((2, 3, 4)), (big[:, None] * resample_patch_kernel(k, (6, 6), True)).sum((2, 3, 4)), atol=1e-5)
    True
    """
    old = (kernel.shape[-2], kernel.shape[-1])
    inverse = torch.linalg.pinv(resize_matrix(old, new, antialias).T)  # (new_h * new_w, old_h * old_w)
    flat = kernel.to(torch.float64).reshape(-1, old[0] * old[1])
    return (flat @ inverse.T).reshape(*kernel.shape[:-2], *new).to(kernel.dtype)


def resize_table(table: torch.Tensor, old: tuple[int, int], new: tuple[int, int], mode: str) -> torch.Tensor:
    """A relative-position bias table ``((2h-1)(2w-1), heads)`` for another window: each head's
    table resized as an image of side ``2w-1`` (Swin: bicubic, ``align_corners=False``)."""
    heads = table.shape[1]
    image = working(table).permute(1, 0).reshape(1, heads, *old)
    image = F.interpolate(image, size=new, mode=mode, **_corners(mode))
    return image.reshape(heads, -1).permute(1, 0).to(table.dtype)


def row_fill(source: torch.Tensor, dim: int, count: int, init: str) -> torch.Tensor:
    """The `count` rows (along `dim`) a `Resize` adds: the mean of the source's rows, or zeros.

    >>> row_fill(torch.tensor([[1.0, 2.0], [3.0, 6.0]]), 0, 2, "mean").tolist()
    [[2.0, 4.0], [2.0, 4.0]]
    """
    shape = list(source.shape)
    shape[dim] = count
    if init == "zero":
        return source.new_zeros(shape)
    mean = working(source).mean(dim=dim, keepdim=True).to(source.dtype)
    return mean.expand(shape)


def square_side(count: int) -> int | None:
    """The side of a square of `count` cells, or ``None``.

    >>> square_side(196), square_side(197)
    (14, None)
    """
    side = math.isqrt(count) if count > 0 else 0
    return side if side > 0 and side * side == count else None
