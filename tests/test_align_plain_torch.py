"""Alignment on implementations nobody here wrote (API.md §11): destinations written in plain torch
as a porting user writes them, against facenet / resemblyzer-style nets and transformers' classes;
full destination paths in every rename, "only one left" only when literally true, hints applied
or refused with a reason. Every port compares forward outputs with the reference."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from align_check import code_loads_what_align_loads  # noqa: F401  (every alignment's code() is executed)

import structload as sl
from helpers import assert_unchanged, randomized, snapshot

IDS = torch.tensor([[1, 5, 9, 22, 40, 3, 7, 8], [2, 2, 60, 61, 62, 90, 4, 0]])


class PNet(nn.Module):
    """facenet-pytorch's MTCNN P-Net layout: one attribute per layer."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1, self.conv4_2 = nn.Conv2d(32, 2, 1), nn.Conv2d(32, 4, 1)

    def forward(self, x):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return F.softmax(self.conv4_1(x), dim=1), self.conv4_2(x)


class MyPNet(nn.Module):
    """The same net as a user rewrites it: a Sequential body and two named heads."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 10, 3),
            nn.PReLU(10),
            nn.MaxPool2d(2, 2, ceil_mode=True),
            nn.Conv2d(10, 16, 3),
            nn.PReLU(16),
            nn.Conv2d(16, 32, 3),
            nn.PReLU(32),
        )
        self.face, self.box = nn.Conv2d(32, 2, 1), nn.Conv2d(32, 4, 1)

    def forward(self, x):
        x = self.body(x)
        return F.softmax(self.face(x), dim=1), self.box(x)


def test_matches_inside_a_sequential_keep_the_full_destination_path():
    reference, model = randomized(PNet().eval()), MyPNet().eval()
    alignment = sl.align(model, reference)
    assert alignment.ok, alignment.code()
    by_dst = {m.dst: m.src for m in alignment.matched}
    assert by_dst["body.6.weight"] == ("prelu3.weight",) and by_dst["body.5.bias"] == ("conv3.bias",)
    assert all(not target.startswith(("weight", "bias")) for target in alignment.rename.values())
    namespace: dict = {}
    exec(alignment.code(), namespace)
    assert sl.load(model, reference, rename=namespace["rename"], convert=namespace["convert"]).ok
    images = torch.randn(2, 3, 24, 24)
    with torch.no_grad():
        for ours, theirs in zip(model(images), reference(images)):
            assert torch.allclose(ours, theirs, atol=1e-5)


def test_a_bias_follows_its_weight_even_when_its_shape_is_not_unique():
    """Three biases of shape (8,) and two norms: only the weights (and the norms' names) tell."""
    src = nn.ModuleDict({"a": nn.Linear(3, 8), "b": nn.Linear(5, 8), "c": nn.Linear(7, 8)})
    dst = nn.ModuleDict({"first": nn.Linear(3, 8), "second": nn.Linear(5, 8), "third": nn.Linear(7, 8)})
    randomized(src)
    alignment = sl.align(dst, src)
    assert alignment.ok, alignment.code()
    evidence = {m.dst: m.evidence[0] for m in alignment.matched}
    assert "paired with 'b'" in evidence["second.bias"]
    assert sl.load(dst, src, align=alignment).ok
    assert torch.equal(dst["third"].bias, src["c"].bias)


def test_only_one_left_is_claimed_only_when_literally_true():
    """resemblyzer's 3-layer LSTM against a list of three 1-layer LSTMs of the same shapes: nothing
    says which list entry is layer 1 unless the layers are read as layers, and never 'the only one'."""

    class Stacked(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm, self.linear = nn.LSTM(8, 8, 3), nn.Linear(8, 4)

    class TwoStacks(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn_a = nn.LSTM(8, 8, 1)
            self.rnn_b = nn.LSTM(8, 8, 1)
            self.linear = nn.Linear(8, 4)

    alignment = sl.align(TwoStacks(), Stacked())
    assert not alignment.ok
    assert not any("the only" in e for m in alignment.matched for e in m.evidence if "_l" in m.dst)
    ambiguous_dst = {d for a in alignment.ambiguous for d in a.dst}
    assert {"rnn_a.weight_ih_l0", "rnn_b.weight_ih_l0"} <= ambiguous_dst
    ambiguous_src = {s for a in alignment.ambiguous for s in a.src}
    assert {"lstm.weight_ih_l0", "lstm.weight_ih_l1", "lstm.weight_ih_l2"} <= ambiguous_src


def test_a_hint_naming_exact_paths_is_applied():
    src = nn.ModuleDict({"zeta": nn.Linear(4, 4), "eta": nn.Linear(4, 4)})
    dst = nn.ModuleDict({"alpha": nn.Linear(4, 4), "beta": nn.Linear(4, 4)})
    randomized(src)
    hints = {"alpha.weight": "eta.weight", "alpha.bias": "eta.bias", "beta": "zeta"}
    alignment = sl.align(dst, src, hints=hints)
    assert alignment.ok, alignment.code()
    assert sl.load(dst, src, align={"hints": hints}).ok
    assert torch.equal(dst["alpha"].weight, src["eta"].weight) and torch.equal(dst["beta"].bias, src["zeta"].bias)


def test_a_hint_across_groups_is_applied():
    """T5 keeps relative_attention_bias in block 0 only; a port keeps it once, at the top."""

    class Src(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = nn.ModuleList(nn.ModuleDict({"q": nn.Linear(4, 4, bias=False)}) for _ in range(2))
            self.block[0]["rel"] = nn.Embedding(32, 2)

    class Dst(nn.Module):
        def __init__(self):
            super().__init__()
            self.position_bias = nn.Embedding(32, 2)
            self.layers = nn.ModuleList(nn.ModuleDict({"q": nn.Linear(4, 4, bias=False)}) for _ in range(2))

    src, dst = randomized(Src()), Dst()
    hints = {"position_bias": "block.0.rel"}
    alignment = sl.align(dst, src, hints=hints)
    assert alignment.ok, alignment.code()
    assert sl.load(dst, src, align={"hints": hints}).ok
    assert torch.equal(dst.position_bias.weight, src.block[0]["rel"].weight)
    assert torch.equal(dst.layers[1]["q"].weight, src.block[1]["q"].weight)


@pytest.mark.parametrize(
    ("hints", "side"),
    [
        ({"alpah": "zeta"}, "hint 'alpah' matches no destination path; did you mean 'alpha'? (the destination side"),
        ({"alpha": "zeat"}, "the source side 'zeat' matches no source path; did you mean 'zeta'?"),
        ({"alpha": "wide"}, "destination 'alpha.weight' (4, 4) does not fit source 'wide.weight' (4, 9)"),
    ],
)
def test_a_hint_that_cannot_apply_is_a_pattern_problem_naming_the_failing_side(hints, side):
    src = nn.ModuleDict({"zeta": nn.Linear(4, 4), "eta": nn.Linear(4, 4), "wide": nn.Linear(9, 4)})
    dst = nn.ModuleDict({"alpha": nn.Linear(4, 4), "beta": nn.Linear(4, 4), "gamma": nn.Linear(9, 4)})
    before = snapshot(dst)
    alignment = sl.align(dst, src, hints=hints)
    assert not alignment.ok and list(alignment.unmatched_hints) == list(hints)
    assert side in alignment.hint_problems[next(iter(hints))]
    assert side in alignment.code()
    with pytest.raises(sl.LoadError) as info:
        sl.load(dst, src, align={"hints": hints})
    [problem] = [p for p in info.value.problems if p.kind == "pattern"]
    assert problem.path == next(iter(hints)) and side in problem.message
    assert_unchanged(dst, before)


def test_a_tied_destination_against_a_checkpoint_that_stores_the_tensor_once():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(11, 4)
            self.proj = nn.Linear(4, 6)
            self.lm_head = nn.Linear(4, 11, bias=False)
            self.lm_head.weight = self.embed.weight

    src = {"tok.weight": torch.randn(11, 4), "mid.weight": torch.randn(6, 4), "mid.bias": torch.randn(6)}
    model = Tied()
    alignment = sl.align(model, src)
    assert alignment.ok, alignment.code()
    assert sl.load(model, src, align=alignment).ok
    assert torch.equal(model.lm_head.weight, src["tok.weight"])


def test_layer_norm_names_are_tokens(tmp_path):
    """GPT-2's ln_1 / ln_2 against ln1 / ln2 (same shapes): the names decide, not their spelling."""
    from ports import logits_close, tiny_gpt2

    reference = tiny_gpt2()
    model = TokenGPT(97, 16, 32, 2, 4)
    alignment = sl.align(model, reference)
    assert alignment.ok, alignment.code()
    assert sl.load(model, reference, align=alignment).ok
    with torch.no_grad():
        assert logits_close(model(IDS), reference(IDS).logits)


class TokenBlock(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.fc_in, self.fc_out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        T = x.shape[1]
        mask = torch.ones(T, T, dtype=torch.bool).triu(1)
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.fc_out(F.gelu(self.fc_in(self.ln2(x)), approximate="tanh"))


class TokenGPT(nn.Module):
    """GPT-2 written with torch's nn.MultiheadAttention (in_proj_weight / in_proj_bias), ln1 / ln2."""

    def __init__(self, vocab: int, context: int, d: int, layers: int, heads: int):
        super().__init__()
        self.tokens, self.positions = nn.Embedding(vocab, d), nn.Embedding(context, d)
        self.layers = nn.ModuleList(TokenBlock(d, heads) for _ in range(layers))
        self.ln_out = nn.LayerNorm(d)

    def forward(self, ids):
        x = self.tokens(ids) + self.positions(torch.arange(ids.shape[1]))
        for layer in self.layers:
            x = layer(x)
        return self.ln_out(x) @ self.tokens.weight.T


CLI_FACTORY = """
import sys
sys.path.insert(0, {tests!r})
from test_align_plain_torch import MyPNet

def make():
    return MyPNet()
"""


def test_the_align_command_takes_rename_include_and_exclude(tmp_path, monkeypatch, capsys):
    from pathlib import Path

    import safetensors.torch

    from structload._cli import main

    reference = randomized(PNet())
    state = {f"module.{k}": v for k, v in reference.state_dict().items()} | {"module.stats.count": torch.ones(3)}
    safetensors.torch.save_file(state, tmp_path / "pnet.safetensors")
    (tmp_path / "mine.py").write_text(CLI_FACTORY.format(tests=str(Path(__file__).resolve().parent)))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    args = ["align", "mine:make", "pnet.safetensors", "--rename", r"^module\.=", "--include", "body.*"]
    assert main([*args, "--exclude", "stats.*", "--exclude", "conv4_*"]) == 0
    namespace: dict = {}
    exec(capsys.readouterr().out, namespace)
    assert namespace["rename"][r"^module\."] == ""
    model = MyPNet()
    options = {"include": "body.*", "exclude": ["stats.*", "conv4_*"], "convert": namespace["convert"]}
    report = sl.load(model, str(tmp_path / "pnet.safetensors"), rename=namespace["rename"], **options)
    assert report.ok and torch.equal(model.body[6].weight, reference.prelu3.weight)
    assert main([*args, "--exclude", "conv4_*"]) == 1  # stats.count: nothing takes it
    assert "stats.count" in capsys.readouterr().out


def test_an_optional_rename_key_lets_one_mapping_serve_tied_and_untied_checkpoints():
    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.out = nn.Embedding(11, 4), nn.Linear(4, 11, bias=False)

    untied = {"model.embed_tokens.weight": torch.randn(11, 4), "lm_head.weight": torch.randn(11, 4)}
    tied = {"model.embed_tokens.weight": untied["model.embed_tokens.weight"]}  # the head is the embedding
    rename = {r"^model\.embed_tokens\.": "embed.", sl.optional(r"^lm_head\."): "out."}
    model = LM()
    assert sl.load(model, untied, rename=rename).ok and torch.equal(model.out.weight, untied["lm_head.weight"])
    report = sl.load(LM(), tied, rename=rename, strict=False)
    assert [p.kind for p in report.problems] == ["missing"]  # out.weight: no "pattern" problem for the head rule
    plain = {r"^model\.embed_tokens\.": "embed.", r"^lm_head\.": "out."}
    assert "pattern" in [p.kind for p in sl.load(LM(), tied, rename=plain, strict=False).problems]
    alignment = sl.align(LM(), untied, rename={sl.optional(r"^model\."): ""})
    assert 'sl.optional(r"^model\\.")' in alignment.code()


def test_a_plain_strict_load_of_another_implementation_suggests_align():
    reference, model = randomized(PNet()), MyPNet()
    before = snapshot(model)
    with pytest.raises(sl.LoadError) as info:
        sl.load(model, reference)
    assert "align=True" in str(info.value)
    assert_unchanged(model, before)
    same = randomized(MyPNet())
    with pytest.raises(sl.LoadError) as info:  # the same implementation with a head renamed: no such hint
        sl.load(MyPNet(), {k.replace("face", "cls"): v for k, v in same.state_dict().items()})
    assert "align=True" not in str(info.value)


def test_did_you_mean_proposes_only_a_tensor_whose_shape_fits():
    class Embeddings(nn.Module):
        def __init__(self):
            super().__init__()
            self.tokens, self.segment = nn.Embedding(30, 8), nn.Embedding(2, 8)

    dst = nn.ModuleDict({"embed": Embeddings()})
    src = {"embed.token_types.weight": torch.randn(2, 8)}  # close to 'tokens' by name, not by shape
    unexpected = [p for p in sl.load(dst, src, strict=False).problems if p.kind == "unexpected"]
    assert unexpected and all("tokens" not in p.message for p in unexpected)
    src = {"embed.token.weight": torch.randn(30, 8)}
    unexpected = [p for p in sl.load(dst, src, strict=False).problems if p.kind == "unexpected"]
    assert any("did you mean 'embed.tokens" in p.message for p in unexpected)  # a fitting one still is


def test_an_alignment_error_has_one_line_per_subtree_not_per_tensor():
    class Wide(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3)
            self.trunk = nn.Sequential(*(nn.Conv2d(8, 8, 1, bias=False) for _ in range(30)))
            self.head = nn.Linear(8, 5)

    src = {"stem.weight": torch.randn(8, 3, 3, 3), "stem.bias": torch.randn(8), "other.weight": torch.randn(7, 7)}
    src |= {f"tower.t{i}.w": torch.randn(9, 9) for i in range(40)}
    model = Wide()
    before = snapshot(model)
    with pytest.raises(sl.LoadError) as info:
        sl.load(model, src, align=True)
    problems = {p.path: p for p in info.value.problems}
    assert problems["trunk"].message == "no source tensor matches any of its 30 tensors"
    assert problems["head"].message == "no source tensor matches any of its 2 tensors"
    assert problems["tower"].message == "none of its 40 tensors matches a destination tensor"
    assert problems["other.weight"].message == "matches no destination tensor"
    assert len(problems) == 4
    assert_unchanged(model, before)


class TorchBert(nn.Module):
    """BERT as a porting user writes it with torch's own nn.TransformerEncoderLayer (post-norm,
    in_proj_weight), and other names for the embeddings and the pooler."""

    def __init__(self, vocab=97, d=32, layers=2, heads=4, ff=64, context=16):
        super().__init__()
        self.embed = nn.ModuleDict(
            {
                "tokens": nn.Embedding(vocab, d),
                "positions": nn.Embedding(context, d),
                "types": nn.Embedding(2, d),
                "norm": nn.LayerNorm(d, eps=1e-12),
            }
        )
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                d, heads, ff, dropout=0.0, activation="gelu", layer_norm_eps=1e-12, batch_first=True
            )
            for _ in range(layers)
        )
        self.pool = nn.ModuleDict({"proj": nn.Linear(d, d)})

    def forward(self, ids):
        e = self.embed
        x = e["tokens"](ids) + e["positions"](torch.arange(ids.shape[1])) + e["types"](torch.zeros_like(ids))
        x = e["norm"](x)
        for layer in self.layers:
            x = layer(x)
        return x, torch.tanh(self.pool["proj"](x[:, 0]))


def test_bert_into_torch_transformer_encoder_layers_and_back():
    import transformers

    config = transformers.BertConfig(
        vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=16, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    torch.manual_seed(0)
    reference = transformers.BertModel(config).eval()  # with its pooler
    model = TorchBert().eval()
    alignment = sl.align(model, reference)
    assert alignment.ok, alignment.code()
    assert sl.load(model, reference, align=alignment).ok
    with torch.no_grad():
        expected = reference(IDS)
        hidden, pooled = model(IDS)
    assert torch.allclose(hidden, expected.last_hidden_state, atol=1e-5)
    assert torch.allclose(pooled, expected.pooler_output, atol=1e-5)
    back = transformers.BertModel(config).eval()
    assert sl.load(back, model, align=True).ok  # in_proj split back into query / key / value
    with torch.no_grad():
        assert torch.allclose(back(IDS).last_hidden_state, expected.last_hidden_state, atol=1e-5)


def test_same_shape_layers_in_reversed_order_are_never_paired_by_position():
    dst = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
    src = {"zz.weight": torch.randn(8, 8), "zz.bias": torch.randn(8), "aa.weight": torch.randn(8, 8)}
    src["aa.bias"] = torch.randn(8)
    alignment = sl.align(dst, src)
    assert alignment.matched == [] and not alignment.ok
    assert {d for a in alignment.ambiguous for d in a.dst} == {"0.weight", "1.weight", "0.bias", "1.bias"}


def test_a_layer_missing_in_the_middle_shifts_nothing():
    """Three same-shape convs in the destination, the middle one absent from the source: a greedy
    matcher would load conv3 into body.1; the alignment says it cannot tell."""
    dst = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3), nn.Conv2d(8, 8, 3), nn.Conv2d(8, 8, 3))
    src = randomized(
        nn.ModuleDict({"conv1": nn.Conv2d(3, 8, 3), "conv2": nn.Conv2d(8, 8, 3), "conv4": nn.Conv2d(8, 8, 3)})
    )
    before = snapshot(dst)
    alignment = sl.align(dst, src)
    assert [m.dst for m in alignment.matched] == ["0.weight", "0.bias"]
    [weights, biases] = sorted(alignment.ambiguous, key=lambda a: a.dst[0].endswith("bias"))
    assert set(biases.dst) == {"1.bias", "2.bias", "3.bias"}
    assert set(weights.dst) == {"1.weight", "2.weight", "3.weight"} and len(weights.src) == 2
    with pytest.raises(sl.LoadError):
        sl.load(dst, src, align=True)
    assert_unchanged(dst, before)


class ResidualAttentionBlock(nn.Module):
    """OpenAI CLIP's text block: nn.MultiheadAttention, ln_1 / ln_2, mlp.c_fc / mlp.c_proj, QuickGELU."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.ln_1, self.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.mlp = nn.ModuleDict({"c_fc": nn.Linear(d, 4 * d), "c_proj": nn.Linear(4 * d, d)})

    def forward(self, x, mask):
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        h = self.mlp["c_fc"](self.ln_2(x))
        return x + self.mlp["c_proj"](h * torch.sigmoid(1.702 * h))


class OpenAIClipText(nn.Module):
    """OpenAI CLIP's text tower: bare nn.Parameters for the positions and the (in, out) projection."""

    def __init__(self, vocab=97, context=16, d=32, layers=2, heads=4, out=24):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab, d)
        self.positional_embedding = nn.Parameter(torch.empty(context, d))
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.ModuleList(ResidualAttentionBlock(d, heads) for _ in range(layers))
        self.ln_final = nn.LayerNorm(d)
        self.text_projection = nn.Parameter(torch.empty(d, out))

    def forward(self, ids):
        T = ids.shape[1]
        x = self.token_embedding(ids) + self.positional_embedding[:T]
        mask = torch.full((T, T), float("-inf")).triu(1)
        for block in self.transformer.resblocks:
            x = block(x, mask)
        x = self.ln_final(x)
        return x, x[torch.arange(x.shape[0]), ids.argmax(-1)] @ self.text_projection


def test_clip_text_into_openai_clip_with_bare_parameters_and_multihead_attention():
    import transformers

    config = transformers.CLIPTextConfig(
        vocab_size=97, hidden_size=32, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=16, projection_dim=24, eos_token_id=2,
    )  # fmt: skip
    torch.manual_seed(0)
    reference = transformers.CLIPTextModelWithProjection(config).eval()
    model = OpenAIClipText().eval()
    alignment = sl.align(model, reference)
    assert alignment.ok, alignment.code()
    [projection] = [m for m in alignment.matched if m.dst == "text_projection"]
    assert projection.src == ("text_projection.weight",) and "stored transposed (in, out)" in projection.evidence
    assert sl.load(model, reference, align=alignment).ok
    with torch.no_grad():
        expected = reference(IDS)
        hidden, embeds = model(IDS)
    assert torch.allclose(hidden, expected.last_hidden_state, atol=1e-5)
    assert torch.allclose(embeds, expected.text_embeds, atol=1e-5)


class LpipsHeads(nn.Module):
    """lpips' linear heads: lin0..lin4, each a Sequential(Dropout, Conv2d(c, 1, 1, bias=False))."""

    def __init__(self, channels=(8, 16, 32, 64, 64)):
        super().__init__()
        for i, c in enumerate(channels):
            setattr(self, f"lin{i}", nn.Sequential(nn.Dropout(), nn.Conv2d(c, 1, 1, bias=False)))


def test_lpips_heads_against_a_list_match_by_unique_shapes_then_by_position():
    """lin0..lin4 against heads.0..4: three shapes are unique; lin3 / lin4 (both (1, 64, 1, 1))
    are told apart by their numbers, the same positions on both sides."""
    reference = randomized(LpipsHeads())
    model = nn.ModuleDict({"heads": nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in (8, 16, 32, 64, 64))})
    alignment = sl.align(model, reference)
    assert alignment.ok, alignment.code()
    assert {m.dst: m.src for m in alignment.matched} == {f"heads.{i}.weight": (f"lin{i}.1.weight",) for i in range(5)}
    [last] = [m for m in alignment.matched if m.dst == "heads.4.weight"]
    assert any(e.startswith("position") for e in last.evidence)
    assert sl.load(model, reference, align=alignment).ok
    assert torch.equal(model["heads"][4].weight, reference.lin4[1].weight)
    assert torch.equal(model["heads"][3].weight, reference.lin3[1].weight)


