"""The message of a divergence: which tensors were loaded into the module, and what commonly makes
a module of its kind compute something else although its checkpoint loaded without a problem.

Each cause is a short sentence chosen from what was observed (its inputs agree only up to order,
its outputs are the reference's in another order, its weight is square, its children agree) and
from the module's kind (a linear layer, a batch norm, a norm, an embedding, a container).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from .._render.text import display_path, shape_text


@dataclass
class Observed:
    """What the comparison saw around the diverging module."""

    inputs_reordered: bool = False
    outputs_reordered: bool = False
    transposed_agrees: bool = False  # the output agrees when its (square) weight is transposed
    children: list[tuple[str, str, bool]] = field(default_factory=list)  # (path, reference path, agreed)
    alone: list[str] = field(default_factory=list)  # its submodules that ran in the model only
    alone_reference: list[str] = field(default_factory=list)  # the reference module's, in the reference only


def explain(module: torch.nn.Module, path: str, reference: torch.nn.Module, reference_path: str, seen: Observed) -> str:
    """The divergence's message: the loaded tensors, then the likely causes, most specific first."""
    lines = [_loaded(module, path, reference, reference_path)]
    if seen.inputs_reordered:
        lines.append(
            "Its inputs hold the reference's values in another order: a flatten order before this layer "
            "((C, H, W) against (W, H, C) or (H, W, C)); permute the weight's input columns to this "
            "model's order (a structload.convert.Apply)."
        )
    if seen.transposed_agrees:
        lines.append(
            "With its square weight transposed it agrees: the checkpoint stores it as (in, out), as GPT-2's "
            "Conv1D and CLIP's text_projection do; add structload.convert.Transpose for it."
        )
    if seen.outputs_reordered:
        lines.append(
            "Its outputs are the reference's values in another order: the rows of its weight are permuted -- "
            "fused parts (q, k, v / gate, up) concatenated in another order, or a rotary layout (each head's "
            "rows interleaved in pairs against split in halves)."
        )
    lines += _by_kind(module, path, seen)
    return "\n".join(lines)


def _loaded(module: torch.nn.Module, path: str, reference: torch.nn.Module, reference_path: str) -> str:
    own = [(name, tuple(t.shape)) for name, t in _own_tensors(module)]
    theirs = [name for name, _ in _own_tensors(reference)]
    where = f"'{display_path(path)}' ({type(module).__name__})"
    if not own:
        return f"{where} holds no tensor itself; it combines what its submodules compute."
    listed = ", ".join(f"{_join(path, name)} {shape_text(shape)}" for name, shape in own)
    text = f"{where} was loaded with {listed}"
    if theirs and reference_path != path:
        text += f"; the reference's module is '{display_path(reference_path)}' ({', '.join(theirs)})"
    return text + "."


def _by_kind(module: torch.nn.Module, path: str, seen: Observed) -> list[str]:
    name = path.rpartition(".")[2].lower()
    if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
        return [
            "A batch norm in eval mode uses its running statistics: running_mean and running_var swapped "
            "(or weight and bias), statistics from another layer, or another eps."
        ]
    if "norm" in type(module).__name__.lower() or re.search(r"norm|^ln", name):
        return ["A norm: weight and bias swapped, a weight stored as (weight - 1) or another eps."]
    if isinstance(module, torch.nn.Embedding):
        return ["An embedding: rows in another order (another vocabulary), or another padding row."]
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.dim() == 2:
        return _linear(weight, name, seen)
    if isinstance(weight, torch.Tensor) and weight.dim() > 2:
        return [
            "A convolution: its kernel in another layout ((H, W, in, out) from TensorFlow) or with in and out swapped."
        ]
    if seen.children:
        return _container(seen)
    if seen.alone or seen.alone_reference:
        return [_unpaired_below(seen)]
    return ["It holds no weights: an activation, a constant (eps, scale) or a computation that differs."]


