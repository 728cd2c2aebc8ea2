"""The vocabulary on other families' conventions (API.md §11), each against transformers' own tiny
model: Whisper's encoder into OpenAI's layout (``attn.query`` / ``attn_ln`` / ``mlp.0`` / ``ln_post``,
forward compared), ESM into fair-esm's names, Mamba into mamba_ssm's (``backbone.embedding``).
(ViT: tests/test_align.py::test_vit_into_a_timm_style_vit_with_fused_qkv.)"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from align_check import code_loads_what_align_loads  # noqa: F401  (every alignment's code() is executed)

import structload as sl
from helpers import randomized

transformers = pytest.importorskip("transformers")


class WhisperAttention(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d, bias=False), nn.Linear(d, d)
        self.out = nn.Linear(d, d)

    def forward(self, x):
        B, T, D = x.shape
        q, k, v = (f(x).view(B, T, self.heads, -1).transpose(1, 2) for f in (self.query, self.key, self.value))
        return self.out(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, T, D))


class WhisperBlock(nn.Module):
    def __init__(self, d: int, heads: int, hidden: int):
        super().__init__()
        self.attn, self.attn_ln = WhisperAttention(d, heads), nn.LayerNorm(d)
        self.mlp, self.mlp_ln = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, d)), nn.LayerNorm(d)

    def forward(self, x):
        x = x + self.attn(self.attn_ln(x))
        return x + self.mlp(self.mlp_ln(x))


class OpenAIWhisperEncoder(nn.Module):
    """OpenAI whisper's AudioEncoder layout (the positional embedding a plain parameter here)."""

    def __init__(self, mels: int, d: int, ctx: int, heads: int, hidden: int, layers: int):
        super().__init__()
        self.conv1 = nn.Conv1d(mels, d, 3, padding=1)
        self.conv2 = nn.Conv1d(d, d, 3, stride=2, padding=1)
        self.positional_embedding = nn.Parameter(torch.zeros(ctx, d))
        self.blocks = nn.ModuleList(WhisperBlock(d, heads, hidden) for _ in range(layers))
        self.ln_post = nn.LayerNorm(d)

    def forward(self, mel):
        x = F.gelu(self.conv2(F.gelu(self.conv1(mel)))).permute(0, 2, 1) + self.positional_embedding
        for block in self.blocks:
            x = block(x)
        return self.ln_post(x)


def test_whisper_encoder_into_openai_whisper_layout():
    sizes = {"d_model": 16, "encoder_layers": 2, "encoder_attention_heads": 2, "encoder_ffn_dim": 32}
    tokens = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "decoder_start_token_id": 1}
    config = transformers.WhisperConfig(
        vocab_size=60,
        num_mel_bins=8,
        max_source_positions=10,
        decoder_layers=1,
        decoder_attention_heads=2,
        **sizes,
        **tokens,
    )
    torch.manual_seed(0)
    reference = randomized(transformers.WhisperModel(config).encoder).eval()
    model = OpenAIWhisperEncoder(8, 16, 10, 2, 32, 2).eval()
    alignment = sl.align(model, reference)
    assert alignment.ok, alignment.code()
    by_dst = {m.dst: m.src[0] for m in alignment.matched}
    assert by_dst["blocks.1.mlp_ln.weight"] == "layers.1.final_layer_norm.weight"
    assert by_dst["blocks.0.attn.out.bias"] == "layers.0.self_attn.out_proj.bias"
    assert by_dst["positional_embedding"] == "embed_positions.weight"
    assert by_dst["ln_post.weight"] == "layer_norm.weight"
    assert sl.load(model, reference, align=alignment).ok
    mel = torch.randn(2, 8, 20)
    with torch.no_grad():
        assert torch.allclose(model(mel), reference(mel).last_hidden_state, atol=1e-5)


