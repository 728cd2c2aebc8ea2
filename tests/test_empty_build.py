"""`sl.init_empty_weights()` builds what accelerate's ``init_empty_weights`` builds, and leaves no
non-persistent buffer on meta that its module could compute (issue 22, API.md §8, §10).

timm is not installable here (it imports torchvision): its modules are plain-torch stand-ins that
compute their buffers the way timm's do."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import structload as sl
from helpers import randomized

# --- stand-ins for timm's modules ---------------------------------------------------------------------


class SwinV2Attention(nn.Module):
    """timm's swinv2 ``WindowAttention``: real buffers from ``torch.empty``, filled by ``_init_buffers``
    from tables made on ``self.proj.weight.device`` (meta under the block: "Cannot copy out of meta tensor")."""

    def __init__(self, dim=8, window=(3, 3), heads=2):
        super().__init__()
        self.window_size, self.num_heads = window, heads
        self.logit_scale = nn.Parameter(torch.empty((heads, 1, 1)))
        self.cpb_mlp = nn.Sequential(nn.Linear(2, 16), nn.ReLU(inplace=True), nn.Linear(16, heads, bias=False))
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.q_bias = nn.Parameter(torch.empty(dim))
        self.register_buffer("k_bias", torch.empty(dim), persistent=False)
        self.v_bias = nn.Parameter(torch.empty(dim))
        self.proj = nn.Linear(dim, dim)
        h, w = window
        self.register_buffer("relative_coords_table", torch.empty(1, 2 * h - 1, 2 * w - 1, 2), persistent=False)
        self.register_buffer("relative_position_index", torch.empty(h * w, h * w, dtype=torch.long), persistent=False)
        nn.init.constant_(self.logit_scale, math.log(10))
        nn.init.zeros_(self.q_bias)
        nn.init.zeros_(self.v_bias)
        self.k_bias.zero_()
        table, index = self._make_pair_wise_relative_positions(self.proj.weight.device, self.proj.weight.dtype)
        self.relative_coords_table.copy_(table)
        self.relative_position_index.copy_(index)

    def _make_pair_wise_relative_positions(self, device, dtype):
        h, w = self.window_size
        coords_h = torch.arange(-(h - 1), h, device=device, dtype=torch.float32)
        coords_w = torch.arange(-(w - 1), w, device=device, dtype=torch.float32)
        table = (
            torch.stack(torch.meshgrid(coords_h, coords_w, indexing="ij")).permute(1, 2, 0).contiguous().unsqueeze(0)
        )
        table[:, :, :, 0] /= h - 1
        table[:, :, :, 1] /= w - 1
        table *= 8
        table = (torch.sign(table) * torch.log2(torch.abs(table) + 1.0) / math.log2(8)).to(dtype=dtype)
        coords = torch.stack(
            torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
        ).flatten(1)
        relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).contiguous()
        relative[:, :, 0] += h - 1
        relative[:, :, 1] += w - 1
        relative[:, :, 0] *= 2 * w - 1
        return table, relative.sum(-1)

    def init_non_persistent_buffers(self):  # as timm's
        self.k_bias.zero_()


class SwinV2CrAttention(nn.Module):
    """timm's swinv2_cr ``WindowMultiHeadAttention``: coordinates made on ``self.logit_scale.device``
    and registered as a non-persistent buffer (left on meta, before)."""

    def __init__(self, heads=2, window=(3, 3)):
        super().__init__()
        self.window_size = window
        self.meta_mlp = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, heads))
        self.logit_scale = nn.Parameter(torch.log(10 * torch.ones(heads)))
        device = self.logit_scale.device
        coords = torch.stack(
            torch.meshgrid(
                torch.arange(window[0], device=device), torch.arange(window[1], device=device), indexing="ij"
            )
        ).flatten(1)
        relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).reshape(-1, 2).float()
        log = torch.sign(relative) * torch.log(1.0 + relative.abs())
        self.register_buffer("relative_coordinates_log", log, persistent=False)


class StdConv2d(nn.Conv2d):
    """timm's weight-standardized convolution (ResNetV2 backbones of the hybrid ViTs)."""

    def forward(self, x):
        weight = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None, training=True, eps=1e-6)
        return F.conv2d(x, weight.reshape_as(self.weight), self.bias, self.stride, self.padding)


