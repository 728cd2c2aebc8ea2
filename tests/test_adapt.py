"""``sl.load(..., adapt=...)``: source tensors of another shape adapted to the destination's
(API.md §14), on destinations written independently and on transformers' own models."""

from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
from adapt_models import (
    ConvNet,
    SmallViT,
    SwinBlock,
    TextModel,
    WindowAttention,
    flexivit_resample_patch_embed,
    swin_resize_table,
    timm_adapt_input_conv,
    timm_resample_abs_pos_embed,
)
from test_files import ReadLog
from torch import nn

import structload as sl
from helpers import assert_unchanged, randomized, snapshot
from structload.adapt import InChannels, PatchEmbed, PosEmbed, Reinit, RelPosTable, Resize
from structload.convert import Transpose

# --- off by default, on where name and shape agree ----------------------------------------------


def test_off_by_default_a_shape_mismatch_stays_a_shape_problem():
    src, dst = randomized(SmallViT(image=32), 1), SmallViT(image=48)
    before = snapshot(dst)
    with pytest.raises(sl.LoadError) as info:
        sl.load(dst, src.state_dict())
    assert [(p.kind, p.path) for p in info.value.problems] == [("shape", "pos_embed")]
    assert info.value.problems[0].message.endswith("; adapt=True would adapt it (PosEmbed(), see structload.adapt)")
    assert_unchanged(dst, before)


def test_adapt_true_resamples_pos_embed_and_reports_it():
    src, dst = randomized(SmallViT(image=32), 1), SmallViT(image=48)
    report = sl.load(dst, src.state_dict(), adapt=True)
    [item] = report.adapted
    assert (item.path, item.src_shape, item.dst_shape) == ("pos_embed", (1, 17, 16), (1, 37, 16))
    assert isinstance(item.adapter, PosEmbed) and repr(item.adapter) == "PosEmbed()"
    assert "pos_embed" in report.loaded and report.ok
    expected = timm_resample_abs_pos_embed(src.pos_embed.detach(), (6, 6), num_prefix_tokens=1)
    assert torch.allclose(dst.pos_embed, expected, atol=1e-6, rtol=0)
    assert torch.equal(dst.head.weight, src.head.weight)


def test_adapt_true_needs_the_name_as_well_as_the_shape():
    class Renamed(nn.Module):  # a pos_embed-shaped tensor under a name no adapter knows
        def __init__(self, tokens):
            super().__init__()
            self.table = nn.Parameter(torch.zeros(1, tokens, 4))

    with pytest.raises(sl.LoadError) as info:
        sl.load(Renamed(37), Renamed(17).state_dict(), adapt=True)
    assert info.value.problems[0].kind == "shape" and info.value.problems[0].path == "table"
    assert sl.load(Renamed(37), Renamed(17).state_dict(), adapt={"table": PosEmbed()}).adapted[0].path == "table"


def test_adapt_true_needs_the_shape_as_well_as_the_name():
    class Odd(nn.Module):
        def __init__(self, tokens):
            super().__init__()
            self.pos_embed = nn.Parameter(torch.zeros(1, tokens, 4))

    text = {"position_embeddings": {"weight": torch.zeros(64, 4)}}  # (n, d): a text model's positions, no grid
    with pytest.raises(sl.LoadError):
        sl.load(text, {"position_embeddings": {"weight": torch.ones(16, 4)}}, adapt=True)
    with pytest.raises(sl.LoadError) as info:  # 20 and 30 tokens: no prefix count makes both grids square
        sl.load(Odd(30), Odd(20).state_dict(), adapt=True)
    [problem] = info.value.problems
    assert problem.kind == "shape" and "PosEmbed() cannot adapt it" in problem.message
    assert "give prefix_tokens=" in problem.message


