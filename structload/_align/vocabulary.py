"""The naming conventions `align` knows, as data: which role a tensor plays, by its module's name.

A role is what a tensor does in a transformer-like model (``q``, ``up``,
``norm_attn``, ``embed_tokens``...). `role_of` reads it from the end of a
tensor's module path: the longest alias that matches the last components
wins, and some aliases need a context (``c_proj`` is the attention output
under ``attn``, the MLP's down projection under ``mlp``). A name with no
entry here gives no name evidence; `align` then relies on exact names and
shapes, and reports what stays ambiguous.

Meta's ``w1`` / ``w3`` (the gate and up projections, same shape) are
deliberately only a *family*: nothing in the names says which is which.

Names are compared as tokens, not spellings (`token`): case, ``_`` / ``-`` and
the synonyms of `SYNONYMS` are normalised away, so ``ln_1``, ``ln1``,
``layer_norm1`` and ``norm1`` are one name, as are ``pooler`` / ``pool`` and
``embeddings.LayerNorm`` / ``embed.norm``.

>>> role_of("h.0.ln1"), role_of("layers.0.layer_norm2"), role_of("embed.norm"), role_of("pool.proj")
('norm_attn', 'norm_mlp', 'embed_norm', 'pooler')
>>> role_of("transformer.h.0.attn.c_attn"), role_of("mlp.c_proj"), role_of("layers.0.feed_forward.w1")
('qkv', 'down', 'mlp_in')
>>> role_of("encoder.layer.0.attention.output.dense"), role_of("encoder.layer.0.output.dense")
('o', 'down')
"""

from __future__ import annotations

import functools

ATTENTION = frozenset({"attn", "attention", "self_attn", "self_attention", "sa", "mha"})
MLP = frozenset({"mlp", "ffn", "feed_forward", "feedforward", "ff", "fc", "intermediate"})

#: role -> aliases; an alias is one or more trailing module names, optionally with a context
#: (``"attn:c_proj"``: only when an attention module comes before it).
ROLES: dict[str, tuple[str, ...]] = {
    "q": ("q", "query", "q_proj", "wq", "to_q", "q_lin", "linear_q"),
    "k": ("k", "key", "k_proj", "wk", "to_k", "k_lin", "linear_k"),
    "v": ("v", "value", "v_proj", "wv", "to_v", "v_lin", "linear_v"),
    # in_proj: nn.MultiheadAttention's fused parameter, looked up by its own name
    "qkv": ("qkv", "c_attn", "qkv_proj", "wqkv", "in_proj", "query_key_value"),
    "kv": ("kv", "kv_proj", "to_kv"),
    "o": (
        "o",
        "o_proj",
        "out_proj",
        "wo",
        "to_out",
        "out_lin",
        "attn:c_proj",
        "attn:proj",
        "attention.output.dense",
        "attn:dense",
        "attn:out",
        "SelfAttention.o",
        "EncDecAttention.o",
    ),
    "gate": ("gate", "gate_proj", "w_gate", "wi_0"),  # T5 v1.1: wi_0 is gated, wi_1 is the up projection
    "up": (
        "up",
        "up_proj",
        "fc1",
        "c_fc",
        "fc_in",
        "w_up",
        "lin1",
        "intermediate.dense",
        "dense_h_to_4h",
        "wi_1",
        "mlp:fc",
        "linear1",  # torch's nn.TransformerEncoderLayer
    ),
    "gate_up": ("gate_up", "gate_up_proj"),
    "down": (
        "down",
        "down_proj",
        "fc2",
        "mlp:c_proj",
        "mlp:proj",
        "fc_out",
        "mlp:wo",
        "DenseReluDense.wo",
        "linear2",
        "w2",
        "lin2",
        "output.dense",
        "dense_4h_to_h",
    ),
    "mlp_in": ("w1", "w3"),
    "norm_attn": (
        "ln_1",
        "norm1",
        "input_layernorm",
        "attention_norm",
        "attn_norm",
        "layernorm_before",
        "ln_attn",
        "attention.output.layernorm",
        "attention.layernorm",
        "sa_layer_norm",
        "self_attn_layer_norm",
        "attn_ln",
        "norm_attn",
        "pre_attn_norm",
    ),
    "norm_mlp": (
        "ln_2",
        "norm2",
        "post_attention_layernorm",
        "ffn_norm",
        "mlp_norm",
        "layernorm_after",
        "ln_mlp",
        "output.layernorm",
        "output_layer_norm",
        "mlp_ln",
        "norm_mlp",
        "pre_mlp_norm",
    ),
    "embed_tokens": (
        "wte",
        "tok_embeddings",
        "word_embeddings",
        "embed_tokens",
        "tok_emb",
        "token_embedding",
        "shared",
    ),
    "embed_pos": (
        "wpe",
        "position_embeddings",
        "pos_emb",
        "pos_embed",
        "position_embedding",
        "embed_positions",
        "positional_embedding",
    ),
    "embed_type": ("token_type_embeddings", "type_emb", "segment_embeddings", "token_type_embedding"),
    "embed_norm": ("embeddings.layernorm", "emb_norm", "emb_ln", "ln_emb", "embed_norm", "embed.norm"),
    "norm_final": (
        "ln_f",
        "norm",
        "final_layer_norm",
        "final_norm",
        "layernorm",
        "norm_f",
        "ln_final",
        "final_layernorm",
        "norm_out",
        "post_layernorm",
        "ln_post",
        "emb_layer_norm_after",
    ),
    "head": ("lm_head", "output", "head", "classifier", "fc", "out_head"),
    "text_projection": ("text_projection", "text_proj", "proj_text"),
    "patch_embed": ("patch_embed.proj", "patch_embeddings.projection", "conv_proj", "patch_embedding"),
    "cls_token": ("cls_token", "class_token"),
    "pooler": ("pooler.dense", "pooler", "pool.proj"),
}