class Resemblyzer(nn.Module):
    """resemblyzer's speaker encoder: one 3-layer LSTM, a linear, a ReLU."""

    def __init__(self):
        super().__init__()
        self.lstm, self.linear = nn.LSTM(8, 12, 3, batch_first=True), nn.Linear(12, 6)

    def forward(self, x):
        _, (hidden, _) = self.lstm(x)
        return F.relu(self.linear(hidden[-1]))


class MyResemblyzer(nn.Module):
    """The same as a user writes it, one layer at a time."""

    def __init__(self):
        super().__init__()
        self.rnn = nn.ModuleList(nn.LSTM(8 if i == 0 else 12, 12, 1, batch_first=True) for i in range(3))
        self.proj = nn.Linear(12, 6)

    def forward(self, x):
        for layer in self.rnn:
            x, (hidden, _) = layer(x)
        return F.relu(self.proj(hidden[-1]))


def test_a_stacked_lstm_into_a_list_of_one_layer_lstms_and_back():
    reference, model = randomized(Resemblyzer()).eval(), MyResemblyzer().eval()
    alignment = sl.align(model, reference)
    assert alignment.ok, alignment.code()
    by_dst = {m.dst: m.src for m in alignment.matched}
    assert by_dst["rnn.2.weight_hh_l0"] == ("lstm.weight_hh_l2",) and by_dst["rnn.1.bias_ih_l0"] == ("lstm.bias_ih_l1",)
    assert sl.load(model, reference, align=alignment).ok
    frames = torch.randn(2, 5, 8)
    with torch.no_grad():
        assert torch.allclose(model(frames), reference(frames), atol=1e-5)
    back = Resemblyzer().eval()
    assert sl.load(back, model, align=True).ok
    with torch.no_grad():
        assert torch.allclose(back(frames), reference(frames), atol=1e-5)