def test_align_pairs_position_embeddings_of_another_size_and_adapts_them(tmp_path):
    from ports import TimmViT, tiny_vit

    hf = tiny_vit()  # transformers' ViT at 16 x 16 (a 4 x 4 grid)
    with torch.no_grad():
        hf.embeddings.position_embeddings.normal_()
    safetensors.torch.save_file(hf.state_dict(), str(tmp_path / "vit.safetensors"))
    model = TimmViT(32, 4, 3, 32, 2, 4, 64)  # another implementation, at 32 x 32 (8 x 8)
    with pytest.raises(sl.LoadError, match="pos_embed: no source tensor matches it"):
        sl.load(model, str(tmp_path / "vit.safetensors"), align=True)  # without adapt: unmatched
    report = sl.load(model, str(tmp_path / "vit.safetensors"), align=True, adapt=True)
    assert [(a.path, a.src_shape, a.dst_shape) for a in report.adapted] == [("pos_embed", (1, 17, 32), (1, 65, 32))]
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():  # transformers interpolates in its forward what structload adapted once
        expected = hf(images, interpolate_pos_encoding=True).last_hidden_state
        assert torch.allclose(model(images), expected, atol=1e-5)


# --- values: the published formulas and transformers' own interpolation --------------------------


def test_vit_pos_embed_equals_transformers_interpolate_pos_encoding(tmp_path):
    import transformers

    def vit(image):
        config = transformers.ViTConfig(
            image_size=image,
            patch_size=4,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
        )
        torch.manual_seed(0)
        return transformers.ViTModel(config, add_pooling_layer=False).eval()

    small = vit(16)
    with torch.no_grad():
        small.embeddings.position_embeddings.normal_()
    safetensors.torch.save_file(small.state_dict(), str(tmp_path / "vit.safetensors"))
    big = vit(40)  # 4 x 4 grid -> 10 x 10
    report = sl.load(big, str(tmp_path / "vit.safetensors"), adapt=True)
    assert [a.path for a in report.adapted] == ["embeddings.position_embeddings"]
    with torch.no_grad():
        reference = small.embeddings.interpolate_pos_encoding(torch.zeros(1, 101, 16), 40, 40)
    assert torch.allclose(big.embeddings.position_embeddings, reference, atol=1e-6, rtol=0)


def test_pos_embed_keeps_prefix_tokens_and_resamples_non_square_grids():
    src = randomized(SmallViT(image=32, registers=4), 2)  # 1 class + 4 registers + 4 x 4
    dst = SmallViT(image=(32, 56), registers=4)  # its patch_embed.grid_size says 4 x 7
    report = sl.load(dst, src.state_dict(), adapt=True)
    assert report.adapted[0].dst_shape == (1, 5 + 28, 16)
    expected = timm_resample_abs_pos_embed(src.pos_embed.detach(), (4, 7), num_prefix_tokens=5)
    assert torch.allclose(dst.pos_embed, expected, atol=1e-6, rtol=0)
    assert torch.equal(dst.pos_embed[:, :5], src.pos_embed[:, :5])


def test_pos_embed_options_grid_prefix_and_antialias():
    src = torch.randn(1, 2 + 36, 8)
    dst = {"pos_embed": torch.zeros(1, 2 + 12, 8)}
    adapter = PosEmbed(prefix_tokens=2, grid=(3, 4), antialias=True)
    sl.load(dst, {"pos_embed": src}, adapt={"pos_embed": adapter})
    expected = timm_resample_abs_pos_embed(src, (3, 4), num_prefix_tokens=2, antialias=True)
    assert torch.allclose(dst["pos_embed"], expected, atol=1e-6, rtol=0)
    assert repr(adapter) == "PosEmbed(prefix_tokens=2, grid=(3, 4), antialias=True)"


@pytest.mark.parametrize("channels", [1, 2, 4, 6])
def test_in_channels_reproduces_timm_adapt_input_conv(channels):
    src, dst = randomized(ConvNet(3), 3), ConvNet(channels)
    report = sl.load(dst, src.state_dict(), adapt=True)
    assert [(a.path, a.adapter) for a in report.adapted] == [("stem.0.weight", InChannels())]
    expected = timm_adapt_input_conv(channels, src.stem[0].weight.detach())
    assert torch.allclose(dst.stem[0].weight, expected, atol=1e-6, rtol=0)


def test_in_channels_from_two_source_channels_tiles_and_scales():
    src, dst = randomized(ConvNet(2), 4), ConvNet(3)
    sl.load(dst, src.state_dict(), adapt=True)
    w = src.stem[0].weight.detach()
    assert torch.allclose(dst.stem[0].weight, torch.cat([w, w[:, :1]], 1) * (2 / 3), atol=1e-6, rtol=0)


