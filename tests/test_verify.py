"""Verified loads (API.md §12): loads that say ok and compute something else, caught by `sl.verify`
at exactly the module whose weights are wrong; the right mapping verifies with no false alarm.

References are transformers' classes from tiny configs or plain-torch rebuilds of the originals;
destinations are written independently (tests/ports.py, tests/traps.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from ports import MetaLlama, NanoGPT, SplitGPT, tiny_gpt2, tiny_llama
from traps import (
    TRANSFORMERS_TO_OPENAI_STYLE,
    ConvBNNet,
    FacenetONet,
    FacenetRNet,
    GatedFeedForward,
    OpenAIStyleTextCLIP,
    UserConvBN,
    crop_onet,
    crop_rnet,
    facenet_to_crop,
    halves,
    interleaved,
    keras_names,
    keras_to_user,
    reference_to_user,
    t5_to_user,
)

import structload as sl
from helpers import assert_unchanged, randomized, snapshot

IDS = torch.tensor([[1, 5, 9, 22, 40, 3, 7, 8], [2, 2, 60, 61, 62, 90, 4, 0]])
META_HINTS = {"*.w1": "*.gate_proj", "*.w3": "*.up_proj"}


@pytest.fixture(scope="module")
def gpt2():
    return tiny_gpt2()


@pytest.fixture(scope="module")
def llama():
    return tiny_llama()


def assert_caught(result: sl.Verification, path: str, *words: str) -> None:
    assert not result.ok
    divergence = result.first_divergence
    assert divergence is not None and divergence.path == path, str(result)
    for word in words:
        assert word in divergence.message, divergence.message


def assert_verified(result: sl.Verification) -> None:
    assert result.ok, str(result)
    assert result.first_divergence is None and result.compared


# --- the traps ---------------------------------------------------------------------------------


def test_gpt2_square_c_proj_without_transpose(gpt2):
    """The Transposes the shape errors ask for, and no more: ok, and attn.c_proj (square) is wrong."""
    model = NanoGPT(97, 16, 32, 2, 4)
    naive = [sl.convert.Transpose(f"transformer.h.*.{p}.weight") for p in ("attn.c_attn", "mlp.c_fc", "mlp.c_proj")]
    assert sl.load(model, gpt2, convert=naive).ok
    result = sl.verify(model, gpt2, IDS)
    assert_caught(result, "transformer.h.0.attn.c_proj", "transformer.h.0.attn.c_proj.weight (32, 32)", "Transpose")
    assert "With its square weight transposed it agrees" in result.first_divergence.message
    assert sl.load(model, gpt2, align=True).ok
    assert_verified(sl.verify(model, gpt2, IDS))


@pytest.mark.parametrize(
    ("reference", "user", "stages", "heads", "size"),
    [
        (FacenetRNet, crop_rnet, 3, {"dense5_1": "score", "dense5_2": "box"}, 24),
        (FacenetONet, crop_onet, 4, {"dense6_1": "score", "dense6_2": "box", "dense6_3": "landmarks"}, 48),
    ],
    ids=["rnet", "onet"],
)
def test_facenet_flatten_order_before_the_dense_layer(reference, user, stages, heads, size):
    torch.manual_seed(0)
    original, model = reference().eval(), user()  # their own initialisation: outputs of order one
    rename = facenet_to_crop(stages, heads)
    assert sl.load(model, original.state_dict(), rename=rename).ok  # names and shapes all fit
    images = torch.randn(2, 3, size, size)
    result = sl.verify(model, original, images, rename=rename)
    assert_caught(result, "fc", "flatten order", "fc.weight")
    assert result.first_divergence.inputs_reordered
    assert all(c.agree for c in result.compared if c.path.startswith("features."))
    channels, hidden = model.features[-1].num_parameters, model.fc.out_features
    side = int((model.fc.in_features // channels) ** 0.5)

    def to_chw(w):  # the original's (W, H, C) columns into nn.Flatten's (C, H, W)
        return w.view(hidden, side, side, channels).permute(0, 3, 2, 1).reshape(hidden, -1)

    fixed = sl.load(model, original.state_dict(), rename=rename, convert=[sl.convert.Apply("fc.weight", to_chw)])
    assert fixed.ok
    assert_verified(sl.verify(model, original, images, rename=rename))


def test_clip_square_text_projection_without_transpose():
    """OpenAI's CLIP stores text_projection as (width, embed) for ``x @ P``; ported into
    transformers' Linear without a Transpose it loads (square) and projects wrongly."""
    import transformers

    config = transformers.CLIPTextConfig(
        vocab_size=99, hidden_size=32, projection_dim=32, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=16,
    )  # fmt: skip
    torch.manual_seed(0)
    reference = randomized(transformers.CLIPTextModelWithProjection(config)).eval()
    openai = _openai_clip_layout(reference.state_dict(), layers=2)
    model = transformers.CLIPTextModelWithProjection(config)
    rename, split = _openai_to_transformers()
    assert sl.load(model, openai, rename=rename, convert=split).ok
    ids = torch.tensor([[0, 5, 7, 9, 2, 1], [0, 11, 2, 1, 1, 1]])
    result = sl.verify(model, reference, ids)
    assert_caught(result, "text_projection", "text_projection.weight (32, 32)", "Transpose")
    fix = [*split, sl.convert.Transpose("text_projection.weight")]
    assert sl.load(model, openai, rename=rename, convert=fix).ok
    assert_verified(sl.verify(model, reference, ids))