def relative_bucket(relative: torch.Tensor, buckets: int = 32, max_distance: int = 128) -> torch.Tensor:
    """T5's bidirectional relative-position buckets: half for each direction, exact up to a
    quarter of them, logarithmic beyond."""
    half = buckets // 2
    bucket = (relative > 0).long() * half
    distance = relative.abs()
    exact = half // 2
    far = exact + (torch.log(distance.float().clamp(min=1) / exact) / math.log(max_distance / exact) * (half - exact))
    return bucket + torch.where(distance < exact, distance, far.long().clamp(max=half - 1))


class RMSNorm(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


class T5Block(nn.Module):
    def __init__(self, d: int, heads: int, head_dim: int, ff: int):
        super().__init__()
        self.attn_norm, self.mlp_norm = RMSNorm(d), RMSNorm(d)
        inner = heads * head_dim
        self.attn = nn.ModuleDict(
            {n: nn.Linear(d, inner, bias=False) for n in "qkv"} | {"o": nn.Linear(inner, d, bias=False)}
        )
        self.mlp = nn.ModuleDict(
            {
                "gate": nn.Linear(d, ff, bias=False),
                "up": nn.Linear(d, ff, bias=False),
                "down": nn.Linear(ff, d, bias=False),
            }
        )
        self.heads = heads

    def forward(self, x, bias):
        B, T, _ = x.shape
        h = self.attn_norm(x)
        q, k, v = (self.attn[n](h).view(B, T, self.heads, -1).transpose(1, 2) for n in "qkv")
        weights = torch.softmax(q @ k.transpose(-1, -2) + bias, dim=-1)  # T5 does not scale the scores
        x = x + self.attn["o"]((weights @ v).transpose(1, 2).reshape(B, T, -1))
        h = self.mlp_norm(x)
        return x + self.mlp["down"](F.gelu(self.mlp["gate"](h), approximate="tanh") * self.mlp["up"](h))


class MyT5Encoder(nn.Module):
    """T5 v1.1's encoder, written from the paper: the relative-position bias kept once, at the top."""

    def __init__(self, vocab=97, d=32, layers=2, heads=4, head_dim=8, ff=64):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.rel_bias = nn.Embedding(32, heads)
        self.blocks = nn.ModuleList(T5Block(d, heads, head_dim, ff) for _ in range(layers))
        self.final_norm = RMSNorm(d)

    def forward(self, ids):
        positions = torch.arange(ids.shape[1])
        bias = self.rel_bias(relative_bucket(positions[None, :] - positions[:, None])).permute(2, 0, 1)
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x, bias)
        return self.final_norm(x)


