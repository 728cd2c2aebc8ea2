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


class FairEsmAttention(nn.Module):
    """fair-esm's MultiheadAttention with rotary embeddings: the query scaled before the rotation."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, d // heads
        self.k_proj, self.v_proj, self.q_proj, self.out_proj = (nn.Linear(d, d) for _ in range(4))
        inv_freq = 1.0 / (10000 ** (torch.arange(0, self.head_dim, 2).float() / self.head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def rotate(self, x):
        angles = torch.arange(x.shape[-2]).float()[:, None] * self.inv_freq
        cos, sin = torch.cat((angles, angles), -1).cos(), torch.cat((angles, angles), -1).sin()
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat((-x2, x1), -1) * sin

    def forward(self, x):
        B, T, D = x.shape
        q, k, v = (f(x).view(B, T, self.heads, -1).transpose(1, 2) for f in (self.q_proj, self.k_proj, self.v_proj))
        q, k = self.rotate(q * self.head_dim**-0.5), self.rotate(k)
        weights = (q @ k.transpose(-1, -2)).softmax(-1)
        return self.out_proj((weights @ v).transpose(1, 2).reshape(B, T, D))


class FairEsmLayer(nn.Module):
    def __init__(self, d: int, heads: int, hidden: int):
        super().__init__()
        self.self_attn = FairEsmAttention(d, heads)
        self.self_attn_layer_norm, self.final_layer_norm = nn.LayerNorm(d, eps=1e-12), nn.LayerNorm(d, eps=1e-12)
        self.fc1, self.fc2 = nn.Linear(d, hidden), nn.Linear(hidden, d)

    def forward(self, x):
        x = x + self.self_attn(self.self_attn_layer_norm(x))
        return x + self.fc2(F.gelu(self.fc1(self.final_layer_norm(x))))  # exact (erf) GELU, as ESM's


class FairEsm(nn.Module):
    """fair-esm's ESM-2 names (``embed_tokens``, ``layers.N.self_attn``, ``emb_layer_norm_after``)."""

    def __init__(self, vocab: int, d: int, heads: int, hidden: int, layers: int):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList(FairEsmLayer(d, heads, hidden) for _ in range(layers))
        self.emb_layer_norm_after = nn.LayerNorm(d, eps=1e-12)

    def forward(self, tokens):
        x = self.embed_tokens(tokens)
        for layer in self.layers:
            x = layer(x)
        return self.emb_layer_norm_after(x)


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
    torch.manual_seed(0)
    reference = randomized(transformers.EsmModel(config, add_pooling_layer=False)).eval()
    rotary = reference.rotary_embeddings
    rotary.inv_freq.copy_(rotary.compute_default_rope_parameters(config)[0])  # a constant, not a weight
    model = FairEsm(33, 16, 2, 32, 2).eval()
    alignment = sl.align(model, reference, exclude=["contact_head.*", "*.inv_freq"])
    assert alignment.ok, alignment.code()
    by_dst = {m.dst: m.src[0] for m in alignment.matched}
    assert by_dst["layers.1.final_layer_norm.bias"] == "encoder.layer.1.LayerNorm.bias"
    assert by_dst["layers.0.self_attn_layer_norm.weight"] == "encoder.layer.0.attention.LayerNorm.weight"
    assert by_dst["layers.0.self_attn.out_proj.weight"] == "encoder.layer.0.attention.output.dense.weight"
    assert by_dst["layers.0.self_attn.k_proj.weight"] == "encoder.layer.0.attention.self.key.weight"
    assert by_dst["layers.1.fc2.weight"] == "encoder.layer.1.output.dense.weight"
    assert by_dst["emb_layer_norm_after.weight"] == "encoder.emb_layer_norm_after.weight"
    assert sl.load(model, reference, align=alignment, exclude=["contact_head.*", "*.inv_freq"]).ok
    assert torch.equal(model.layers[1].fc1.bias, reference.encoder.layer[1].intermediate.dense.bias)
    tokens = torch.randint(4, 33, (2, 7))  # no padding, no mask token: no masking on either side
    with torch.no_grad():
        assert torch.allclose(model(tokens), reference(tokens).last_hidden_state, atol=1e-5)


