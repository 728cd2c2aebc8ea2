"""Clean, independent implementations of well-known architectures, written for the alignment tests
(and the porting page): each computes what the transformers original computes, with its own names
and layouts. Tiny configs, random init, no downloads."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


class NanoAttention(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.c_attn = nn.Linear(d, 3 * d)
        self.c_proj = nn.Linear(d, d)
        self.heads = heads

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in self.c_attn(x).split(C, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


class NanoMLP(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.c_fc = nn.Linear(d, 4 * d)
        self.c_proj = nn.Linear(4 * d, d)

    def forward(self, x):
        return self.c_proj(gelu_tanh(self.c_fc(x)))


class NanoBlock(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.ln_1, self.attn = nn.LayerNorm(d), NanoAttention(d, heads)
        self.ln_2, self.mlp = nn.LayerNorm(d), NanoMLP(d)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class NanoGPT(nn.Module):
    """nanoGPT's GPT: Hugging Face's names, but nn.Linear (out, in) where GPT-2 has Conv1D (in, out)."""

    def __init__(self, vocab: int, context: int, d: int, layers: int, heads: int):
        super().__init__()
        self.transformer = nn.ModuleDict(
            {
                "wte": nn.Embedding(vocab, d),
                "wpe": nn.Embedding(context, d),
                "h": nn.ModuleList(NanoBlock(d, heads) for _ in range(layers)),
                "ln_f": nn.LayerNorm(d),
            }
        )
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.lm_head.weight = self.transformer.wte.weight

    def forward(self, ids):
        x = self.transformer.wte(ids) + self.transformer.wpe(torch.arange(ids.shape[1]))
        for block in self.transformer.h:
            x = block(x)
        return self.lm_head(self.transformer.ln_f(x))


class SplitAttention(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.heads = heads

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = (p(x).view(B, T, self.heads, C // self.heads).transpose(1, 2) for p in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o(y.transpose(1, 2).reshape(B, T, C))


class SplitBlock(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(d), SplitAttention(d, heads)
        self.norm2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential()
        self.mlp.add_module("up", nn.Linear(d, 4 * d))
        self.mlp.add_module("down", nn.Linear(4 * d, d))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp.down(gelu_tanh(self.mlp.up(self.norm2(x))))


class SplitGPT(nn.Module):
    """GPT-2 with separate q / k / v / o layers and its own names (blocks, norm1, up, down, head)."""

    def __init__(self, vocab: int, context: int, d: int, layers: int, heads: int):
        super().__init__()
        self.tok_emb = nn.Embedding(vocab, d)
        self.pos_emb = nn.Embedding(context, d)
        self.blocks = nn.ModuleList(SplitBlock(d, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.tok_emb.weight

    def forward(self, ids):
        x = self.tok_emb(ids) + self.pos_emb(torch.arange(ids.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


# --- Llama in Meta's layout (wq, feed_forward.w1 ...), rotate-half rotary as transformers computes it


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


def rotate_half(x):
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


def inverse_frequencies(head_dim: int, theta: float) -> torch.Tensor:
    return 1.0 / theta ** (torch.arange(0, head_dim, 2).float() / head_dim)


def rotary(length: int, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin for rotate-half rotary embeddings, as transformers' Llama computes them."""
    freqs = torch.outer(torch.arange(length).float(), inv_freq)
    angles = torch.cat((freqs, freqs), dim=-1)
    return angles.cos(), angles.sin()


