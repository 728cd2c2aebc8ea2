"""`load`, step by step: each step a few lines of `run_load` or `_plan`, in this order.

1. options: the keywords as one `LoadOptions` record, checked once;
2. open: the source as a lazy `SourceTree` (`sources.open_tree`), no tensor read;
3. align (``align=``): ``rename`` and ``convert`` worked out from structure;
4. rename: source paths through ``rename``;
5. convert: the destination library's declared conversions, then ``convert``, then ``adapt``;
6. plan: walk, rules, ties, problems (`_plan.plan.make_plan`); a strict load with problems stops here;
7. agree: a sharded destination's ranks share their verdict (`in_step`);
8. read and write (`_apply.apply_plan`), and agree again;
9. report.
"""

from __future__ import annotations

import contextlib
import functools

import torch

from ._adapt.pairing import pair_adaptable
from ._adapt.step import adapt_tree, finish_plan, suggest_adapting
from ._align.aligner import align as structural_align
from ._align.alignment import Alignment, by_subtree
from ._apply import add_note_once, apply_plan
from ._distributed.agreement import holds_dtensors, in_step
from ._options import LoadOptions
from ._plan.customised import source_metadata
from ._plan.dest import dest_name
from ._plan.plan import Plan, make_plan
from ._rename import Renamer, rename_tree
from ._report import LoadError, LoadReport, Problem, ProblemKind
from ._runtime import collector_paused, destination_lock
from .convert import convert_tree
from .integrations import declared_library
from .sources import iter_leaves, open_tree
from .sources.tree import open_source


def load(
    dst,
    src,
    *,
    strict: bool = True,
    include=None,
    exclude=None,
    filter=None,
    rename=None,
    convert=None,
    device=None,
    dry_run: bool = False,
    progress: bool | None = None,
    dtype: torch.dtype | str | None = None,
    align=False,
    mmap: bool = False,
    adapt=None,
) -> LoadReport:
    """Copy state from `src` into `dst` in place, walking both trees side by side.

    `dst` is a ``torch.nn.Module`` or any pytree of tensors; `src` is a
    module, a nested or flat mapping (a ``state_dict()``), a list or tuple,
    any optree pytree (namespace ``"structload"``), or the result of
    `structload.state`. Leaves may be tensors, numpy arrays, Python numbers,
    ``None`` (skip) and ``False`` (absent).

    Examples:
        >>> import torch, structload as sl
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2, bias=False))
        >>> pretrained = {"0.weight": torch.ones(8, 4), "0.bias": torch.zeros(8), "2.weight": torch.ones(2, 8)}
        >>> report = sl.load(model, pretrained)
        >>> report.loaded
        ['0.weight', '0.bias', '2.weight']
        >>> bool(model[0].weight.eq(1).all())
        True

        A strict load (the default) that finds any problem raises `LoadError`
        listing every problem by path, and writes nothing:

        >>> sl.load(model, {"0.weight": torch.zeros(8, 3), "2.weight": torch.zeros(2, 8), "3.weight": torch.zeros(1)})
        Traceback (most recent call last):
        ...
        structload._report.LoadError: 2 problems loading into Sequential (1 shape, 1 unexpected)
          0.weight: shape (8, 4) in destination, (8, 3) in source
          3.weight: unexpected in source
        >>> bool(model[0].weight.eq(1).all())  # unchanged
        True

    Options (keyword-only):

    - ``strict=True``: any problem raises `LoadError` and `dst` is left
      unchanged; with ``False`` whatever matches is loaded and the rest is
      listed in the returned report.
    - ``include`` / ``exclude``: glob pattern(s) on dotted destination paths
      (a pattern matching a module covers it); excluded paths are neither
      loaded nor expected, and source entries for them are not unexpected.
    - ``filter``: ``callable(path, node) -> bool`` on destination modules and
      tensors; ``False`` excludes that whole subtree.
    - ``rename``: ``{regex: replacement}`` applied in order with ``re.sub``
      to source paths, or ``callable(path) -> str | None`` (``None`` drops).
    - ``convert``: a list of converters from `structload.convert`
      (``Transpose``, ``Reshape``, ``Split``, ``Concat``, ``Stack``,
      ``Unstack``, ``Apply``) for tensors laid out differently; they run
      after ``rename`` and are checked in the plan like everything else.
      When `dst` is (or contains) a transformers model, the renamings and
      converters transformers declares for its checkpoints run between the two,
      as ``from_pretrained`` runs them (listed in ``report.declared``).
    - ``device``: where ``meta`` tensors of `dst` are materialized (CPU by
      default); real tensors stay where they are.
    - ``dry_run=True``: validate and return the report without writing (a
      strict dry run raises exactly as the real load would).
    - ``progress``: a rich progress bar on stderr; ``None`` shows one only for
      loads over 1 GiB on a terminal.
    - ``align``: ``True``, an `Alignment` or a dict of `align` options: match
      by structure when names differ (another implementation of the same
      model), then load; a strict load with anything unmatched or ambiguous
      raises, and the error ends with the mapping as code to edit.
    - ``mmap=True``: zero copy; ``meta`` tensors of `dst` whose dtype matches the
      file's become copy-on-write views of the memory-mapped file (listed in
      ``report.mapped``); casts, converters that combine tensors and real
      destination tensors are read as usual. The file must not change while
      the model lives.
    - ``dtype``: the dtype ``meta`` tensors of `dst` are materialized in;
      ``"auto"`` keeps the checkpoint's dtype (a bf16 file gives a bf16 model).
    - ``adapt``: ``True``, a list of adapters or ``{glob: adapter}`` from
      `structload.adapt`: source tensors of another shape (input channels, image,
      patch or window size, vocabulary, a new head) are adapted to the
      destination's, after ``rename`` / ``convert`` and checked in the plan; listed
      in ``report.adapted``. Off by default: a shape mismatch is a problem.

    Extended help -- the rules:

    - R1 tensor -> tensor: shapes must be equal; values are cast to the
      destination's dtype and moved to its device; each cast is reported.
    - R2 ``None`` in the source skips that leaf or subtree (reported as skipped).
    - R3 absent tensors (registered as ``None``, a ``False`` leaf, a source
      module built with ``bias=False``, or a matching source node with no
      ``bias`` entry): an absent source bias zeroes the destination's bias (only
      additive offsets: a missing norm weight or running statistic is a
      problem); a source tensor -> absent destination is dropped if all zeros,
      else a problem.
    - R4 a tensor reachable at several paths (tied weights) is written once;
      different source values for its paths are a ``tied`` problem, and
      providing one of them is enough.
    - R5 state is what ``state_dict()`` holds (parameters, persistent
      buffers) plus ``_extra_state`` when the source has it; a source entry
      for a non-persistent buffer is ignored (``report.ignored``).
    - Patterns (``include``, ``exclude``, ``rename`` keys) that match nothing
      are ``pattern`` problems; modules that load their state their own way
      (quantized modules, unknown load hooks) are problems at their path; no
      tensor is left on ``meta`` without a problem naming it.
    - R6 every check runs before the first write.
    """
    options = LoadOptions(  # 1. the options, checked once
        strict=strict,
        include=include,
        exclude=exclude,
        filter=filter,
        rename=rename,
        convert=convert,
        device=device,
        dry_run=dry_run,
        progress=progress,
        dtype=dtype,
        align=align,
        mmap=mmap,
        adapt=adapt,
    )
    return run_load(dst, src, options)