class MambaSsmMixer(nn.Module):
    """mamba_ssm's ``Mamba`` block, its reference (non-CUDA) path: the selective scan as a loop."""

    def __init__(self, d: int, state: int, expand: int, conv: int, dt_rank: int):
        super().__init__()
        inner, self.state, self.dt_rank = expand * d, state, dt_rank
        self.in_proj = nn.Linear(d, 2 * inner, bias=False)
        self.conv1d = nn.Conv1d(inner, inner, conv, groups=inner, padding=conv - 1)
        self.x_proj = nn.Linear(inner, dt_rank + 2 * state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, inner)
        self.A_log = nn.Parameter(torch.zeros(inner, state))
        self.D = nn.Parameter(torch.ones(inner))
        self.out_proj = nn.Linear(inner, d, bias=False)

    def forward(self, hidden):
        T = hidden.shape[1]
        x, z = self.in_proj(hidden).chunk(2, dim=-1)
        x = F.silu(self.conv1d(x.transpose(1, 2))[..., :T].transpose(1, 2))  # causal: drop the right padding
        dt, B, C = self.x_proj(x).split([self.dt_rank, self.state, self.state], dim=-1)
        dt, A = F.softplus(self.dt_proj(dt)), -torch.exp(self.A_log)
        h, ys = torch.zeros(x.shape[0], x.shape[2], self.state), []
        for t in range(T):
            h = torch.exp(dt[:, t, :, None] * A) * h + dt[:, t, :, None] * B[:, t, None, :] * x[:, t, :, None]
            ys.append((h @ C[:, t, :, None]).squeeze(-1))
        y = torch.stack(ys, dim=1) + x * self.D
        return self.out_proj(y * F.silu(z))


class MambaSsmBlock(nn.Module):
    def __init__(self, d: int, **mixer):
        super().__init__()
        self.mixer, self.norm = MambaSsmMixer(d, **mixer), nn.RMSNorm(d, eps=1e-5)

    def forward(self, x):
        return x + self.mixer(self.norm(x))


class MambaSsmBackbone(nn.Module):
    def __init__(self, vocab: int, d: int, layers: int, **mixer):
        super().__init__()
        self.embedding = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList(MambaSsmBlock(d, **mixer) for _ in range(layers))
        self.norm_f = nn.RMSNorm(d, eps=1e-5)


class MambaSsmModel(nn.Module):
    """mamba_ssm's ``MambaLMHeadModel`` names (``backbone.embedding``), without its head."""

    def __init__(self, vocab: int, d: int, layers: int, **mixer):
        super().__init__()
        self.backbone = MambaSsmBackbone(vocab, d, layers, **mixer)

    def forward(self, tokens):
        x = self.backbone.embedding(tokens)
        for block in self.backbone.layers:
            x = block(x)
        return self.backbone.norm_f(x)


def test_mamba_into_mamba_ssm_names_and_code_loads_strictly():
    """transformers' ``embeddings`` / ``layers`` / ``norm_f`` against mamba_ssm's ``backbone.embedding``
    / ``backbone.layers`` / ``backbone.norm_f``: one rule per module, none that renames nothing
    (a plain strict load with `rename` / `convert` has no pattern problem)."""
    config = transformers.MambaConfig(vocab_size=50, hidden_size=16, state_size=4, num_hidden_layers=2, expand=2)
    torch.manual_seed(0)
    reference = randomized(transformers.MambaModel(config)).eval()
    model = MambaSsmModel(50, 16, 2, state=4, expand=2, conv=config.conv_kernel, dt_rank=config.time_step_rank)
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
    tokens = torch.randint(0, 50, (2, 6))
    with torch.no_grad():
        assert torch.allclose(model(tokens), reference(tokens).last_hidden_state, atol=1e-5)