def test_in_channels_modes_keep_what_they_promise():
    src = randomized(ConvNet(3), 5).eval()
    src.stem[1].reset_running_stats()  # a variance must stay positive
    image = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected = src(image)
        repeated = ConvNet(6).eval()  # an input made of two copies gives the same output
        sl.load(repeated, src.state_dict(), adapt=True)
        assert torch.allclose(repeated(torch.cat([image, image], 1)), expected, atol=1e-5)
        grey = image[:, :1]
        summed = ConvNet(2).eval()  # a grey image in every channel gives the output of the grey image in RGB
        sl.load(summed, src.state_dict(), adapt={"stem": InChannels(mode="sum")})
        assert torch.allclose(summed(grey.expand(-1, 2, -1, -1)), src(grey.expand(-1, 3, -1, -1)), atol=1e-5)
        extra = ConvNet(4).eval()  # an added band starts with no effect
        sl.load(extra, src.state_dict(), adapt={"stem": InChannels(mode="zero")})
        assert torch.allclose(extra(torch.cat([image, torch.randn(2, 1, 8, 8)], 1)), expected, atol=1e-5)


def test_in_channels_takes_the_stem_only():
    class Deeper(ConvNet):
        def __init__(self, width):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(width, 8, 3, padding=1), nn.ReLU())

    src, dst = Deeper(8), Deeper(4)  # a body conv whose input channels differ: not a stem
    with pytest.raises(sl.LoadError) as info:
        sl.load(dst, src.state_dict(), adapt=True)
    assert [(p.kind, p.path) for p in info.value.problems] == [("shape", "body.0.weight")]


