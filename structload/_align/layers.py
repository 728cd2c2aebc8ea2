"""Recurrent layers as `align` sees them: a multi-layer ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN``
(``weight_ih_l0``, ``weight_ih_l1``...) and a list of one-layer ones (``rnn.0.weight_ih_l0``,
``rnn.1.weight_ih_l0``...) hold the same layers, numbered two ways.

`rnn_param` gives a layer's parameter one name whichever way it is numbered; `layer_of` says
which stack a tensor belongs to and its layer number there; `pair_by_layer` pairs same-shape
candidates by layer number, only when each side is one stack with distinct numbers (two
stacks, or a number missing on one side, stay ambiguous).

>>> rnn_param("weight_ih_l2"), rnn_param("bias_hh_l0_reverse"), rnn_param("weight")
('weight_ih', 'bias_hh_reverse', None)
>>> layer_of("lstm.weight_ih_l2", ["lstm.weight_ih_l0", "lstm.weight_ih_l2"]), layer_of("rnn.1.weight_ih_l0", [])
(('lstm', 2), ('rnn', 1))
"""

from __future__ import annotations

import re

_RNN = re.compile(r"^(weight|bias)_(ih|hh|hr)_l(\d+)(_reverse)?$")


def rnn_param(name: str) -> str | None:
    """The parameter name of a recurrent layer without its layer number, or None for other names."""
    found = _RNN.match(name)
    return None if found is None else f"{found[1]}_{found[2]}{found[4] or ''}"


def layer_of(path: str, siblings: list[str]) -> tuple[str, int] | None:
    """(stack, layer number) of a recurrent layer's tensor: its ``_lN`` in a multi-layer module (one
    whose `siblings` include an ``_l1``), else its index in a list of one-layer modules."""
    module, _, name = path.rpartition(".")
    found = _RNN.match(name)
    if found is None:
        return None
    stacked = any(_RNN.match(p.rpartition(".")[2]) and p.rpartition(".")[0] == module and "_l1" in p for p in siblings)
    if stacked or int(found[3]) > 0:
        return module, int(found[3])
    parent, _, last = module.rpartition(".")
    return (parent, int(last)) if last.isdigit() else (module, 0)


def pair_by_layer(dst: list, src: list) -> list[tuple[object, object, str]] | None:
    """Pairs of same-shape recurrent tensors by layer number, with the evidence, or None when the
    numbers do not decide (not one stack a side, repeated numbers, other numbers on each side)."""
    dst_paths, src_paths = [leaf.path for leaf in dst], [leaf.path for leaf in src]
    dst_layers = [layer_of(p, dst_paths) for p in dst_paths]
    src_layers = [layer_of(p, src_paths) for p in src_paths]
    if None in dst_layers or None in src_layers:
        return None
    for layers in (dst_layers, src_layers):
        numbers = [n for _, n in layers]  # type: ignore[misc]
        if len({stack for stack, _ in layers}) != 1 or len(set(numbers)) != len(numbers):  # type: ignore[misc]
            return None
    by_number = {n: leaf for leaf, (_, n) in zip(src, src_layers)}  # type: ignore[misc]
    if sorted(by_number) != sorted(n for _, n in dst_layers):  # type: ignore[misc]
        return None
    pairs = []
    for leaf, (stack, n) in zip(dst, dst_layers):  # type: ignore[misc]
        other = by_number[n]
        pairs.append((leaf, other, f"layer {n} of '{src_layers[0][0]}' is layer {n} of '{stack}'"))  # type: ignore[index]
    return pairs


_EXACT = re.compile(r"^\^(?P<module>.+)\\\.(?P<name>(?:weight|bias)_(?:ih|hh|hr))_l(?P<n>\d+)(?P<rev>_reverse)?\$$")


def layer_rules(rules: dict) -> dict:
    """`rules` with the per-tensor rules of one stacked recurrent module onto a list of one-layer
    ones (``^lstm\\.weight_ih_l2$`` -> ``rnn.2.weight_ih_l0``...) written as the one rule a person
    writes (``^lstm\\.(weight|bias)_(ih|hh|hr)_l(\\d+)(_reverse)?$`` -> ``rnn.\\3.\\1_\\2_l0\\4``).

    >>> layer_rules({r"^lstm\\.weight_ih_l1$": "rnn.1.weight_ih_l0", r"^lstm\\.bias_hh_l0$": "rnn.0.bias_hh_l0"})
    {'^lstm\\\\.(weight|bias)_(ih|hh|hr)_l(\\\\d+)(_reverse)?$': 'rnn.\\\\3.\\\\1_\\\\2_l0\\\\4'}
    """
    stacks: dict[str, set] = {}
    for key, value in rules.items():
        found = _EXACT.match(key)
        if found is None or not isinstance(value, str):
            continue
        target = re.fullmatch(rf"(.+)\.{found['n']}\.{found['name']}_l0{found['rev'] or ''}", value)
        stacks.setdefault(found["module"], set()).add(target[1] if target else None)
    whole = {module for module, lists in stacks.items() if len(lists) == 1 and None not in lists}
    compact: dict = {}
    for key, value in rules.items():
        found = _EXACT.match(key)
        if found is None or found["module"] not in whole:
            compact[key] = value
            continue
        (target,) = stacks[found["module"]]
        compact[f"^{found['module']}\\.(weight|bias)_(ih|hh|hr)_l(\\d+)(_reverse)?$"] = f"{target}.\\3.\\1_\\2_l0\\4"
    return compact
