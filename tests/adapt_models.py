"""Destinations for the adapt tests, written the way a user writes them (not from structload's code),
and the reference formulas transcribed from their published sources (timm, FlexiViT, Swin)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class PatchEmbedding(nn.Module):
    """timm's layout: ``proj`` and the grid the image makes (non-square allowed)."""

    def __init__(self, image, patch, channels, dim):
        super().__init__()
        image = image if isinstance(image, tuple) else (image, image)
        self.grid_size = (image[0] // patch, image[1] // patch)
        self.proj = nn.Conv2d(channels, dim, patch, stride=patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class SmallViT(nn.Module):
    """A plain-torch ViT: class token, optional register tokens, a learned position embedding."""

    def __init__(self, image=32, patch=8, channels=3, dim=16, classes=5, registers=0):
        super().__init__()
        self.patch_embed = PatchEmbedding(image, patch, channels, dim)
        grid = self.patch_embed.grid_size
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.reg_token = nn.Parameter(torch.randn(1, registers, dim)) if registers else None
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + registers + grid[0] * grid[1], dim))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)


class ConvNet(nn.Module):
    """A ResNet-like stem and body, as torchvision lays it out."""

    def __init__(self, channels=3, classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(8, classes)

    def forward(self, x):
        return self.fc(self.body(self.stem(x)).mean((2, 3)))


class WindowAttention(nn.Module):
    """Swin's window attention, with the index buffer registered persistent as in the original code."""

    def __init__(self, dim=8, window=4, heads=2):
        super().__init__()
        self.window_size = (window, window)
        self.relative_position_bias_table = nn.Parameter(torch.randn((2 * window - 1) ** 2, heads))
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
        relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
        self.register_buffer("relative_position_index", relative[..., 0] * (2 * window - 1) + relative[..., 1])
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)


class SwinBlock(nn.Module):
    def __init__(self, dim=8, window=4, heads=2):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, heads)


class TextModel(nn.Module):
    """A decoder-style text model whose output head is tied to its token embedding."""

    def __init__(self, vocab=10, dim=6):
        super().__init__()
        self.tok_embeddings = nn.Embedding(vocab, dim)
        self.layer = nn.Linear(dim, dim)
        self.output = nn.Linear(dim, vocab, bias=False)
        self.output.weight = self.tok_embeddings.weight


# --- the published formulas, transcribed -------------------------------------------------------


def timm_adapt_input_conv(in_chans, conv_weight):
    """timm/models/_manipulate.py: adapt_input_conv."""
    conv_type = conv_weight.dtype
    conv_weight = conv_weight.float()
    source_channels = conv_weight.shape[1]
    if in_chans == 1:
        conv_weight = conv_weight.sum(dim=1, keepdim=True)
    elif in_chans != 3:
        assert source_channels == 3
        repeat = math.ceil(in_chans / 3)
        conv_weight = conv_weight.repeat(1, repeat, 1, 1)[:, :in_chans, :, :]
        conv_weight *= 3 / float(in_chans)
    return conv_weight.to(conv_type)


def timm_resample_abs_pos_embed(posemb, new_size, old_size=None, num_prefix_tokens=1, antialias=False):
    """timm/layers/pos_embed.py: resample_abs_pos_embed (bicubic)."""
    if old_size is None:
        hw = int(math.sqrt(posemb.shape[1] - num_prefix_tokens))
        old_size = hw, hw
    prefix, posemb = posemb[:, :num_prefix_tokens], posemb[:, num_prefix_tokens:]
    embed_dim = posemb.shape[-1]
    posemb = posemb.float().reshape(1, old_size[0], old_size[1], -1).permute(0, 3, 1, 2)
    posemb = F.interpolate(posemb, size=new_size, mode="bicubic", antialias=antialias)
    posemb = posemb.permute(0, 2, 3, 1).reshape(1, -1, embed_dim)
    return torch.cat([prefix, posemb], dim=1)


def flexivit_resample_patch_embed(patch_embed, new_size, antialias=True):
    """timm/layers/patch_embed.py: resample_patch_embed (numpy pseudo-inverse, float32 basis)."""
    old_size = patch_embed.shape[-2:]

    def resize(x_np, size):
        x_tf = torch.Tensor(x_np)[None, None, ...]
        return F.interpolate(x_tf, size=size, mode="bicubic", antialias=antialias)[0, 0, ...].numpy()

    mat = []
    for i in range(int(np.prod(old_size))):
        basis = np.zeros(old_size)
        basis[np.unravel_index(i, old_size)] = 1.0
        mat.append(resize(basis, new_size).reshape(-1))
    resize_mat = np.stack(mat).T
    pinv = torch.tensor(np.linalg.pinv(resize_mat.T))
    kernels = patch_embed.float().reshape(-1, int(np.prod(old_size)))
    return (kernels @ pinv.T).reshape(*patch_embed.shape[:2], *new_size)


def swin_resize_table(table, new_rows):
    """Swin's load_pretrained: bicubic resize of a relative_position_bias_table."""
    L1, nH1 = table.size()
    S1, S2 = int(L1**0.5), int(new_rows**0.5)
    resized = F.interpolate(table.permute(1, 0).view(1, nH1, S1, S1), size=(S2, S2), mode="bicubic")
    return resized.view(nH1, new_rows).permute(1, 0)