def test_t5_encoder_sub_blocks_read_by_their_content_and_its_position_bias_pinned_across_groups():
    import transformers

    config = transformers.T5Config(
        vocab_size=97, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, feed_forward_proj="gated-gelu",
        dropout_rate=0.0, relative_attention_num_buckets=32,
    )  # fmt: skip
    torch.manual_seed(0)
    reference = transformers.T5EncoderModel(config).eval()
    model = MyT5Encoder().eval()
    alignment = sl.align(model, reference)
    assert not alignment.ok and "rel_bias.weight" in alignment.unmatched_dst  # in block 0 there: a hint says it
    hints = {"rel_bias": "encoder.block.0.layer.0.SelfAttention.relative_attention_bias"}
    alignment = sl.align(model, reference, hints=hints)
    assert alignment.ok, alignment.code()
    by_dst = {m.dst: m.src for m in alignment.matched}
    assert by_dst["blocks.1.attn_norm.weight"] == ("encoder.block.1.layer.0.layer_norm.weight",)
    assert by_dst["blocks.1.mlp.gate.weight"] == ("encoder.block.1.layer.1.DenseReluDense.wi_0.weight",)
    assert sl.load(model, reference, align=alignment).ok
    with torch.no_grad():
        assert torch.allclose(model(IDS), reference(IDS).last_hidden_state, atol=1e-5)


def test_exclude_names_source_paths_under_align():
    reference = randomized(PNet())
    state = reference.state_dict() | {"num_batches.count": torch.ones(2)}  # what no destination holds
    with pytest.raises(sl.LoadError) as info:
        sl.load(MyPNet(), state, align=True)
    assert "num_batches" in str(info.value)
    model = MyPNet()
    assert sl.load(model, state, align=True, exclude="num_batches.*").ok
    assert torch.equal(model.body[6].weight, reference.prelu3.weight)
    assert sl.align(MyPNet(), state, exclude="num_batches.*").ok