def run_load(dst, src, options: LoadOptions) -> LoadReport:
    """`load` from step 2 on, given its options (``structload check`` builds its own record)."""
    stage = [NOTHING_WRITTEN]
    if options.aligns:
        with _interruptions_noted(stage):
            src = open_source(src)  # 2. open, here once for the alignment and the load
            options = _aligned(dst, src, options)  # 3. align
    collective = holds_dtensors(dst)  # sharded: every rank must reach the same verdict
    target = dest_name(dst)
    with _interruptions_noted(stage), destination_lock(dst), collector_paused():  # see structload._runtime
        # 2-6. open, rename, convert, plan; 7. the ranks agree (`in_step`) before anything is written
        plan = in_step(collective, target, functools.partial(_plan, dst, src, options))
        if not options.dry_run:  # 8. read and write, then agree again
            in_step(collective, target, functools.partial(apply_plan, plan, options.target_device, options.progress))
            stage[0] = "after writing every tensor"
        report = plan.report(applied=not options.dry_run)  # 9. the report
        del plan  # freed by reference counting before the collector comes back, not scanned by it
    return report


def _aligned(dst, src, options: LoadOptions) -> LoadOptions:
    """The options with the alignment's ``rename`` and ``convert`` (the user's converters after its
    own); a strict load raises here when the alignment left anything unmatched or ambiguous."""
    alignment = _alignment(dst, src, options)
    if options.adapts:  # leftovers of another shape an adapter pairs
        alignment = pair_adaptable(alignment, dst, src, options.adapt, options.rename)
    if options.strict and not alignment.ok:
        problems = alignment_problems(alignment)
        report = LoadReport(target=dest_name(dst), problems=problems, applied=False)
        message = str(LoadError(problems, report)) + "\n\nthe mapping found so far, to edit:\n" + alignment.code()
        raise LoadError(problems, report, message=message)
    return options.with_mapping(alignment.rename, list(alignment.convert) + list(options.convert or []))