def test_clip_text_projection_from_openai_layout_into_a_clip_written_by_hand():
    """The same trap into a CLIP text encoder written in OpenAI's style, whose projection is a
    Linear named proj: OpenAI's checkpoint renamed onto it loads ok, and proj is wrong."""
    import transformers

    config = transformers.CLIPTextConfig(
        vocab_size=99, hidden_size=32, projection_dim=32, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=16, eos_token_id=2,
    )  # fmt: skip
    torch.manual_seed(0)
    reference = randomized(transformers.CLIPTextModelWithProjection(config)).eval()
    openai = _openai_clip_layout(reference.state_dict(), layers=2)
    model = OpenAIStyleTextCLIP(99, 32, 2, 4, 16, 37, 32)
    names = {r"^transformer\.resblocks\.": "resblocks.", r"^text_projection$": "proj.weight"}
    assert sl.load(model, openai, rename=names).ok
    ids = torch.tensor([[0, 5, 7, 9, 2, 1], [0, 11, 2, 1, 1, 1]])
    result = sl.verify(model, reference, ids, rename=TRANSFORMERS_TO_OPENAI_STYLE)
    assert_caught(result, "proj", "proj.weight (32, 32)", "With its square weight transposed it agrees")
    assert result.first_divergence.reference_path == "text_projection"
    assert sl.load(model, openai, rename=names, convert=[sl.convert.Transpose("proj.weight")]).ok
    assert_verified(sl.verify(model, reference, ids, rename=TRANSFORMERS_TO_OPENAI_STYLE))


def _openai_clip_layout(state: dict, layers: int) -> dict:
    """transformers' CLIP text state in OpenAI's layout: fused in_proj, text_projection as (in, out)."""
    out = {
        "token_embedding.weight": state["text_model.embeddings.token_embedding.weight"],
        "positional_embedding": state["text_model.embeddings.position_embedding.weight"],
        "ln_final.weight": state["text_model.final_layer_norm.weight"],
        "ln_final.bias": state["text_model.final_layer_norm.bias"],
        "text_projection": state["text_projection.weight"].T.contiguous(),
    }
    for i in range(layers):
        hf, oa = f"text_model.encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            parts = [state[f"{hf}self_attn.{p}_proj.{kind}"] for p in "qkv"]
            out[f"{oa}attn.in_proj_{kind}"] = torch.cat(parts)
            pairs = [("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"), ("layer_norm2", "ln_2")]
            pairs += [("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")]
            for a, b in pairs:
                out[f"{oa}{b}.{kind}"] = state[f"{hf}{a}.{kind}"]
    return out


