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
    "q": ("q", "query", "q_proj", "wq", "to_q", "q_lin"),
    "k": ("k", "key", "k_proj", "wk", "to_k", "k_lin"),
    "v": ("v", "value", "v_proj", "wv", "to_v", "v_lin"),
    "qkv": ("qkv", "c_attn", "qkv_proj", "wqkv"),
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
    ),
    "gate": ("gate", "gate_proj", "w_gate"),
    "up": ("up", "up_proj", "fc1", "c_fc", "fc_in", "w_up", "lin1", "intermediate.dense", "dense_h_to_4h"),
    "gate_up": ("gate_up", "gate_up_proj"),
    "down": (
        "down",
        "down_proj",
        "fc2",
        "mlp:c_proj",
        "mlp:proj",
        "fc_out",
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
        "sa_layer_norm",
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
    ),
    "embed_tokens": ("wte", "tok_embeddings", "word_embeddings", "embed_tokens", "tok_emb", "token_embedding"),
    "embed_pos": ("wpe", "position_embeddings", "pos_emb", "pos_embed", "position_embedding", "embed_positions"),
    "embed_type": ("token_type_embeddings", "type_emb", "segment_embeddings", "token_type_embedding"),
    "embed_norm": ("embeddings.layernorm", "emb_norm", "emb_ln", "ln_emb", "embed_norm"),
    "norm_final": ("ln_f", "norm", "final_layer_norm", "final_norm", "layernorm", "norm_f", "ln_final"),
    "head": ("lm_head", "output", "head", "classifier"),
    "patch_embed": ("patch_embed.proj", "patch_embeddings.projection", "conv_proj", "patch_embedding"),
    "cls_token": ("cls_token", "class_token"),
    "pooler": ("pooler.dense", "pooler"),
}

#: A fused role, and the roles of its parts in the order they are stored.
FUSED: dict[str, tuple[str, ...]] = {"qkv": ("q", "k", "v"), "kv": ("k", "v"), "gate_up": ("gate", "up")}

#: A family and the roles it may stand for (names that do not say which).
FAMILIES: dict[str, tuple[str, ...]] = {"mlp_in": ("gate", "up")}

#: Parameter names that mean the same thing.
PARAMS = {"gamma": "weight", "scale": "weight", "g": "weight", "beta": "bias", "b": "bias", "w": "weight"}


def _compile() -> dict[str, list[tuple[tuple[str, ...], str | None, str]]]:
    """The aliases by their last name, longest first."""
    table: dict[str, list[tuple[tuple[str, ...], str | None, str]]] = {}
    for role, aliases in ROLES.items():
        for alias in aliases:
            context, _, names = alias.rpartition(":")
            parts = tuple(names.split("."))
            table.setdefault(parts[-1], []).append((parts, context or None, role))
    for entries in table.values():
        entries.sort(key=lambda entry: -len(entry[0]))
    return table


_BY_LAST = _compile()


@functools.lru_cache(maxsize=4096)
def role_of(module_path: str) -> str | None:
    """The role of the tensors of the module at `module_path`, or ``None`` if the names say nothing.

    A parameter that stands for its own module (``cls_token``, ViT's ``position_embeddings``)
    is looked up with its own name as the last component.
    """
    names = [n.lower() for n in module_path.split(".") if n and not n.isdigit()]
    for alias, context, role in _BY_LAST.get(names[-1], ()) if names else ():
        n = len(alias)
        if len(names) >= n and tuple(names[-n:]) == alias:
            before = set(names[:-n])
            if context == "attn" and not before & ATTENTION:
                continue
            if context == "mlp" and not before & MLP:
                continue
            return role
    return None


def param_name(name: str) -> str:
    """``weight`` for ``gamma``, ``bias`` for ``beta``: one name per meaning."""
    return PARAMS.get(name, name)