def _linear(weight: torch.Tensor, name: str, seen: Observed) -> list[str]:
    causes = []
    rows, columns = weight.shape
    if rows == columns and not seen.transposed_agrees:
        causes.append(
            f"Its weight is square {shape_text(weight.shape)}, so a transposed one loads without a shape "
            "error: a checkpoint storing (in, out) (GPT-2's Conv1D, CLIP's text_projection) needs a Transpose."
        )
    if re.fullmatch(r"w?[qk](_proj)?|query|key", name):
        causes.append(
            "q and k have equal shapes: swapped by the mapping, or their rows in another rotary layout "
            "(Meta's interleaved pairs against transformers' halves)."
        )
    elif re.search(r"gate|up|wi_?[01]|^w[13]$", name):
        causes.append("gate and up (wi_0 / wi_1, w1 / w3) have equal shapes: swapped by the mapping.")
    causes.append("Otherwise: a tensor of the same shape loaded from another source entry.")
    return causes


def _container(seen: Observed) -> list[str]:
    swapped = _swapped(seen.children)
    if swapped:
        (a, ra), (b, rb) = swapped
        return [
            f"Its submodules agree with what they were paired with, but '{display_path(a)}' was loaded from "
            f"'{display_path(ra)}' and '{display_path(b)}' from '{display_path(rb)}': two siblings swapped by "
            "the mapping, each agreeing with what it was loaded from."
        ]
    differing = [display_path(path) for path, _, agreed in seen.children if not agreed]
    if differing:  # they are not the first divergence, so their inputs already differed
        text = f"Its submodules {', '.join(differing[:5])} disagree only because their inputs already do: "
        text += "the difference enters between its submodules"
    else:
        text = "Its paired submodules agree: the difference is in how it combines them"
    if seen.alone:
        text += f", or in what ran in the model only ({_names(seen.alone, 5)})"
    if seen.alone_reference:
        text += f" against what ran in the reference only ({_names(seen.alone_reference, 5)})"
    return [text + ": a rotary layout of q and k, or an activation or constant (eps, scale) that differs."]


def _unpaired_below(seen: Observed) -> str:
    """None of its submodules paired with the reference's: the divergence cannot be located below it."""
    sides = [(seen.alone, "in the model only"), (seen.alone_reference, "in the reference only")]
    listed = "; ".join(f"{where}: {_names(paths)}" for paths, where in sides if paths)
    return (
        f"None of its submodules was paired with one of the reference's ({listed}), so the difference "
        "cannot be located below it: pair them with rename= (reference paths to model paths), an "
        "Alignment or align=True, and verify again."
    )


def _names(paths: list[str], most: int = 6) -> str:
    """The outermost of `paths` (a module's submodules are implied by it), at most `most` named."""
    distinct = list(dict.fromkeys(paths))
    paths = [p for p in distinct if not any(p.startswith(f"{q}.") for q in distinct)]
    shown = ", ".join(display_path(p) for p in paths[:most])
    return shown + (f" and {len(paths) - most} more" if len(paths) > most else "")


def _swapped(children: list[tuple[str, str, bool]]) -> tuple[tuple[str, str], tuple[str, str]] | None:
    """Two paired siblings whose counterparts are in the other order, or carry each other's names."""
    agreeing = [(path, reference) for path, reference, agreed in children if agreed]
    for i, (a, ra) in enumerate(agreeing):
        for b, rb in agreeing[i + 1 :]:
            if _last(a) == _last(rb) and _last(b) == _last(ra) and _last(a) != _last(b):
                return (a, ra), (b, rb)
    for i, (a, ra) in enumerate(agreeing):  # registration order inverted (wq, wk against q_proj, k_proj)
        for b, rb in agreeing[i + 1 :]:
            if _parent(a) == _parent(b) and _parent(ra) == _parent(rb) and _role(ra) == _role(b) != _role(rb):
                return (a, ra), (b, rb)
    return None


def _role(path: str) -> str:
    """``q`` for ``wq``, ``q_proj``, ``query``; the name itself otherwise."""
    name = _last(path).lower()
    for role, pattern in (("q", r"w?q(_proj)?|query"), ("k", r"w?k(_proj)?|key"), ("v", r"w?v(_proj)?|value")):
        if re.fullmatch(pattern, name):
            return role
    return {"w1": "gate", "gate_proj": "gate", "wi_0": "gate", "w3": "up", "up_proj": "up", "wi_1": "up"}.get(
        name, name
    )


def _own_tensors(module: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    tensors = list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))
    return [(name, t) for name, t in tensors if t is not None]


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _last(path: str) -> str:
    return path.rpartition(".")[2]


def _parent(path: str) -> str:
    return path.rpartition(".")[0]