def _openai_to_transformers():
    """The user's mapping of OpenAI's CLIP text names onto transformers' (no Transpose: the trap)."""
    block = r"text_model.encoder.layers.\1."
    rename = {
        r"^token_embedding\.": "text_model.embeddings.token_embedding.",
        r"^positional_embedding$": "text_model.embeddings.position_embedding.weight",
        r"^ln_final\.": "text_model.final_layer_norm.",
        r"^text_projection$": "text_projection.weight",
        r"^transformer\.resblocks\.(\d+)\.attn\.in_proj_": block + "self_attn.in_proj.",
        r"^transformer\.resblocks\.(\d+)\.attn\.out_proj\.": block + "self_attn.out_proj.",
        r"^transformer\.resblocks\.(\d+)\.ln_(\d)\.": block + r"layer_norm\2.",
        r"^transformer\.resblocks\.(\d+)\.mlp\.c_fc\.": block + "mlp.fc1.",
        r"^transformer\.resblocks\.(\d+)\.mlp\.c_proj\.": block + "mlp.fc2.",
    }
    split = [
        sl.convert.Split(
            f"text_model.encoder.layers.*.self_attn.in_proj.{kind}",
            into=[f"text_model.encoder.layers.{{0}}.self_attn.{p}_proj.{kind}" for p in "qkv"],
        )
        for kind in ("weight", "bias")
    ]
    return rename, split


def _t5():
    import transformers

    config = transformers.T5Config(
        vocab_size=99, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
        feed_forward_proj="gated-gelu", dropout_rate=0.0,
    )  # fmt: skip
    torch.manual_seed(0)
    return transformers.T5EncoderModel(config).eval(), config


def test_t5_v1_1_wi_0_and_wi_1_swapped():
    """T5 v1.1's gated FFN: wi_0 (the gelu gate) and wi_1 (linear) have one shape; a mapping that
    swaps them loads ok. By path, the first wrong module is wi_0; through the swapping mapping itself,
    each agrees with what it was loaded from and the divergence is their parent, naming both."""
    import transformers

    reference, config = _t5()
    model = transformers.T5EncoderModel(config)

    def swapped(path: str) -> str:
        return path.replace("wi_0", "@").replace("wi_1", "wi_0").replace("@", "wi_1")

    assert sl.load(model, reference, rename=swapped).ok
    ids = IDS % 99
    ffn = "encoder.block.0.layer.1.DenseReluDense"
    assert_caught(sl.verify(model, reference, ids), f"{ffn}.wi_0", f"{ffn}.wi_0.weight (48, 32)", "gate and up")
    through_mapping = sl.verify(model, reference, ids, rename=swapped)
    assert_caught(through_mapping, ffn, "swapped", f"'{ffn}.wi_0' was loaded from '{ffn}.wi_1'")
    assert sl.load(model, reference).ok
    assert_verified(sl.verify(model, reference, ids))


def test_t5_v1_1_wi_0_and_wi_1_swapped_into_a_feed_forward_written_by_hand():
    """transformers' T5LayerFF (v1.1, gated) as the reference, a user's own feed-forward as the
    destination, and the slip of reading wi_0 as the up projection: ok, and the gate is wrong."""
    from transformers.models.t5.modeling_t5 import T5LayerFF

    _, config = _t5()
    torch.manual_seed(1)
    reference = randomized(T5LayerFF(config)).eval()
    model = GatedFeedForward(32, 48)
    x = torch.randn(2, 5, 32)
    assert sl.load(model, reference, rename=t5_to_user(slip=True)).ok
    result = sl.verify(model, reference, x, rename=t5_to_user(slip=False))
    assert_caught(result, "gate", "gate.weight (48, 32)", "gate and up")
    assert result.first_divergence.reference_path == "DenseReluDense.wi_0"
    through_slip = sl.verify(model, reference, x, rename=t5_to_user(slip=True))
    assert_caught(through_slip, "", "'gate' was loaded from 'DenseReluDense.wi_1'", "swapped")
    assert sl.load(model, reference, rename=t5_to_user(slip=False)).ok
    assert_verified(sl.verify(model, reference, x, rename=t5_to_user(slip=False)))


