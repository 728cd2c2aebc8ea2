"""`verify`: run a loaded model and a reference on the same inputs, and name the first module that
computes something else.

The pieces, one concept a module: `_pairing` (which module is compared with which), `_lockstep`
(both forward passes side by side, hooks keeping only what is compared now), `_compare` (outputs
leaf by leaf, inputs up to order), `_causes` (the divergence's message), `_record` (`Verification`
and its drawing), `_evidence` (verification as evidence for `align`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from .._align.alignment import Alignment
from .._rename import Renamer, compile_rename
from .._report import Problem
from ._causes import Observed, explain
from ._compare import compare_outputs, inputs_agreement, outputs_reordered
from ._lockstep import Key, Lockstep, Ran
from ._pairing import module_pairs
from ._record import Compared, Divergence, Unpaired, Verification

__all__ = ["Compared", "Divergence", "Unpaired", "Verification", "verify"]


def verify(model, reference, *args, rtol: float = 1e-4, atol: float = 1e-5, rename=None, align=None, **kwargs):
    """Run `model` and `reference` on the same inputs and compare what every paired module computes.

    Both run in eval mode under ``torch.no_grad()`` (each module's training flag is restored
    after), with forward hooks on every module. Modules pair by path, or through ``rename=`` (as in
    `load`: reference paths to model paths), an `Alignment` or ``align=True``. Outputs are compared
    leaf by leaf (tensors, tuples, dicts, dataclasses, transformers' ``ModelOutput``; ``None``
    skipped) with ``torch.isclose``'s `rtol` and `atol`, in the order the model runs them.

    Examples:
        >>> import torch, structload as sl
        >>> torch.manual_seed(0) and None
        >>> reference = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
        >>> state = reference.state_dict()
        >>> state["0.weight"] = state["0.weight"].T  # square: loads without a shape error
        >>> sl.load(model, state).ok
        True
        >>> result = sl.verify(model, reference, torch.randn(3, 4))
        >>> result.ok, result.first_divergence.path
        (False, '0')
        >>> print(result.first_divergence.message.splitlines()[1].split(":")[0])
        With its square weight transposed it agrees
        >>> sl.load(model, reference).ok
        True
        >>> sl.verify(model, reference, torch.randn(3, 4)).ok
        True

    Returns a `Verification`: ``ok`` (every paired module agreed), ``first_divergence`` (the first
    module whose inputs agree and whose outputs do not, with a message naming its tensors and the
    usual causes), ``compared`` (every paired call with its error) and ``unpaired`` (modules that ran
    on one side only: listed, never guessed).
    """
    _check_runnable(model, "model")
    _check_runnable(reference, "reference")
    mapping = _mapping(model, reference, rename, align)
    pairs = module_pairs(model, reference, mapping)
    modules, reference_modules = dict(model.named_modules()), dict(reference.named_modules())
    result = Verification(rtol=rtol, atol=atol, problems=_unused_rename(mapping, reference))
    first: list[Divergence] = []
    fallback: list[tuple[Key, Key, Compared]] = []  # the first disagreeing call, its inputs differing

    def on_pair(key: Key, reference_key: Key, mine: Ran, theirs: Ran) -> None:
        error = compare_outputs(mine.output, theirs.output, rtol, atol)
        compared = Compared(key[0], reference_key[0], key[1], error.max_abs, error.max_rel, error.shapes, error.agree)
        result.compared.append(compared)
        if error.agree or first:
            return
        inputs = inputs_agreement(mine.inputs, theirs.inputs, rtol, atol)
        if inputs == "differ":  # caused upstream; kept in case no module upstream diverges
            fallback[:] = fallback or [(key, reference_key, compared)]
            return
        module, other = modules[key[0]], reference_modules[reference_key[0]]
        seen = _observe(module, key[0], mine, theirs, inputs, result, rtol, atol)
        seen.alone = [p for side, p in lockstep.ran_alone if side == "model" and _inside(p, key[0])]
        seen.alone_reference = [
            p for side, p in lockstep.ran_alone if side == "reference" and _inside(p, reference_key[0])
        ]
        first.append(_divergence(compared, explain(module, key[0], other, reference_key[0], seen), seen))

    lockstep = Lockstep(pairs, on_pair)
    with _evaluating(model), _evaluating(reference):
        lockstep.run(model, reference, args, kwargs)
    result.unpaired = [Unpaired(side, path) for side, path in dict.fromkeys(lockstep.ran_alone)]
    if first or fallback:
        result.first_divergence = first[0] if first else _upstream(*fallback[0], modules, reference_modules)
    return result


def _unused_rename(mapping, reference: torch.nn.Module) -> list[Problem]:
    """A ``pattern`` problem for each ``rename=`` key that renamed no reference path (as `load`
    reports it): modules it was meant to pair were compared by path, or not at all."""
    if not isinstance(mapping, Renamer) or mapping.all_used:
        return []
    paths = [*reference.state_dict(keep_vars=True), *(path for path, _ in reference.named_modules() if path)]
    return [
        Problem(p.kind, p.path, p.message.replace("no source path", "no path of the reference"))
        for p in mapping.unmatched(paths)
    ]


def _check_runnable(module, side: str) -> None:
    """A module, with no tensor left on meta (its forward would fail deep inside, naming none)."""
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"verify: the {side} must be a torch.nn.Module, got {type(module).__name__}")
    for path, tensor in [*module.named_parameters(), *module.named_buffers()]:
        if tensor.is_meta:
            raise ValueError(f"verify: the {side}'s '{path}' is on the meta device; load its weights first")


def _upstream(key: Key, reference_key: Key, compared: Compared, modules, reference_modules) -> Divergence:
    """The first disagreeing module when every disagreeing one already had other inputs."""
    message = (
        "Its inputs already differ from the reference's: the cause is upstream, in a module that ran on "
        "one side only or in the computation of its inputs.\n"
        + explain(modules[key[0]], key[0], reference_modules[reference_key[0]], reference_key[0], Observed())
    )
    return _divergence(compared, message, Observed())


def _inside(path: str, ancestor: str) -> bool:
    return path != ancestor and (not ancestor or path.startswith(ancestor + "."))


def _divergence(compared: Compared, message: str, seen: Observed) -> Divergence:
    return Divergence(
        compared.path,
        compared.reference_path,
        compared.max_abs,
        compared.max_rel,
        compared.shapes,
        message,
        seen.inputs_reordered,
    )


def _observe(module, path: str, mine: Ran, theirs: Ran, inputs: str, result: Verification, rtol, atol) -> Observed:
    """What the message can tell about the diverging module, from its inputs, outputs and children."""
    seen = Observed(inputs_reordered=inputs == "reordered")
    seen.outputs_reordered = outputs_reordered(mine.output, theirs.output, rtol, atol)
    if isinstance(module, torch.nn.Linear) and inputs == "agree" and mine.inputs:
        seen.transposed_agrees = _agrees_transposed(module, mine.inputs[0], theirs.output, rtol, atol)
    below = [c for c in result.compared if c.path != path and c.path.startswith(path + "." if path else "")]
    children = {c.path: c for c in below if c.path.count(".") == (path.count(".") + 1 if path else 0)}
    seen.children = [(c.path, c.reference_path, c.agree) for c in children.values()]
    return seen


def _agrees_transposed(linear: torch.nn.Linear, x: torch.Tensor, expected, rtol: float, atol: float) -> bool:
    """Whether a linear layer with a square weight computes the reference's output once transposed."""
    weight = linear.weight
    if weight.shape[0] != weight.shape[1]:
        return False
    with torch.no_grad():
        flipped = torch.nn.functional.linear(x, weight.T, linear.bias)
    return compare_outputs(flipped, expected, rtol, atol).agree


