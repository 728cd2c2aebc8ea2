"""One plain-torch decoder, written independently (another person's naming: ``embed``,
``blocks.N.attn.q``, ``mlp.gate`` / ``up`` / ``down``, ``final_norm``, ``head``), loaded from
transformers' own Mistral (untied head) and Qwen2 (q / k / v biases, a tied head stored not at
all) from tiny configs; one mapping, with the head's rule marked ``sl.optional``, serves both
(API.md §11). Every port compares logits with the reference within 1e-5."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from align_check import code_loads_what_align_loads  # noqa: F401  (every alignment's code() is executed)
from ports import grouped_attention, inverse_frequencies, logits_close, rotary

import structload as sl
from helpers import assert_unchanged, snapshot

transformers = pytest.importorskip("transformers")

IDS = torch.tensor([[1, 5, 9, 22, 40, 3, 7, 8], [2, 2, 60, 61, 62, 90, 4, 0]])
SIZES = {"vocab_size": 97, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2}
HEADS = {"num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-6}


class Norm(nn.Module):
    def __init__(self, d: int, eps: float):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(d)), eps

    def forward(self, x):
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)


class Attention(nn.Module):
    def __init__(self, d: int, heads: int, kv_heads: int, qkv_bias: bool):
        super().__init__()
        self.shape = (heads, kv_heads, d // heads)
        self.q = nn.Linear(d, d, bias=qkv_bias)
        self.k = nn.Linear(d, kv_heads * (d // heads), bias=qkv_bias)
        self.v = nn.Linear(d, kv_heads * (d // heads), bias=qkv_bias)
        self.o = nn.Linear(d, d, bias=False)

    def forward(self, x, cos, sin):
        return self.o(grouped_attention(self.q(x), self.k(x), self.v(x), cos, sin, *self.shape))


class GatedMLP(nn.Module):
    def __init__(self, d: int, hidden: int):
        super().__init__()
        self.gate, self.up = nn.Linear(d, hidden, bias=False), nn.Linear(d, hidden, bias=False)
        self.down = nn.Linear(hidden, d, bias=False)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    def __init__(self, d, heads, kv_heads, hidden, eps, qkv_bias):
        super().__init__()
        self.attn_norm, self.attn = Norm(d, eps), Attention(d, heads, kv_heads, qkv_bias)
        self.mlp_norm, self.mlp = Norm(d, eps), GatedMLP(d, hidden)

    def forward(self, x, cos, sin):
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.mlp(self.mlp_norm(x))


class Decoder(nn.Module):
    """A Llama-style decoder as a user writes it; `tied` shares the head with the embedding."""

    def __init__(self, config, qkv_bias: bool = False, tied: bool = False):
        super().__init__()
        d, eps = config.hidden_size, config.rms_norm_eps
        heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.embed = nn.Embedding(config.vocab_size, d)
        block = (d, heads, kv_heads, config.intermediate_size, eps, qkv_bias)
        self.blocks = nn.ModuleList(Block(*block) for _ in range(config.num_hidden_layers))
        self.final_norm = Norm(d, eps)
        self.head = nn.Linear(d, config.vocab_size, bias=False)
        if tied:
            self.head.weight = self.embed.weight
        theta = config.rope_parameters["rope_theta"]
        self.register_buffer("inv_freq", inverse_frequencies(d // heads, theta), persistent=False)

    def forward(self, ids):
        cos, sin = rotary(ids.shape[1], self.inv_freq)
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x, cos, sin)
        return self.head(self.final_norm(x))


def reference(kind: str, folder):
    torch.manual_seed(0)
    if kind == "mistral":
        config = transformers.MistralConfig(**SIZES, **HEADS, tie_word_embeddings=False)
        model = transformers.MistralForCausalLM(config)
    else:
        config = transformers.Qwen2Config(**SIZES, **HEADS, tie_word_embeddings=True)
        model = transformers.Qwen2ForCausalLM(config)
    model.eval().save_pretrained(folder)
    with torch.no_grad():
        return config, model(IDS).logits


def logits(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(IDS)


@pytest.fixture(scope="module")
def mistral(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mistral")
    return folder, *reference("mistral", folder)


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qwen2")
    return folder, *reference("qwen2", folder)


def test_mistral_into_an_independently_written_decoder(mistral):
    folder, config, expected = mistral
    model = Decoder(config)
    alignment = sl.align(model, str(folder))
    assert alignment.ok, alignment.code()
    assert {m.dst: m.src for m in alignment.matched}["blocks.1.mlp.gate.weight"] == (
        "model.layers.1.mlp.gate_proj.weight",
    )
    assert sl.load(model, str(folder), align=alignment).ok
    assert logits_close(logits(model), expected)


def test_qwen2_with_biases_and_a_tied_head_stored_not_at_all(qwen2):
    folder, config, expected = qwen2
    model = Decoder(config, qkv_bias=True, tied=True)
    alignment = sl.align(model, str(folder))
    assert alignment.ok, alignment.code()
    by_dst = {m.dst: m for m in alignment.matched}
    assert by_dst["blocks.0.attn.k.bias"].src == ("model.layers.0.self_attn.k_proj.bias",)
    assert any(e.startswith("tied to") for e in by_dst["head.weight"].evidence)
    assert sl.load(model, str(folder), align=alignment).ok
    assert logits_close(logits(model), expected)


def test_one_mapping_with_an_optional_head_rule_serves_mistral_and_qwen2(mistral, qwen2):
    """The mapping worked out on Mistral names the head; Qwen2 stores none. Unmarked, that rule is
    a pattern problem (and nothing is written); marked `sl.optional`, the same mapping loads both."""
    (m_folder, m_config, m_expected), (q_folder, q_config, q_expected) = mistral, qwen2
    alignment = sl.align(Decoder(m_config), str(m_folder))
    [head_rule] = [key for key in alignment.rename if "lm_head" in key]
    untied = Decoder(q_config, qkv_bias=True, tied=True)
    before = snapshot(untied)
    with pytest.raises(sl.LoadError) as info:
        sl.load(untied, str(q_folder), rename=alignment.rename, convert=alignment.convert)
    assert any(p.kind == "pattern" and "lm_head" in p.path for p in info.value.problems)
    assert_unchanged(untied, before)

    family = {(sl.optional(key) if key == head_rule else key): value for key, value in alignment.rename.items()}
    for model, folder, expected in (
        (Decoder(m_config), m_folder, m_expected),
        (Decoder(q_config, qkv_bias=True, tied=True), q_folder, q_expected),
    ):
        assert sl.load(model, str(folder), rename=family, convert=alignment.convert).ok
        assert logits_close(logits(model), expected)