def test_esm_into_fair_esm_names():
    config = transformers.EsmConfig(
        vocab_size=33,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        pad_token_id=1,
        position_embedding_type="rotary",
    )
    reference = randomized(transformers.EsmModel(config, add_pooling_layer=False))

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.self_attn = nn.ModuleDict({n: nn.Linear(16, 16) for n in ("k_proj", "v_proj", "q_proj", "out_proj")})
            self.self_attn_layer_norm, self.final_layer_norm = nn.LayerNorm(16), nn.LayerNorm(16)
            self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 16)

    model = nn.Module()
    model.embed_tokens = nn.Embedding(33, 16)
    model.layers = nn.ModuleList(Layer() for _ in range(2))
    model.emb_layer_norm_after = nn.LayerNorm(16)
    alignment = sl.align(model, reference, exclude=["contact_head.*", "*.inv_freq"])
    assert alignment.ok, alignment.code()
    by_dst = {m.dst: m.src[0] for m in alignment.matched}
    assert by_dst["layers.1.final_layer_norm.bias"] == "encoder.layer.1.LayerNorm.bias"
    assert by_dst["layers.0.self_attn_layer_norm.weight"] == "encoder.layer.0.attention.LayerNorm.weight"
    assert by_dst["layers.0.self_attn.out_proj.weight"] == "encoder.layer.0.attention.output.dense.weight"
    assert by_dst["layers.1.fc2.weight"] == "encoder.layer.1.output.dense.weight"
    assert by_dst["emb_layer_norm_after.weight"] == "encoder.emb_layer_norm_after.weight"
    assert sl.load(model, reference, align=alignment, exclude=["contact_head.*", "*.inv_freq"]).ok
    assert torch.equal(model.layers[1].fc1.bias, reference.encoder.layer[1].intermediate.dense.bias)


def test_mamba_into_mamba_ssm_names_and_code_loads_strictly():
    """transformers' ``embeddings`` / ``layers`` / ``norm_f`` against mamba_ssm's ``backbone.embedding``
    / ``backbone.layers`` / ``backbone.norm_f``: one rule per module, none that renames nothing
    (a plain strict load with `rename` / `convert` has no pattern problem)."""
    config = transformers.MambaConfig(vocab_size=50, hidden_size=16, state_size=4, num_hidden_layers=2, expand=2)
    reference = randomized(transformers.MambaModel(config))
    state = reference.state_dict()

    class Mixer(nn.Module):
        def __init__(self, i: int):
            super().__init__()
            for name in ("in_proj", "conv1d", "x_proj", "dt_proj", "out_proj"):
                w, b = f"layers.{i}.mixer.{name}.weight", f"layers.{i}.mixer.{name}.bias"
                module = nn.Module()
                module.weight = nn.Parameter(torch.zeros(state[w].shape))
                if b in state:
                    module.bias = nn.Parameter(torch.zeros(state[b].shape))
                self.add_module(name, module)
            self.A_log = nn.Parameter(torch.zeros(state[f"layers.{i}.mixer.A_log"].shape))
            self.D = nn.Parameter(torch.zeros(state[f"layers.{i}.mixer.D"].shape))

    class Block(nn.Module):
        def __init__(self, i: int):
            super().__init__()
            self.mixer, self.norm = Mixer(i), nn.RMSNorm(16)

    model = nn.Module()
    model.backbone = nn.Module()
    model.backbone.embedding = nn.Embedding(50, 16)
    model.backbone.layers = nn.ModuleList(Block(i) for i in range(2))
    model.backbone.norm_f = nn.RMSNorm(16)
    alignment = sl.align(model, reference)
    assert alignment.ok, alignment.code()
    assert alignment.rename == {
        r"^layers\.(\d+)\.mixer\.": r"backbone.layers.\1.mixer.",
        r"^layers\.(\d+)\.norm\.": r"backbone.layers.\1.norm.",
        r"^embeddings\.": "backbone.embedding.",
        r"^norm_f\.": "backbone.norm_f.",
    }, alignment.code()
    assert sl.load(model, reference, rename=alignment.rename, convert=alignment.convert).ok
    assert torch.equal(model.backbone.layers[1].mixer.A_log, reference.layers[1].mixer.A_log)
    assert torch.equal(model.backbone.embedding.weight, reference.embeddings.weight)