def test_a_rotary_permutation_left_out(llama):
    """Meta's checkpoints keep each head's q / k rows interleaved; a rotate-half model needs them
    permuted (as transformers' conversion script does). Left out, the load is ok and wq is wrong."""
    state = MetaLlama(97, 32, 2, 4, 2, 64).state_dict()
    mapping = sl.align(MetaLlama(97, 32, 2, 4, 2, 64), llama, hints=META_HINTS)
    meta_checkpoint = {}
    for match in mapping.matched:  # transformers' weights written out in Meta's names and layout
        tensor = llama.state_dict()[match.src[0]]
        heads = 4 if match.dst.endswith("wq.weight") else 2
        is_qk = match.dst.endswith(("wq.weight", "wk.weight"))
        meta_checkpoint[match.dst] = interleaved(tensor, heads) if is_qk else tensor
    assert set(meta_checkpoint) == set(state)
    model = MetaLlama(97, 32, 2, 4, 2, 64)
    assert sl.load(model, meta_checkpoint).ok
    result = sl.verify(model, llama, IDS, align=mapping)
    assert_caught(result, "layers.0.attention.wq", "rotary layout", "another order")
    assert result.first_divergence.reference_path == "model.layers.0.self_attn.q_proj"
    permute = [
        sl.convert.Apply("layers.*.attention.wq.weight", lambda w: halves(w, 4)),
        sl.convert.Apply("layers.*.attention.wk.weight", lambda w: halves(w, 2)),
    ]
    assert sl.load(model, meta_checkpoint, convert=permute).ok
    assert_verified(sl.verify(model, llama, IDS, align=mapping))


def test_q_and_k_of_equal_shape_swapped():
    hf = tiny_llama(kv_heads=4)  # k as large as q
    model = MetaLlama(97, 32, 2, 4, 4, 64)
    wrong = {**META_HINTS, "*.wq": "*.k_proj", "*.wk": "*.q_proj"}
    assert sl.load(model, hf, align={"hints": wrong}).ok
    right = sl.align(model, hf, hints=META_HINTS)
    assert_caught(sl.verify(model, hf, IDS, align=right), "layers.0.attention.wq", "q and k")
    through_mapping = sl.verify(model, hf, IDS, align={"hints": wrong})
    assert_caught(through_mapping, "layers.0.attention", "swapped", "'layers.0.attention.wq' was loaded from")
    assert sl.load(model, hf, align=right).ok
    assert_verified(sl.verify(model, hf, IDS, align=right))


def test_fused_parts_concatenated_in_another_order(gpt2):
    """A checkpoint with separate q, k, v fused by hand into nanoGPT's c_attn as k, q, v."""
    split = {}
    for path, tensor in gpt2.state_dict().items():
        if ".attn.c_attn." in path:
            parts = (tensor.T if tensor.dim() == 2 else tensor).chunk(3)
            for name, part in zip("qkv", parts):
                split[path.replace("c_attn", name)] = part
        elif path.endswith(("mlp.c_fc.weight", "mlp.c_proj.weight", "attn.c_proj.weight")):
            split[path] = tensor.T
        else:
            split[path] = tensor

    def fuse(order: str) -> list:
        return [
            sl.convert.Concat(
                [f"transformer.h.*.attn.{p}.{kind}" for p in order], f"transformer.h.{{0}}.attn.c_attn.{kind}"
            )
            for kind in ("weight", "bias")
        ]

    model = NanoGPT(97, 16, 32, 2, 4)
    assert sl.load(model, split, convert=fuse("kqv")).ok
    result = sl.verify(model, gpt2, IDS)
    assert_caught(result, "transformer.h.0.attn.c_attn", "fused parts", "another order")
    assert sl.load(model, split, convert=fuse("qkv")).ok
    assert_verified(sl.verify(model, gpt2, IDS))