class HybridEmbed(nn.Module):
    """timm's ``HybridEmbed`` (vit_tiny_r_s16_p8_224, vitamin): runs its backbone on a real
    ``torch.zeros`` input in ``__init__`` to learn the feature map's size ("Tensor on device meta is
    not on the expected device cpu", before)."""

    def __init__(self, img_size=16, in_chans=3, embed_dim=8):
        super().__init__()
        self.backbone = nn.Sequential(StdConv2d(in_chans, 6, 3, stride=2, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        with torch.no_grad():
            training = self.backbone.training
            self.backbone.eval()
            o = self.backbone(torch.zeros(1, in_chans, img_size, img_size))
            self.backbone.train(training)
        self.num_patches = o.shape[-2] * o.shape[-1]
        self.proj = nn.Linear(o.shape[1], embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches, embed_dim))

    def forward(self, x):
        return self.proj(self.backbone(x).flatten(2).transpose(1, 2)) + self.pos_embed


class ShiftedWindowBlock(nn.Module):
    """A Swin-style block whose ``attn_mask`` is computed in ``__init__`` from a persistent buffer
    (the window each token falls in), which was on meta while the block was built, before."""

    def __init__(self, tokens=8, window=4):
        super().__init__()
        self.norm = nn.LayerNorm(4)
        self.register_buffer("window_ids", torch.arange(tokens) // window)
        mask = (self.window_ids[:, None] != self.window_ids[None, :]).float() * -100.0
        self.register_buffer("attn_mask", mask, persistent=False)
        self.tokens = int(self.window_ids.numel())  # values read in __init__, as accelerate allows


def _built_both_ways(factory):
    torch.manual_seed(0)
    reference = randomized(factory())
    with sl.init_empty_weights():
        empty = factory()
    return reference, empty


@pytest.mark.parametrize("factory", [SwinV2Attention, SwinV2CrAttention, HybridEmbed, ShiftedWindowBlock])
def test_timm_style_constructors_build_under_it_and_load_bitwise(factory):
    reference, empty = _built_both_ways(factory)
    assert all(p.is_meta for p in empty.parameters())
    assert all(b.is_meta for n, b in empty.named_buffers() if n in reference.state_dict())  # persistent: on meta
    computed = {n: b for n, b in empty.named_buffers() if n not in reference.state_dict()}
    assert not any(b.is_meta for b in computed.values())
    for name, buffer in computed.items():
        if name != "k_bias":  # torch.empty, zeroed: equal, but not worth comparing bytes of
            assert torch.equal(buffer, factory().get_buffer(name)), name  # as a normal build computes it
    report = sl.load(empty, reference.state_dict())
    assert report.ok
    assert not any(t.is_meta for t in [*empty.parameters(), *empty.buffers()])
    for key, value in reference.state_dict().items():
        assert torch.equal(empty.state_dict()[key], value), key


def test_the_hybrid_embedding_learns_its_shape_and_computes_like_the_original():
    reference, empty = _built_both_ways(HybridEmbed)
    assert empty.num_patches == reference.num_patches == 64 and empty.pos_embed.shape == (1, 64, 8)
    reference.backbone[1].running_var.abs_()  # a variance, not noise
    sl.load(empty, reference)
    x = torch.randn(2, 3, 16, 16)
    reference.eval(), empty.eval()
    assert torch.equal(empty(x), reference(x)) and not empty(x).isnan().any()


@pytest.mark.parametrize("name", ["Bros", "Mra"])
def test_token_type_ids_made_on_the_device_of_a_persistent_buffer_are_real(name):
    transformers = pytest.importorskip("transformers")
    config = getattr(transformers, f"{name}Config")(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, vocab_size=40
    )
    model_class = getattr(transformers, f"{name}Model")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = randomized(model_class(config))
        with sl.init_empty_weights():
            empty = model_class(config)
    assert empty.embeddings.position_ids.is_meta and not empty.embeddings.token_type_ids.is_meta
    assert sl.load(empty, reference.state_dict()).ok
    assert torch.equal(empty.embeddings.token_type_ids, reference.embeddings.token_type_ids)
    for key, value in reference.state_dict().items():
        assert torch.equal(empty.state_dict()[key], value), key


class SharedTable(nn.Module):
    def __init__(self):
        super().__init__()
        table = torch.arange(6.0)
        self.a, self.b = nn.Module(), nn.Module()
        self.a.register_buffer("table", table)
        self.b.register_buffer("table", table)


def test_a_persistent_buffer_shared_by_two_modules_stays_one_tensor():
    with sl.init_empty_weights():
        model = SharedTable()
    assert model.a.table.is_meta and model.a.table is model.b.table
    report = sl.load(model, {"a.table": torch.ones(6)})
    assert report.ok and report.tied == [("a.table", "b.table")] and torch.equal(model.b.table, torch.ones(6))


def test_factories_outside_a_module_and_after_the_block_behave_as_usual():
    with sl.init_empty_weights():
        assert not torch.zeros(2, device="meta").is_meta  # values from numbers: real
        assert (torch.ones(2) + torch.empty(2, 2, device="cpu").to("meta")).is_meta  # mixed: meta
    assert torch.zeros(2, device="meta").is_meta


class FromWeights(nn.Module):
    """A buffer computed from a weight's values: no block can make it real."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3, 3)
        self.register_buffer("proj_t", self.proj.weight.detach().t().contiguous(), persistent=False)


def test_a_buffer_computed_from_meta_weights_says_what_to_do_when_built_under_it():
    with sl.init_empty_weights():
        model = FromWeights()
    source = randomized(FromWeights()).state_dict()
    with pytest.raises(sl.LoadError) as info:
        sl.load(model, source)
    [problem] = info.value.problems
    assert (
        problem.path == "proj_t"
        and "although the model was built under structload.init_empty_weights()" in problem.message
    )
    assert "exclude=" in problem.message
    assert sl.load(model, source, exclude="proj_t").ok  # the way out the message names
    assert torch.equal(model.proj.weight, source["proj.weight"]) and model.proj_t.is_meta


def test_the_fix_named_for_a_timm_module_is_its_own_init_method():
    class Attention(SwinV2Attention):
        def __init__(self):
            super().__init__()
            self.register_buffer("scale_t", self.logit_scale.detach().flatten(), persistent=False)

    with sl.init_empty_weights():
        model = Attention()
    with pytest.raises(sl.LoadError) as info:
        sl.load(model, randomized(Attention()).state_dict())
    assert "Attention.init_non_persistent_buffers()" in info.value.problems[0].message