def grouped_attention(q, k, v, cos, sin, heads: int, kv_heads: int, head_dim: int):
    """Causal attention with rotary q / k and k / v shared by groups of query heads (GQA)."""
    B, T, _ = q.shape
    q = q.view(B, T, heads, head_dim).transpose(1, 2)
    k = k.view(B, T, kv_heads, head_dim).transpose(1, 2)
    v = v.view(B, T, kv_heads, head_dim).transpose(1, 2)
    q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
    k, v = k.repeat_interleave(heads // kv_heads, dim=1), v.repeat_interleave(heads // kv_heads, dim=1)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, -1)


class MetaAttention(nn.Module):
    def __init__(self, d: int, heads: int, kv_heads: int):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, d // heads
        self.wq = nn.Linear(d, heads * self.head_dim, bias=False)
        self.wk = nn.Linear(d, kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(d, kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(heads * self.head_dim, d, bias=False)

    def forward(self, x, cos, sin):
        y = grouped_attention(self.wq(x), self.wk(x), self.wv(x), cos, sin, self.heads, self.kv_heads, self.head_dim)
        return self.wo(y)


class MetaFeedForward(nn.Module):
    def __init__(self, d: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(d, hidden, bias=False)  # the gate
        self.w2 = nn.Linear(hidden, d, bias=False)
        self.w3 = nn.Linear(d, hidden, bias=False)  # the up projection

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class MetaBlock(nn.Module):
    def __init__(self, d, heads, kv_heads, hidden, eps):
        super().__init__()
        self.attention = MetaAttention(d, heads, kv_heads)
        self.feed_forward = MetaFeedForward(d, hidden)
        self.attention_norm, self.ffn_norm = RMSNorm(d, eps), RMSNorm(d, eps)

    def forward(self, x, cos, sin):
        x = x + self.attention(self.attention_norm(x), cos, sin)
        return x + self.feed_forward(self.ffn_norm(x))


class MetaLlama(nn.Module):
    def __init__(self, vocab, d, layers, heads, kv_heads, hidden, eps=1e-6, theta=10000.0):
        super().__init__()
        self.tok_embeddings = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList(MetaBlock(d, heads, kv_heads, hidden, eps) for _ in range(layers))
        self.norm = RMSNorm(d, eps)
        self.output = nn.Linear(d, vocab, bias=False)
        self.register_buffer("inv_freq", inverse_frequencies(d // heads, theta), persistent=False)

    def forward(self, ids):
        cos, sin = rotary(ids.shape[1], self.inv_freq)
        x = self.tok_embeddings(ids)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.output(self.norm(x))


def tiny_gpt2(layers: int = 2):
    import transformers

    config = transformers.GPT2Config(
        vocab_size=97,
        n_positions=16,
        n_embd=32,
        n_layer=layers,
        n_head=4,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config).eval()


def tiny_llama(layers: int = 2, kv_heads: int = 2):
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        max_position_embeddings=32,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval()


def logits_close(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-5) -> bool:
    return a.shape == b.shape and bool((a - b).abs().max() < atol) and math.isfinite(float(a.abs().max()))


# --- a GQA Llama with fused qkv and gate_up (k and v smaller than q) --------------------------


class FusedAttention(nn.Module):
    def __init__(self, d: int, heads: int, kv_heads: int):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, d // heads
        self.qkv = nn.Linear(d, (heads + 2 * kv_heads) * self.head_dim, bias=False)
        self.proj = nn.Linear(d, d, bias=False)

    def forward(self, x, cos, sin):
        sizes = [self.heads * self.head_dim, self.kv_heads * self.head_dim, self.kv_heads * self.head_dim]
        q, k, v = self.qkv(x).split(sizes, dim=-1)
        return self.proj(grouped_attention(q, k, v, cos, sin, self.heads, self.kv_heads, self.head_dim))


class FusedMLP(nn.Module):
    def __init__(self, d: int, hidden: int):
        super().__init__()
        self.gate_up = nn.Linear(d, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, d, bias=False)

    def forward(self, x):
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class FusedBlock(nn.Module):
    def __init__(self, d, heads, kv_heads, hidden, eps):
        super().__init__()
        self.norm1, self.attn = RMSNorm(d, eps), FusedAttention(d, heads, kv_heads)
        self.norm2, self.mlp = RMSNorm(d, eps), FusedMLP(d, hidden)

    def forward(self, x, cos, sin):
        x = x + self.attn(self.norm1(x), cos, sin)
        return x + self.mlp(self.norm2(x))


class FusedLlama(nn.Module):
    def __init__(self, vocab, d, layers, heads, kv_heads, hidden, eps=1e-6, theta=10000.0):
        super().__init__()
        self.tok_emb = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(FusedBlock(d, heads, kv_heads, hidden, eps) for _ in range(layers))
        self.norm = RMSNorm(d, eps)
        self.head = nn.Linear(d, vocab, bias=False)
        self.register_buffer("inv_freq", inverse_frequencies(d // heads, theta), persistent=False)

    def forward(self, ids):
        cos, sin = rotary(ids.shape[1], self.inv_freq)
        x = self.tok_emb(ids)
        for block in self.blocks:
            x = block(x, cos, sin)
        return self.head(self.norm(x))


# --- BERT from scratch (post-norm), and a timm-style ViT with a fused qkv ----------------------


class BertAttention(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.heads = heads

    def forward(self, x, causal: bool = False):
        B, T, C = x.shape
        q, k, v = (p(x).view(B, T, self.heads, C // self.heads).transpose(1, 2) for p in (self.q, self.k, self.v))
        return self.o(F.scaled_dot_product_attention(q, k, v, is_causal=causal).transpose(1, 2).reshape(B, T, C))


class BertBlock(nn.Module):
    def __init__(self, d, heads, hidden, eps):
        super().__init__()
        self.attn, self.norm1 = BertAttention(d, heads), nn.LayerNorm(d, eps=eps)
        self.mlp = nn.Sequential()
        self.mlp.add_module("fc1", nn.Linear(d, hidden))
        self.mlp.add_module("fc2", nn.Linear(hidden, d))
        self.norm2 = nn.LayerNorm(d, eps=eps)

    def forward(self, x):
        x = self.norm1(x + self.attn(x))
        return self.norm2(x + self.mlp.fc2(F.gelu(self.mlp.fc1(x))))


class ScratchBert(nn.Module):
    def __init__(self, vocab, positions, d, layers, heads, hidden, eps=1e-12):
        super().__init__()
        self.tok_emb, self.pos_emb, self.type_emb = (
            nn.Embedding(vocab, d),
            nn.Embedding(positions, d),
            nn.Embedding(2, d),
        )
        self.emb_norm = nn.LayerNorm(d, eps=eps)
        self.blocks = nn.ModuleList(BertBlock(d, heads, hidden, eps) for _ in range(layers))

    def forward(self, ids):
        x = self.tok_emb(ids) + self.pos_emb(torch.arange(ids.shape[1])) + self.type_emb(torch.zeros_like(ids))
        x = self.emb_norm(x)
        for block in self.blocks:
            x = block(x)
        return x


class TimmAttention(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.qkv, self.proj, self.heads = nn.Linear(d, 3 * d), nn.Linear(d, d), heads

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, T, C))


class TimmBlock(nn.Module):
    def __init__(self, d, heads, hidden, eps):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(d, eps=eps), TimmAttention(d, heads)
        self.norm2 = nn.LayerNorm(d, eps=eps)
        self.mlp = nn.Sequential()
        self.mlp.add_module("fc1", nn.Linear(d, hidden))
        self.mlp.add_module("fc2", nn.Linear(hidden, d))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp.fc2(F.gelu(self.mlp.fc1(self.norm2(x))))


class TimmViT(nn.Module):
    def __init__(self, image, patch, channels, d, layers, heads, hidden, eps=1e-12):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, (image // patch) ** 2 + 1, d))
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(channels, d, patch, stride=patch)
        self.blocks = nn.ModuleList(TimmBlock(d, heads, hidden, eps) for _ in range(layers))
        self.norm = nn.LayerNorm(d, eps=eps)

    def forward(self, images):
        x = self.patch_embed.proj(images).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


def tiny_bert():
    import transformers

    config = transformers.BertConfig(
        vocab_size=97,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=16,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(0)
    return transformers.BertModel(config, add_pooling_layer=False).eval()


def tiny_vit():
    import transformers

    config = transformers.ViTConfig(
        image_size=16,
        patch_size=4,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(0)
    return transformers.ViTModel(config, add_pooling_layer=False).eval()