def test_batch_norm_statistics_swapped():
    torch.manual_seed(0)
    reference = randomized(ConvBNNet())
    with torch.no_grad():
        for bn in (reference.bn1, reference.bn2):
            bn.running_var.abs_().add_(0.5)
            bn.running_mean.abs_()
    keras = keras_names(reference.state_dict())
    model = UserConvBN()
    images = torch.randn(2, 3, 10, 10)
    assert sl.load(model, keras, rename=keras_to_user(swap_statistics=True)).ok
    result = sl.verify(model, reference, images, rename=reference_to_user)
    assert_caught(result, "stages.0.1", "running_mean", "stages.0.1.running_var (8,)")
    assert result.first_divergence.reference_path == "bn1"
    assert sl.load(model, keras, rename=keras_to_user(swap_statistics=False)).ok
    assert_verified(sl.verify(model, reference, images, rename=reference_to_user))


# --- alignment with a reference as evidence ----------------------------------------------------


def test_llama_into_meta_layout_resolved_by_the_reference(llama):
    model = MetaLlama(97, 32, 2, 4, 2, 64)
    before = snapshot(model)
    plain = sl.align(model, llama)
    assert [set(a.dst) for a in plain.ambiguous] == [
        {"layers.*.feed_forward.w1.weight", "layers.*.feed_forward.w3.weight"}
    ]
    alignment = sl.align(model, llama, reference=(llama, (IDS,)))
    assert alignment.ok, alignment.code()
    assert_unchanged(model, before)  # the discarded assignment was tried on a scratch copy
    w1 = next(m for m in alignment.matched if m.dst == "layers.1.feed_forward.w1.weight")
    assert w1.src == ("model.layers.1.mlp.gate_proj.weight",)
    assert "verified against the reference" in w1.evidence
    assert sl.load(model, llama, align={"reference": (llama, (IDS,))}).ok
    with torch.no_grad():
        assert torch.equal(model(IDS), llama(IDS).logits)


def test_a_destination_built_on_meta_is_aligned_against_the_reference_and_stays_on_meta(llama):
    with sl.init_empty_weights():
        model = MetaLlama(97, 32, 2, 4, 2, 64)
    alignment = sl.align(model, llama, reference=(llama, IDS))
    assert alignment.ok, alignment.code()
    assert all(p.is_meta for p in model.parameters())  # the candidates ran on scratch copies
    assert sl.load(model, llama, align=alignment).ok
    with torch.no_grad():
        assert torch.equal(model(IDS), llama(IDS).logits)


def test_two_agreeing_assignments_stay_ambiguous():
    hf = tiny_llama()
    with torch.no_grad():
        for layer in hf.model.layers:  # gate and up equal: either assignment computes the same
            layer.mlp.up_proj.weight.copy_(layer.mlp.gate_proj.weight)
    model = MetaLlama(97, 32, 2, 4, 2, 64)
    before = snapshot(model)
    alignment = sl.align(model, hf, reference=(hf, (IDS,)))
    assert not alignment.ok
    [ambiguity] = alignment.ambiguous
    assert "2 of 2 assignments agree with the reference" in ambiguity.reason
    with pytest.raises(sl.LoadError) as info:
        sl.load(model, hf, align={"reference": (hf, IDS)})
    assert info.value.problems[0].kind == "ambiguous"
    assert_unchanged(model, before)


# --- how it runs and what it reports -----------------------------------------------------------


def test_outputs_of_every_kind_are_compared_leaf_by_leaf_and_none_is_skipped():
    from dataclasses import dataclass

    @dataclass
    class Out:
        main: torch.Tensor
        extra: torch.Tensor | None

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(4, 4)

        def forward(self, x):
            y = self.proj(x)
            return {"pair": (y, None), "record": Out(y * 2, None), "label": "not a tensor"}

    torch.manual_seed(0)
    reference, model = Head(), Head()
    sl.load(model, reference)
    x = torch.randn(2, 4)
    assert_verified(sl.verify(model, reference, x))
    with torch.no_grad():
        model.proj.bias[0] += 1.0
    result = sl.verify(model, reference, x)
    assert_caught(result, "proj")
    [root] = [c for c in result.compared if c.path == ""]
    assert not root.agree and root.max_abs == pytest.approx(2.0)