@pytest.mark.parametrize("new", [(12, 12), (6, 6), (8, 12)])
def test_patch_embed_reproduces_flexivit_resample_patch_embed(new):
    src, dst = randomized(SmallViT(image=48, patch=8), 6), SmallViT(image=48, patch=new[0])
    dst.patch_embed.proj = nn.Conv2d(3, 16, new, stride=new)
    dst.pos_embed = nn.Parameter(torch.zeros(1, 1 + (48 // new[0]) * (48 // new[1]), 16))
    pins = {"patch_embed": PatchEmbed(), "pos_embed": PosEmbed(grid=(48 // new[0], 48 // new[1]))}
    report = sl.load(dst, src.state_dict(), adapt=pins)
    assert {a.path for a in report.adapted} == {"patch_embed.proj.weight", "pos_embed"}
    expected = flexivit_resample_patch_embed(src.patch_embed.proj.weight.detach(), new)
    assert torch.allclose(dst.patch_embed.proj.weight, expected, atol=1e-5, rtol=0)


def test_patch_embed_keeps_the_embedding_of_a_resized_patch():
    kernel = torch.randn(4, 3, 4, 4)
    dst = {"patch_embed": {"weight": torch.zeros(4, 3, 6, 6)}}
    report = sl.load(dst, {"patch_embed": {"weight": kernel}}, adapt=True)
    assert report.adapted[0].adapter == PatchEmbed()
    patches = torch.randn(5, 3, 4, 4)
    resized = F.interpolate(patches, size=(6, 6), mode="bicubic", antialias=True)
    old = torch.einsum("nchw,ochw->no", patches, kernel)
    new = torch.einsum("nchw,ochw->no", resized, dst["patch_embed"]["weight"])
    assert torch.allclose(old, new, atol=1e-4)


def test_rel_pos_table_reproduces_swin_and_keeps_the_index_buffer():
    src, dst = randomized(SwinBlock(window=4), 7), SwinBlock(window=7)
    index = dst.attn.relative_position_index.clone()
    report = sl.load(dst, src.state_dict(), adapt=True)
    assert [(a.path, a.adapter) for a in report.adapted] == [("attn.relative_position_bias_table", RelPosTable())]
    assert report.ignored == ["attn.relative_position_index"] and report.ok
    expected = swin_resize_table(src.attn.relative_position_bias_table.detach(), 13 * 13)
    assert torch.allclose(dst.attn.relative_position_bias_table, expected, atol=1e-6, rtol=0)
    assert torch.equal(dst.attn.relative_position_index, index)
    pinned = sl.load(SwinBlock(window=7), src.state_dict(), adapt={"attn": RelPosTable()})  # a module pin
    assert pinned.ignored == ["attn.relative_position_index"] and pinned.ok


def test_rel_pos_table_of_transformers_swin_at_another_window():
    import transformers

    def swin(window):
        config = transformers.SwinConfig(
            image_size=32, patch_size=4, embed_dim=8, depths=[1], num_heads=[2], window_size=window
        )
        torch.manual_seed(0)
        return transformers.SwinModel(config, add_pooling_layer=False).eval()

    small, big = swin(2), swin(4)
    table = "encoder.layers.0.blocks.0.attention.relative_position_bias.relative_position_bias_table"
    index = big.get_submodule(table.rpartition(".")[0]).relative_position_index.clone()
    report = sl.load(big, small.state_dict(), adapt=True)
    assert [(a.path, a.src_shape, a.dst_shape) for a in report.adapted] == [(table, (9, 2), (49, 2))]
    expected = swin_resize_table(small.get_parameter(table).detach(), 49)
    assert torch.allclose(big.get_parameter(table), expected, atol=1e-6, rtol=0)
    assert torch.equal(big.get_submodule(table.rpartition(".")[0]).relative_position_index, index)
    with torch.no_grad():
        assert big(torch.randn(1, 3, 32, 32)).last_hidden_state.isfinite().all()


def test_rel_pos_table_reads_a_non_square_window_from_the_module():
    src, dst = randomized(WindowAttention(window=4), 8), WindowAttention(window=4)
    dst.window_size = (3, 5)
    dst.relative_position_bias_table = nn.Parameter(torch.zeros(5 * 9, 2))
    sl.load(dst, src.state_dict(), adapt=True, exclude="relative_position_index")
    table = src.relative_position_bias_table.detach().T.reshape(1, 2, 7, 7)
    expected = F.interpolate(table, size=(5, 9), mode="bicubic", align_corners=False).reshape(2, -1).T
    assert torch.allclose(dst.relative_position_bias_table, expected, atol=1e-6, rtol=0)


# --- vocabularies and heads --------------------------------------------------------------------


@pytest.mark.parametrize("init", ["mean", "zero", "keep"])
def test_resize_grows_a_tied_vocabulary_consistently(init):
    src, dst = randomized(TextModel(vocab=10), 9), TextModel(vocab=13)
    own = dst.tok_embeddings.weight[10:].detach().clone()
    report = sl.load(dst, src.state_dict(), adapt={"output": Resize(init=init)})  # a pin on one path of the tie
    assert dst.output.weight is dst.tok_embeddings.weight
    old = src.tok_embeddings.weight.detach()
    assert torch.equal(dst.tok_embeddings.weight[:10], old)
    new = {"mean": old.mean(0).expand(3, -1), "zero": torch.zeros(3, 6), "keep": own}[init]
    assert torch.allclose(dst.tok_embeddings.weight[10:], new, atol=1e-6, rtol=0)
    assert {a.path for a in report.adapted} == {"tok_embeddings.weight"} and report.ok


def test_resize_shrinks_and_needs_the_other_dims_equal():
    dst = {"w": torch.zeros(3, 4), "v": torch.zeros(3, 4)}
    src = {"w": torch.arange(20.0).reshape(5, 4), "v": torch.zeros(5, 5)}
    report = sl.load(dst, src, adapt=[Resize()], strict=False)
    assert torch.equal(dst["w"], src["w"][:3])
    [problem] = report.problems
    assert problem.path == "v" and "Resize() cannot adapt it: only dim 0 may differ" in problem.message


def test_resize_of_a_transformers_gpt2_vocabulary(tmp_path):
    import transformers

    def gpt2(vocab):
        config = transformers.GPT2Config(vocab_size=vocab, n_positions=16, n_embd=16, n_layer=1, n_head=2)
        torch.manual_seed(0)
        return transformers.GPT2LMHeadModel(config).eval()

    small = gpt2(50)
    small.save_pretrained(tmp_path / "gpt2")
    big = gpt2(53)
    report = sl.load(big, str(tmp_path / "gpt2"), adapt={"transformer.wte": Resize()})
    wte = small.transformer.wte.weight.detach()
    assert big.lm_head.weight is big.transformer.wte.weight
    assert torch.equal(big.transformer.wte.weight[:50], wte)
    assert torch.allclose(big.transformer.wte.weight[50:], wte.mean(0).expand(3, -1), atol=1e-6)
    assert [a.path for a in report.adapted] == ["transformer.wte.weight"]


def test_reinit_keeps_the_destination_head():
    src, dst = randomized(SmallViT(classes=1000), 10), SmallViT(classes=7)
    head = dst.head.weight.detach().clone()
    report = sl.load(dst, src.state_dict(), adapt={"head": Reinit()})
    assert torch.equal(dst.head.weight, head) and torch.equal(dst.norm.weight, src.norm.weight)
    assert [a.path for a in report.adapted] == ["head.weight", "head.bias"]


def test_reinit_on_meta_runs_reset_parameters():
    src = randomized(SmallViT(classes=1000), 11)
    with torch.device("meta"):
        dst = SmallViT(classes=7)
    torch.manual_seed(123)
    sl.load(dst, src.state_dict(), adapt={"head": Reinit(), "pos_embed": PosEmbed()})
    torch.manual_seed(123)
    reference = nn.Linear(16, 7)  # its constructor runs the same reset_parameters()
    assert not dst.head.weight.is_meta and torch.equal(dst.head.weight, reference.weight)
    assert torch.equal(dst.head.bias, reference.bias)


def test_reinit_on_meta_without_reset_parameters_is_a_problem():
    class Scale(nn.Module):
        def __init__(self, n):
            super().__init__()
            self.gain = nn.Parameter(torch.ones(n))

    with torch.device("meta"):
        dst = nn.Sequential(Scale(3))
    with pytest.raises(sl.LoadError) as info:
        sl.load(dst, {"0.gain": torch.ones(5)}, adapt=[Reinit()])
    assert "has no reset_parameters()" in info.value.problems[0].message


# --- the plan: R6, pins, composition, laziness, reports ------------------------------------------


def test_a_strict_load_with_one_unadaptable_mismatch_writes_nothing():
    src, dst = randomized(SmallViT(image=32, classes=5), 12), SmallViT(image=48, classes=9)
    before = snapshot(dst)
    with pytest.raises(sl.LoadError) as info:
        sl.load(dst, src.state_dict(), adapt=True)
    assert [p.path for p in info.value.problems] == ["head.weight", "head.bias"]
    assert [a.path for a in info.value.report.adapted] == ["pos_embed"] and not info.value.report.applied
    assert_unchanged(dst, before)


def test_a_pin_that_matches_nothing_is_a_pattern_problem():
    with pytest.raises(sl.LoadError) as info:
        sl.load(SmallViT(), SmallViT().state_dict(), adapt={"haed": Reinit()})
    [problem] = info.value.problems
    assert (problem.kind, problem.path) == ("pattern", "haed") and "did you mean 'head'" in problem.message


def test_bad_adapt_values_are_type_errors():
    for bad in ("yes", [PosEmbed, 1], {"head": "Reinit"}):
        with pytest.raises(TypeError, match="adapt="):
            sl.load(SmallViT(), SmallViT().state_dict(), adapt=bad)
    with pytest.raises(ValueError, match="Resize init"):
        Resize(init="random")


def test_adapters_compose_with_rename_and_convert():
    src = randomized(SmallViT(image=32), 13)
    state = {f"module.{k}": v for k, v in src.state_dict().items()}
    stem = torch.randn(3, 16)  # a linear stem saved as (in, out), JAX style

    class LinearStem(SmallViT):
        def __init__(self):
            super().__init__(image=48)
            self.patch_embed = nn.Linear(4, 16)

    del state["module.patch_embed.proj.weight"], state["module.patch_embed.proj.bias"]
    state["module.patch_embed.weight"], state["module.patch_embed.bias"] = stem, torch.zeros(16)
    dst = LinearStem()
    report = sl.load(
        dst,
        state,
        rename={r"^module\.": ""},
        convert=[Transpose("patch_embed.weight")],
        adapt={"patch_embed": InChannels(), "pos_embed": PosEmbed()},
    )
    assert torch.allclose(dst.patch_embed.weight, timm_like_repeat(stem.T, 4), atol=1e-6)
    assert {a.path for a in report.adapted} == {"patch_embed.weight", "pos_embed"}
    assert [c.path for c in report.converted] == ["patch_embed.weight"]


def timm_like_repeat(weight, channels):
    return torch.cat([weight, weight[:, :1]], 1) * (3 / channels)


def test_adapters_read_only_what_they_need_from_files(tmp_path, monkeypatch):
    table = torch.randn(100, 8)
    path = tmp_path / "vocab.safetensors"
    safetensors.torch.save_file({"embed.weight": table, "pos_embed": torch.randn(1, 17, 8)}, str(path))
    opened = sl.open(str(path))
    log = ReadLog(monkeypatch)
    dst = {"embed": {"weight": torch.zeros(30, 8)}, "pos_embed": torch.zeros(1, 37, 8)}
    sl.load(dst, opened, adapt={"embed": Resize()}, dry_run=True, strict=False)
    assert log.bytes_read() == 0  # planning reads nothing
    with pytest.raises(sl.LoadError):  # pos_embed is not pinned: a problem, so nothing is read or written
        sl.load(dst, opened, adapt={"embed": Resize()})
    assert log.bytes_read() == 0 and not dst["embed"]["weight"].any()
    sl.load(dst, opened, adapt={"embed": Resize()}, exclude="pos_embed")
    assert torch.equal(dst["embed"]["weight"], table[:30]) and log.bytes_read() == 30 * 8 * 4


def test_the_report_shows_what_was_adapted():
    src, dst = randomized(SmallViT(image=32), 14), SmallViT(image=48)
    report = sl.load(dst, src.state_dict(), adapt=True)
    assert str(report).startswith("SmallViT: 8 loaded, 1 adapted\n")
    assert "adapted pos_embed: (1, 17, 16) -> (1, 37, 16) by PosEmbed()" in str(report)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["adapted"] == [
        {"path": "pos_embed", "src_shape": [1, 17, 16], "dst_shape": [1, 37, 16], "adapter": "PosEmbed()"}
    ]
    from rich.console import Console

    console = Console(record=True, width=120)
    console.print(report)
    assert "adapted pos_embed: (1, 17, 16) -> (1, 37, 16) by PosEmbed()" in console.export_text()


def test_adapted_tensors_are_computed_under_mmap_and_the_rest_mapped(tmp_path):
    src = randomized(SmallViT(image=32), 15)
    safetensors.torch.save_file(src.state_dict(), str(tmp_path / "vit.safetensors"))
    with sl.init_empty_weights():
        dst = SmallViT(image=48)
    report = sl.load(dst, str(tmp_path / "vit.safetensors"), adapt=True, mmap=True)
    assert [a.path for a in report.adapted] == ["pos_embed"] and "pos_embed" not in report.mapped
    assert "head.weight" in report.mapped and torch.equal(dst.head.weight, src.head.weight)
    expected = timm_resample_abs_pos_embed(src.pos_embed.detach(), (6, 6))
    assert torch.allclose(dst.pos_embed, expected, atol=1e-6, rtol=0)


def test_resize_keep_on_meta_fills_new_rows_by_reset_parameters():
    src = randomized(TextModel(vocab=10), 16)
    with torch.device("meta"):
        dst = TextModel(vocab=13)
    torch.manual_seed(7)
    sl.load(dst, src.state_dict(), adapt={"tok_embeddings": Resize(init="keep")})
    torch.manual_seed(7)
    reference = nn.Embedding(13, 6)  # its constructor runs the same reset_parameters()
    assert dst.output.weight is dst.tok_embeddings.weight and not dst.output.weight.is_meta
    assert torch.equal(dst.tok_embeddings.weight[:10], src.tok_embeddings.weight)
    assert torch.equal(dst.tok_embeddings.weight[10:], reference.weight[10:])
