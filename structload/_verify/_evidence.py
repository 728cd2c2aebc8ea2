"""Verification as evidence for `align`: ``sl.align(dst, src, reference=(module, args))``.

Structure cannot tell Meta's ``w1`` / ``w3`` from ``gate_proj`` / ``up_proj``: same shapes, no name
in common. A reference that computes the right answer can. For every assignment of each ambiguity's
source tensors to its destination tensors, the alignment is worked out again with that assignment
pinned, loaded into a scratch copy of the destination (never into the destination itself) and
verified against the reference. An ambiguity is resolved only when exactly one assignment makes
every paired module agree; its matches then say ``verified against the reference``. Two agreeing
assignments (or none) leave it ambiguous, with the count in its reason.
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import itertools

import torch

from .._align.alignment import Alignment, Ambiguity

EVIDENCE = "verified against the reference"
MOST_CANDIDATES = 24  # assignments tried at most: each costs a load and two forward passes


def resolve_ambiguities(dst, src, alignment: Alignment, reference, options: dict) -> Alignment:
    """`alignment` with the ambiguities the reference settles resolved (a new `Alignment`)."""
    if not alignment.ambiguous or not isinstance(dst, torch.nn.Module):
        return alignment
    module, args, kwargs = _reference(reference)
    candidates = _assignments(alignment.ambiguous)
    if not candidates or len(candidates) > MOST_CANDIDATES:
        return _unresolved(alignment, f"too many assignments to verify against the reference ({len(candidates)})")
    from .._align.aligner import align
    from .._load import load
    from . import verify

    agreeing = []
    for pins in candidates:
        trial = align(dst, src, **{**options, "hints": {**(options.get("hints") or {}), **pins}})
        if trial.ambiguous:
            continue
        scratch = copy.deepcopy(dst)  # what a discarded candidate writes never reaches `dst`
        try:
            load(scratch, src, align=trial, strict=False)
            agrees = verify(scratch, module, *args, align=trial, **kwargs).ok
        except Exception:  # a candidate that leaves tensors on meta or cannot run is no evidence
            agrees = False
        if agrees:
            agreeing.append((trial, pins))
        del scratch
    if len(agreeing) != 1:
        return _unresolved(alignment, f"{len(agreeing)} of {len(candidates)} assignments agree with the reference")
    trial, pins = agreeing[0]
    return _verified(trial, pins)


def _reference(reference) -> tuple[torch.nn.Module, tuple, dict]:
    """``(module, args)`` or ``(module, args, kwargs)``; a lone tensor stands for ``(tensor,)``."""
    if (
        not isinstance(reference, tuple)
        or len(reference) not in (2, 3)
        or not isinstance(reference[0], torch.nn.Module)
    ):
        raise TypeError("reference must be (module, args) or (module, args, kwargs)")
    args = reference[1] if isinstance(reference[1], (tuple, list)) else (reference[1],)
    kwargs = reference[2] if len(reference) == 3 else {}
    return reference[0], tuple(args), dict(kwargs)


def _assignments(ambiguities: list[Ambiguity]) -> list[dict[str, str]]:
    """Every way of assigning each ambiguity's source tensors to its destination tensors, as hints."""
    per_ambiguity = []
    for ambiguity in ambiguities:
        if len(ambiguity.dst) != len(ambiguity.src):
            return []
        orders = itertools.permutations(ambiguity.src)
        per_ambiguity.append([dict(zip(ambiguity.dst, order)) for order in orders])
    return [
        {k: v for part in combination for k, v in part.items()} for combination in itertools.product(*per_ambiguity)
    ]


def _verified(trial: Alignment, pins: dict[str, str]) -> Alignment:
    """The agreeing alignment, its pinned matches saying why they hold."""
    hinted = {f"hint {dst!r} = {src!r}" for dst, src in pins.items()}
    matched = []
    for match in trial.matched:
        if any(fnmatch.fnmatchcase(match.dst, dst) for dst in pins):
            evidence = tuple(EVIDENCE if e in hinted else e for e in match.evidence)
            match = dataclasses.replace(match, evidence=evidence if EVIDENCE in evidence else (*evidence, EVIDENCE))
        matched.append(match)
    return dataclasses.replace(trial, matched=matched)


def _unresolved(alignment: Alignment, why: str) -> Alignment:
    ambiguous = [dataclasses.replace(a, reason=f"{a.reason}; {why}") for a in alignment.ambiguous]
    return dataclasses.replace(alignment, ambiguous=ambiguous)