def _mapping(model, reference, rename, align):
    """Reference tensor path -> model tensor path, or ``None`` to pair modules by path."""
    if isinstance(rename, Alignment):
        align, rename = rename, None
    if align is not None and align is not False:
        if align is True or isinstance(align, dict):
            from .._align.aligner import align as structural_align

            align = structural_align(model, reference, **(align if isinstance(align, dict) else {}))
        if not isinstance(align, Alignment):
            raise TypeError(f"align must be True, an Alignment or a dict of align options, got {type(align).__name__}")
        return _matched(align)
    renamer = compile_rename(rename)
    return renamer


def _matched(alignment: Alignment):
    """The one-to-one matches of an alignment, as a mapping (split and concatenated tensors left out)."""
    sources: dict[str, list[str]] = {}
    for match in alignment.matched:
        if len(match.src) == 1:
            sources.setdefault(match.src[0], []).append(match.dst)
    table = {src: dsts[0] for src, dsts in sources.items() if len(dsts) == 1}
    return table.get


@contextlib.contextmanager
def _evaluating(root: torch.nn.Module) -> Iterator[None]:
    """Every module in eval mode, each one's own training flag restored after."""
    flags = [(module, module.training) for module in root.modules()]
    root.eval()
    try:
        yield
    finally:
        for module, training in flags:
            module.training = training