def test_training_mode_is_restored_and_no_gradients_are_recorded(gpt2):
    model = NanoGPT(97, 16, 32, 2, 4)
    sl.load(model, gpt2, align=True)
    model.train()
    model.transformer.h[1].eval()
    gpt2.train()
    try:
        seen = []
        handle = model.transformer.h[0].register_forward_hook(
            lambda m, a, out: seen.append((m.training, out.requires_grad))
        )
        assert sl.verify(model, gpt2, IDS).ok
        handle.remove()
        assert seen == [(False, False)]
        assert model.training and model.transformer.h[0].training and not model.transformer.h[1].training
        assert gpt2.training
    finally:
        gpt2.eval()


def test_modules_that_ran_on_one_side_only_are_listed(gpt2):
    model = NanoGPT(97, 16, 32, 2, 4)
    sl.load(model, gpt2, align=True)
    result = sl.verify(model, gpt2, IDS)
    only_reference = {u.path for u in result.unpaired if u.side == "reference"}
    assert {"transformer", "transformer.h.0.mlp.act", "transformer.drop"} <= only_reference
    assert not [u for u in result.unpaired if u.side == "model"]
    assert {c.path for c in result.compared} >= {"", "transformer.h.0.attn.c_attn", "lm_head"}


@pytest.mark.parametrize("destination", ["nanogpt", "splitgpt"])
def test_the_reference_keeps_only_what_is_compared_now(gpt2, monkeypatch, destination):
    """Memory: the reference hands over one module's outputs at a time, also when a module of the
    model is paired but never called (SplitGPT's mlp Sequential, whose layers it calls directly)."""
    from structload._verify import _lockstep

    runs = []
    original = _lockstep.Lockstep.run

    def spy(self, *args):
        runs.append(self)
        return original(self, *args)

    monkeypatch.setattr(_lockstep.Lockstep, "run", spy)
    model = NanoGPT(97, 16, 32, 2, 4) if destination == "nanogpt" else SplitGPT(97, 16, 32, 2, 4)
    alignment = sl.align(model, gpt2)
    sl.load(model, gpt2, align=alignment)
    result = sl.verify(model, gpt2, IDS, align=alignment)
    assert result.ok and len(result.compared) > 15
    assert runs[0].peak_buffered == 1
    assert ("reference", "transformer.h.0.mlp") in result.unpaired or destination == "nanogpt"


def test_an_error_in_either_model_is_raised_and_nothing_is_left_running(gpt2):
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            raise RuntimeError("the reference cannot run this")

    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(RuntimeError, match="cannot run this"):
        sl.verify(nn.Sequential(Broken()), model, torch.randn(1, 4))
    with pytest.raises(RuntimeError, match="cannot run this"):
        sl.verify(model, nn.Sequential(Broken()), torch.randn(1, 4))
    assert model.training  # restored after the failure
    assert sl.verify(model, model, torch.randn(1, 4)).ok  # one module as both sides


def test_text_and_rich_drawings(gpt2):
    from rich.console import Console

    model = NanoGPT(97, 16, 32, 2, 4)
    naive = [sl.convert.Transpose(f"transformer.h.*.{p}.weight") for p in ("attn.c_attn", "mlp.c_fc", "mlp.c_proj")]
    sl.load(model, gpt2, convert=naive)
    result = sl.verify(model, gpt2, IDS)
    text = str(result)
    assert text.splitlines()[0].startswith("verification: 23 modules compared, 19 disagree")
    assert "first divergence at transformer.h.0.attn.c_proj: max abs error" in text
    assert "ran in the reference only: transformer.drop" in text
    console = Console(record=True, width=200)
    console.print(result)
    drawn = console.export_text()
    assert "first divergence at transformer.h.0.attn.c_proj" in drawn and "max abs" in drawn
    data = result.to_dict()
    assert data["ok"] is False and data["first_divergence"]["path"] == "transformer.h.0.attn.c_proj"


