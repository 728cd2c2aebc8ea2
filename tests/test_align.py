"""Structural alignment (API.md §7): ports between implementations with no hand-written mapping,
checked by comparing forward outputs with the original's; traps where a naive matcher would swap."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from align_check import code_loads_what_align_loads  # noqa: F401  (every alignment's code() is executed)
from ports import (
    FusedLlama,
    MetaLlama,
    NanoGPT,
    ScratchBert,
    SplitGPT,
    TimmViT,
    logits_close,
    tiny_bert,
    tiny_gpt2,
    tiny_llama,
    tiny_vit,
)

import structload as sl
from helpers import assert_unchanged, snapshot

IDS = torch.tensor([[1, 5, 9, 22, 40, 3, 7, 8], [2, 2, 60, 61, 62, 90, 4, 0]])


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    model = tiny_gpt2()
    folder = tmp_path_factory.mktemp("gpt2")
    model.save_pretrained(folder)
    with torch.no_grad():
        expected = model(IDS).logits
    return folder, expected, model


def test_gpt2_into_nanogpt_with_no_mapping(gpt2):
    folder, expected, _ = gpt2
    model = NanoGPT(97, 16, 32, 2, 4)
    report = sl.load(model, str(folder), align=True)
    assert report.ok
    with torch.no_grad():
        assert logits_close(model(IDS), expected)


def test_the_square_trap_fixing_only_the_shape_errors_loads_ok_and_computes_something_else(gpt2):
    """GPT-2's attn.c_proj is square: a user who adds exactly the Transposes the shape errors ask
    for gets report.ok and other logits; the alignment transposes it by the sibling rule."""
    folder, expected, _ = gpt2
    model = NanoGPT(97, 16, 32, 2, 4)
    with pytest.raises(sl.LoadError) as info:
        sl.load(model, str(folder))
    shape_paths = {p.path.split(".", 3)[-1] for p in info.value.problems if p.kind == "shape"}
    assert shape_paths == {"attn.c_attn.weight", "mlp.c_fc.weight", "mlp.c_proj.weight"}
    naive = [sl.convert.Transpose(f"transformer.h.*.{p}") for p in sorted(shape_paths)]
    assert sl.load(model, str(folder), convert=naive).ok
    with torch.no_grad():
        assert not logits_close(model(IDS), expected, atol=1e-2)  # ok, and wrong
    alignment = sl.align(model, str(folder))
    [square] = [m for m in alignment.matched if m.dst == "transformer.h.0.attn.c_proj.weight"]
    assert any("sibling layout" in e for e in square.evidence)
    assert sl.load(model, str(folder), rename=alignment.rename, convert=alignment.convert).ok
    with torch.no_grad():
        assert logits_close(model(IDS), expected)


def test_gpt2_into_separate_qkv_with_other_names(gpt2):
    folder, expected, _ = gpt2
    model = SplitGPT(97, 16, 32, 2, 4)
    alignment = sl.align(model, str(folder))
    assert alignment.ok, alignment.code()
    block_rules = [p for p in alignment.rename if "(\\d+)" in p]
    assert len(block_rules) <= 8  # one per module pattern, not one per tensor (2 blocks x 12 tensors)
    assert sl.load(model, str(folder), align=alignment).ok
    with torch.no_grad():
        assert logits_close(model(IDS), expected)


def test_code_is_runnable_python_that_loads_the_same(gpt2):
    folder, expected, _ = gpt2
    alignment = sl.align(SplitGPT(97, 16, 32, 2, 4), str(folder))
    namespace: dict = {}
    exec(alignment.code(), namespace)
    model = SplitGPT(97, 16, 32, 2, 4)
    assert sl.load(model, str(folder), rename=namespace["rename"], convert=namespace["convert"]).ok
    with torch.no_grad():
        assert logits_close(model(IDS), expected)


def test_exporting_back_into_the_reference_implementation(gpt2):
    folder, expected, _ = gpt2
    custom = SplitGPT(97, 16, 32, 2, 4)
    sl.load(custom, str(folder), align=True)
    fresh = tiny_gpt2()
    with torch.no_grad():
        for p in fresh.parameters():
            p.zero_()
    report = sl.load(fresh, custom, align=True)  # a module is a source: Concat and Transpose the other way
    assert report.ok
    with torch.no_grad():
        assert logits_close(fresh(IDS).logits, expected)


def test_meta_w1_w3_are_ambiguous_until_pinned():
    hf = tiny_llama()
    with torch.no_grad():
        expected = hf(IDS).logits
    model = MetaLlama(97, 32, 2, 4, 2, 64)
    before = snapshot(model)
    alignment = sl.align(model, hf)
    assert not alignment.ok
    [ambiguity] = alignment.ambiguous
    assert set(ambiguity.dst) == {"layers.*.feed_forward.w1.weight", "layers.*.feed_forward.w3.weight"}
    assert "do not say which" in ambiguity.reason
    with pytest.raises(sl.LoadError) as info:
        sl.load(model, hf, align=True)
    assert info.value.problems[0].kind == "ambiguous" and "rename = {" in str(info.value)
    assert_unchanged(model, before)
    hints = {"*.w1": "*.gate_proj", "*.w3": "*.up_proj"}
    assert sl.load(model, hf, align={"hints": hints}).ok
    with torch.no_grad():
        assert logits_close(model(IDS), expected, atol=1e-5)


def test_sorted_keys_give_no_order_evidence_and_same_shapes_are_not_swapped():
    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.alpha, self.beta = nn.Linear(4, 4), nn.Linear(4, 4)

    src = {
        "zeta.weight": torch.ones(4, 4),
        "zeta.bias": torch.ones(4),
        "eta.weight": torch.zeros(4, 4),
        "eta.bias": torch.zeros(4),
    }
    dst = Pair()
    before = snapshot(dst)
    alignment = sl.align(dst, src)
    assert alignment.matched == [] and len(alignment.ambiguous) == 2
    with pytest.raises(sl.LoadError):
        sl.load(dst, src, align=True)
    assert_unchanged(dst, before)
    assert sl.load(dst, src, align={"hints": {"alpha": "zeta", "beta": "eta"}}).ok
    assert torch.equal(dst.alpha.weight, torch.ones(4, 4))


def test_different_depths_are_a_clear_error_with_both_counts(gpt2):
    folder, _, _ = gpt2
    model = SplitGPT(97, 16, 32, 3, 4)
    before = snapshot(model)
    with pytest.raises(sl.LoadError) as info:
        sl.load(model, str(folder), align=True)
    text = str(info.value)
    assert "'blocks' has 3 entries" in text and "'transformer.h' has 2" in text
    assert_unchanged(model, before)


def test_align_reads_no_tensor_data(gpt2, monkeypatch):
    folder, _, _ = gpt2
    from structload.sources._io import local as _local

    reads = []
    original = _local.LocalFile.read_into
    monkeypatch.setattr(_local.LocalFile, "read_into", lambda self, b, o: (reads.append(len(b)), original(self, b, o)))
    sl.align(SplitGPT(97, 16, 32, 2, 4), str(folder))
    assert sum(reads) < 64 << 10  # the header only


def test_a_gqa_model_into_fused_qkv_and_gate_up(tmp_path):
    hf = tiny_llama(kv_heads=2)  # k and v are half the size of q
    hf.save_pretrained(tmp_path / "llama")
    with torch.no_grad():
        expected = hf(IDS).logits
    model = FusedLlama(97, 32, 2, 4, 2, 64)
    alignment = sl.align(model, str(tmp_path / "llama"))
    assert alignment.ok, alignment.code()
    concat = [c for c in alignment.convert if type(c).__name__ == "Concat"]
    assert len(concat) == 2  # qkv and gate_up, one converter each for every block
    assert sl.load(model, str(tmp_path / "llama"), align=alignment).ok
    with torch.no_grad():
        assert logits_close(model(IDS), expected, atol=1e-5)
    back = tiny_llama(kv_heads=2)
    with torch.no_grad():
        for p in back.parameters():
            p.zero_()
    assert sl.load(back, model, align=True).ok  # and back, splitting with the GQA sizes
    with torch.no_grad():
        assert logits_close(back(IDS).logits, expected, atol=1e-5)


def test_bert_into_a_from_scratch_bert(tmp_path):
    hf = tiny_bert()
    hf.save_pretrained(tmp_path / "bert")
    with torch.no_grad():
        expected = hf(IDS).last_hidden_state
    model = ScratchBert(97, 16, 32, 2, 4, 64)
    report = sl.load(model, str(tmp_path / "bert"), align=True)
    assert report.ok
    with torch.no_grad():
        assert logits_close(model(IDS), expected)


def test_vit_into_a_timm_style_vit_with_fused_qkv(tmp_path):
    hf = tiny_vit()
    hf.save_pretrained(tmp_path / "vit")
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = hf(images).last_hidden_state
    model = TimmViT(16, 4, 3, 32, 2, 4, 64)
    alignment = sl.align(model, str(tmp_path / "vit"))
    assert alignment.ok, alignment.code()
    assert sl.load(model, str(tmp_path / "vit"), align=alignment).ok
    with torch.no_grad():
        assert logits_close(model(images), expected)


def test_plain_load_says_what_transposed_shapes_mean_for_square_ones(gpt2):
    folder, _, _ = gpt2
    with pytest.raises(sl.LoadError) as info:
        sl.load(NanoGPT(97, 16, 32, 2, 4), str(folder))
    shape = [p for p in info.value.problems if p.kind == "shape"]
    assert shape and all("square matrices of the same role need the same" in p.message for p in shape)
    assert all("align=True" in p.message for p in shape)


def test_a_depth_mismatch_names_both_counts_in_both_directions(gpt2):
    folder, _, _ = gpt2
    short = NanoGPT(97, 16, 32, 1, 4)  # destination 1 block, source 2
    report = sl.load(short, str(folder), strict=False)
    [problem] = [p for p in report.problems if p.path == "transformer.h"]
    assert problem.message.startswith("destination has 1 entries, source has 2; 1 unexpected in source")
    long = NanoGPT(97, 16, 32, 3, 4)  # destination 3 blocks, source 2
    report = sl.load(long, str(folder), strict=False)
    [problem] = [p for p in report.problems if p.path == "transformer.h"]
    assert problem.message.startswith("destination has 3 entries, source has 2; 2 missing in source")


def test_source_entries_for_non_persistent_buffers_are_ignored_and_options_apply():
    class Embeddings(nn.Module):
        def __init__(self):
            super().__init__()
            self.word = nn.Embedding(10, 4)
            self.head = nn.Linear(4, 3)
            self.register_buffer("position_ids", torch.arange(8), persistent=False)

    src = {"module.word.weight": torch.ones(10, 4), "module.position_ids": torch.arange(8)}
    alignment = sl.align(Embeddings(), src, rename={r"^module\.": ""}, exclude="head")
    assert alignment.ok and alignment.ignored == ["position_ids"]
    assert alignment.rename == {r"^module\.": ""}  # the user's rename, merged; nothing else needed
    report = sl.load(Embeddings(), src, align=alignment, exclude="head", rename=alignment.rename)
    assert report.ok and report.ignored == ["position_ids"]