def _alignment(dst, src, options: LoadOptions) -> Alignment:
    """The `Alignment` a load with ``align=`` uses: the one given, or one worked out here."""
    if isinstance(options.align, Alignment):
        return options.align
    extra = dict(options.align) if isinstance(options.align, dict) else {}
    for key in ("include", "exclude", "filter", "rename"):
        extra.setdefault(key, getattr(options, key))
    return structural_align(dst, src, **extra)


def alignment_problems(alignment: Alignment) -> list[Problem]:
    """What stops a strict load with ``align=``: every unmatched, ambiguous or diverging part."""
    problems = []
    if alignment.divergence:
        problems.append(Problem(ProblemKind.MISSING, "", f"the models diverge: {alignment.divergence}"))
    problems += [
        Problem(ProblemKind.PATTERN, g, alignment.hint_problems.get(g, "align hint refused"))
        for g in alignment.unmatched_hints
    ]
    for ambiguity in alignment.ambiguous:
        message = f"ambiguous with {', '.join(ambiguity.src)}: {ambiguity.reason}; pin it with hints= or rename="
        problems.append(Problem(ProblemKind.AMBIGUOUS, ", ".join(ambiguity.dst), message))
    claimed_dst = alignment.claimed_dst or {m.dst for m in alignment.matched}
    claimed_src = alignment.claimed_src or {s for m in alignment.matched for s in m.src}
    for path, n in by_subtree(alignment.unmatched_dst, claimed_dst):  # one problem per subtree
        message = "no source tensor matches it" if n == 1 else f"no source tensor matches any of its {n} tensors"
        problems.append(Problem(ProblemKind.MISSING, path, message))
    for path, n in by_subtree(alignment.unmatched_src, claimed_src):
        message = "matches no destination tensor" if n == 1 else f"none of its {n} tensors matches a destination tensor"
        problems.append(Problem(ProblemKind.UNEXPECTED, path, message))
    return problems


NOTHING_WRITTEN = "before writing anything; the destination is unchanged"


@contextlib.contextmanager
def _interruptions_noted(stage: list[str]):
    """An interruption (Ctrl-C) anywhere in a load gets a note saying how far it got: `stage`
    holds where the load is (the writes add their own, finer note: how many were written)."""
    try:
        yield
    except Exception:
        raise
    except BaseException as interruption:
        add_note_once(interruption, f"structload: the load was interrupted {stage[0]}")
        raise


def _plan(dst, src, options: LoadOptions) -> Plan:
    """Steps 2 and 4 to 6 of a load: open the source, rename, convert, adapt and plan (no writes); a
    strict load with problems raises here, before anything is written."""
    source = open_tree(src)  # 2. open (an aligned load's source is open already), with what it knows of itself
    tree = source.node
    earlier: list[Problem] = []  # problems of the steps before the plan, listed first
    renamer = options.renamer
    before_rename = (tree, renamer) if renamer is not None else None  # for converters naming old paths
    if renamer is not None:  # 4. rename
        renamed = rename_tree(tree, renamer)
        if isinstance(renamer, Renamer) and not renamer.all_used:
            earlier += renamer.unmatched([p for p, _ in iter_leaves(tree)])
        tree = renamed
    declared: list[str] = []
    if declared_library(dst) is not None and not isinstance(src, torch.nn.Module):  # a module holds its own layout
        tree, declared_problems, declared = _declared(tree, dst)  # 5. convert: the library's, then the user's
        earlier += declared_problems
    if options.convert is not None:
        tree, converter_problems = convert_tree(tree, options.convert, before_rename)
        earlier += converter_problems
    adaptation = adapt_tree(dst, tree, options.adapt) if options.adapts else None
    if adaptation is not None:
        tree, earlier = adaptation.tree, earlier + adaptation.problems
    plan = make_plan(  # 6. plan: walk, rules, ties, problems
        dst,
        tree,
        options.selection,
        earlier,
        dtype=options.dtype,
        meta_is_final=options.meta_is_final,
        mmap=options.maps,
        metadata=functools.partial(source_metadata, src, source),  # versions, for modules' own loading code
        source=source,  # its pickled types go to the report
    )
    plan.declared = declared
    if adaptation is not None:
        finish_plan(plan, adaptation)
    elif plan.problems:
        suggest_adapting(plan)
    if options.strict and plan.problems:
        raise LoadError(plan.problems, plan.report(applied=False))
    return plan


def _declared(tree, dst):
    """The conversions `dst`'s library declares for its checkpoints, applied to the source tree
    (see `structload.integrations`); imported only for such a destination."""
    from .integrations.transformers import apply_declared

    return apply_declared(tree, dst)