#: Words that mean the same thing inside a name, by their normal token (compared after `token`
#: has lowered the case and dropped separators): ``layer_norm1`` reads as ``norm1``.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "norm": ("layernorm", "ln", "rmsnorm", "layer_norm"),
    "pool": ("pooler", "pooling"),
    "embed": ("embeddings", "embedding", "embeds", "emb"),
    "attn": ("attention", "self_attn", "selfattention", "self_attention"),
    "mlp": ("ffn", "feed_forward", "feedforward", "densereludense"),
    "proj": ("projection", "dense"),
    "downsample": ("shortcut",),
    "conv": ("convolution",),
    "bn": ("batchnorm", "normalization"),
}

#: A fused role, and the roles of its parts in the order they are stored.
FUSED: dict[str, tuple[str, ...]] = {"qkv": ("q", "k", "v"), "kv": ("k", "v"), "gate_up": ("gate", "up")}

#: A family and the roles it may stand for (names that do not say which).
FAMILIES: dict[str, tuple[str, ...]] = {"mlp_in": ("gate", "up")}

#: Words that name a kind of layer (as tokens, digits dropped): the first one in a path says
#: which siblings a layer is counted among (`_align_position`): ``conv`` for torchvision's
#: ``conv2`` and for transformers' ``layer.1.convolution``, ``downsample`` for its ``shortcut``.
KINDS = frozenset({"conv", "bn", "norm", "linear", "fc", "downsample", "lstm", "gru", "rnn", "attn", "mlp", "embed"})

#: Parameter names that mean the same thing.
PARAMS = {"gamma": "weight", "scale": "weight", "g": "weight", "beta": "bias", "b": "bias", "w": "weight"}


def _synonyms() -> dict[str, str]:
    return {alias.replace("_", ""): word for word, aliases in SYNONYMS.items() for alias in aliases}


_SYNONYM = _synonyms()


@functools.lru_cache(maxsize=8192)
def token(name: str) -> str:
    """One module name as a token: lower case, no separators, synonyms read as one word, a
    trailing number kept (``layer_norm1`` -> ``norm1``, ``LayerNorm`` -> ``norm``, ``wi_0`` -> ``wi0``).

    >>> [token(n) for n in ("ln_1", "ln1", "layer_norm1", "LayerNorm", "pooler", "wi_0")]
    ['norm1', 'norm1', 'norm1', 'norm', 'pool', 'wi0']
    """
    flat = name.lower().replace("_", "").replace("-", "")
    stem = flat.rstrip("0123456789")
    return _SYNONYM.get(stem, stem) + flat[len(stem) :]


ATTENTION_TOKENS = frozenset(token(n) for n in ATTENTION)
MLP_TOKENS = frozenset(token(n) for n in MLP)


def _compile() -> dict[str, list[tuple[tuple[str, ...], str | None, str]]]:
    """The aliases (as tokens) by their last name: longest first, those with a context before
    those without."""
    table: dict[str, list[tuple[tuple[str, ...], str | None, str]]] = {}
    for role, aliases in ROLES.items():
        for alias in aliases:
            context, _, names = alias.rpartition(":")
            parts = tuple(token(n) for n in names.split("."))
            table.setdefault(parts[-1], []).append((parts, context or None, role))
    for entries in table.values():
        entries.sort(key=lambda entry: (-len(entry[0]), entry[1] is None))
    return table


_BY_LAST = _compile()


@functools.lru_cache(maxsize=4096)
def role_of(module_path: str) -> str | None:
    """The role of the tensors of the module at `module_path`, or ``None`` if the names say nothing.

    A parameter that stands for its own module (``cls_token``, ViT's ``position_embeddings``)
    is looked up with its own name as the last component.
    """
    names = [token(n) for n in module_path.split(".") if n and not n.isdigit()]
    for alias, context, role in _BY_LAST.get(names[-1], ()) if names else ():
        n = len(alias)
        if len(names) >= n and tuple(names[-n:]) == alias:
            before = set(names[:-n])
            if context == "attn" and not before & ATTENTION_TOKENS:
                continue
            if context == "mlp" and not before & MLP_TOKENS:
                continue
            return role
    return None


def param_name(name: str) -> str:
    """``weight`` for ``gamma``, ``bias`` for ``beta``: one name per meaning."""
    return PARAMS.get(name, name)