def test_a_difference_from_a_module_that_ran_in_the_model_only_is_named_at_its_parent():
    from collections import OrderedDict

    class Half(nn.Module):  # no tensors, no counterpart: ran in the model only
        def forward(self, x):
            return x / 2

    torch.manual_seed(0)
    reference = nn.Sequential(OrderedDict(fc1=nn.Linear(4, 4), fc2=nn.Linear(4, 4)))
    model = nn.Sequential(OrderedDict(fc1=nn.Linear(4, 4), halve=Half(), fc2=nn.Linear(4, 4)))
    assert sl.load(model, reference).ok
    result = sl.verify(model, reference, torch.randn(2, 4))
    assert_caught(result, "", "fc2 disagree only because their inputs already do", "ran in the model only (halve)")
    assert [c.path for c in result.compared if not c.agree] == ["fc2", ""]
    assert result.unpaired == [sl._verify.Unpaired("model", "halve")]


def test_a_model_left_on_meta_or_not_a_module_is_a_clear_error():
    with sl.init_empty_weights():
        empty = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(ValueError, match=r"the model's '0.weight' is on the meta device; load its weights first"):
        sl.verify(empty, nn.Sequential(nn.Linear(4, 4)), torch.randn(1, 4))
    with pytest.raises(TypeError, match="the reference must be a torch.nn.Module, got dict"):
        sl.verify(nn.Linear(4, 4), {"weight": torch.ones(4, 4)}, torch.randn(1, 4))


class TwoLayers(nn.Module):
    """A user's own naming of nn.Sequential(Linear, ReLU, Linear): fc1, fc2 and a functional relu."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


SEQUENTIAL_TO_TWO_LAYERS = {r"^0\.": "fc1.", r"^2\.": "fc2."}


def test_a_rename_key_that_renames_nothing_is_a_pattern_problem_and_not_ok():
    torch.manual_seed(0)
    reference = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    model = TwoLayers()
    assert sl.load(model, reference, rename=SEQUENTIAL_TO_TWO_LAYERS).ok
    x = torch.randn(3, 4)
    assert_verified(sl.verify(model, reference, x, rename=SEQUENTIAL_TO_TWO_LAYERS))
    typo = {**SEQUENTIAL_TO_TWO_LAYERS, r"^layers\.": ""}
    result = sl.verify(model, reference, x, rename=typo)
    assert all(c.agree for c in result.compared) and not result.ok  # every pair agrees, the request is wrong
    [problem] = result.problems
    assert (problem.kind, problem.path) == ("pattern", r"^layers\.")
    assert problem.message == r"rename pattern '^layers\.' matches no path of the reference"
    assert r"^layers\.: rename pattern" in str(result) and result.to_dict()["problems"][0]["kind"] == "pattern"
    optional = {**SEQUENTIAL_TO_TWO_LAYERS, sl.optional(r"^layers\."): ""}  # marked optional: no problem
    assert sl.verify(model, reference, x, rename=optional).ok


def test_a_divergence_whose_submodules_did_not_pair_names_them_not_only_the_root():
    torch.manual_seed(0)
    reference = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    model = TwoLayers()
    state = reference.state_dict()
    state["0.weight"] = state["0.weight"].T  # square: loads without a shape error
    assert sl.load(model, state, rename=SEQUENTIAL_TO_TWO_LAYERS).ok
    result = sl.verify(model, reference, torch.randn(3, 4))  # no rename=: only the roots pair
    assert_caught(result, "", "in the model only: fc1, fc2; in the reference only: 0, 1, 2", "rename=")
    assert "It holds no weights" not in result.first_divergence.message  # not blamed on the root's own code
    mapped = sl.verify(model, reference, torch.randn(3, 4), rename=SEQUENTIAL_TO_TWO_LAYERS)
    assert_caught(mapped, "fc1", "With its square weight transposed it agrees")
