"""Carrying out a plan: the only place a load writes.

Each write copies one source leaf straight into the destination tensor
(``copy_`` casts and moves as needed), zeroes it (R3) or hands extra state to
``set_extra_state``; consecutive plain copies (an in-memory tensor into a real
one, both in host memory) are made in batches, by one call each
(`copy_together`). A destination tensor on the ``meta`` device is first
materialized on `device` and put back at every path that shares it, as a
real ``nn.Parameter`` keeping its ``requires_grad``; every other parameter
keeps its identity.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from ._distributed.dtensors import local_block
from ._plan.customised import run_post_hooks
from ._plan.dest import Slot, SlotKind
from ._plan.materialized import materialized_dtype
from ._plan.plan import Plan
from ._plan.records import Entry, Status
from ._render.progress import could_show, progress_bar, wants_progress
from ._report import LoadError, LoadReport, Problem, ProblemKind, SourceError
from .sources import ExtraState, MemoryTensor, SourceTensor
from .sources.reading import Read, ReadSession, lazy, reads_from_file


def apply_plan(plan: Plan, device: torch.device, progress: bool | None) -> None:
    """Carry out every write of `plan`; if a source fails mid-way, say exactly what was written.

    The reads are a `ReadSession`'s (`structload.sources.reading`): it checks every file they
    read before the first write and again after the last, and prefetches remote bytes; an
    interruption anywhere in here (Ctrl-C) gets a note saying how far the load got."""
    writes = plan.writes()
    done: list[Entry] = []
    try:
        with ReadSession(_reads(plan, writes), mmap=plan.mmap) as session:
            _write_all(plan, writes, done, device, progress, session)
        _check_after(plan, session)
    except SourceError as error:
        if error.report is None:  # a file changed before the first write: nothing was written
            raise SourceError(f"{error}; nothing was written", path="", report=_written(plan, [])) from None
        raise
    except Exception:
        raise
    except BaseException as interruption:  # Ctrl-C (KeyboardInterrupt), SystemExit: say where it stopped
        stopped_at = writes[len(done)] if len(done) < len(writes) else None
        torn = stopped_at.path if stopped_at is not None and _may_tear(plan, stopped_at) else None
        add_note_once(interruption, _interrupted_note(done, len(writes), torn))
        raise


def _write_all(
    plan: Plan, writes: list[Entry], done: list[Entry], device: torch.device, progress, session: ReadSession
) -> None:
    """The writes, in order, appended to `done` as they are made."""
    showing = could_show(progress)
    total = sum(map(_nbytes, writes)) if showing else 0
    shared = {id(group[0].slot.tensor): [e.slot for e in group] for group in plan.groups}
    verb = "fetching" if session.fetching else "loading"
    bar = progress_bar(wants_progress(progress, total), total, f"{verb} {plan.target}")
    with torch.no_grad(), bar as advance:
        advance = session.progress(advance)
        for batched, run in _runs(writes):
            before = len(done)
            try:
                if batched:
                    copy_together(run, done)
                else:
                    entry, slot = run[0], run[0].slot
                    if entry.path in plan.mapped:
                        install_mmap_view(entry, shared.get(id(slot.tensor), (slot,)), session)
                    else:
                        write_entry(entry, device, plan.dtype, shared.get(id(slot.tensor), (slot,)), session)
                    done.append(entry)
            except Exception as error:  # a file that shrank, a converter's fn, a device out of memory
                failed = run[len(done) - before]
                torn = not batched and _may_tear(plan, failed)
                raise _partial_failure(plan, done, failed, error, torn) from (
                    None if isinstance(error, SourceError) else error
                )
            if showing:
                advance(sum(map(_nbytes, run)))
    if plan.post_hooks:  # modules' own load post-hooks, once each, after the last write
        report = plan.report(applied=True)
        run_post_hooks(plan.post_hooks, report.missing, report.unexpected)


#: Plain copies (`_runs`) are made this many at a time, by one call.
BATCH = 256


def _runs(writes: list[Entry]) -> Iterator[tuple[bool, list[Entry]]]:
    """The writes in order, as ``(batched, entries)``: consecutive plain copies (an in-memory
    source into a real destination tensor, both on the CPU, nothing to decide: the common case)
    in batches of up to `BATCH`, every other write alone. Only host memory: there
    ``torch._foreach_copy_`` copies one tensor after the other, as ``copy_`` one by one does, while
    on a GPU it may copy a batch at once, which would change what a source that shares memory
    with the destination gives."""
    batch: list[Entry] = []
    tensor_slot, loaded = SlotKind.TENSOR, Status.LOADED  # an enum member lookup costs 50 ns: once here
    for entry in writes:
        slot, leaf = entry.slot, entry.leaf
        if (
            slot.kind is tensor_slot
            and type(leaf) is MemoryTensor
            and entry.status is loaded
            and slot.tensor.is_cpu
            and leaf.tensor.is_cpu
        ):
            batch.append(entry)
            if len(batch) == BATCH:
                yield True, batch
                batch = []
            continue
        if batch:
            yield True, batch
            batch = []
        yield False, [entry]
    if batch:
        yield True, batch


def copy_together(run: list[Entry], done: list[Entry]) -> None:
    """Plain copies in one call (``torch._foreach_copy_``: 0.55 µs a tensor on CPU, against 0.97 µs
    for ``copy_`` one by one); if that call fails, again one by one, so that an error names its
    tensor and `done` ends with exactly the copies made before it (copying the same values twice
    changes nothing)."""
    try:
        _foreach_copy([e.slot.tensor for e in run], [e.leaf.tensor for e in run])
    except Exception:
        for entry in run:
            entry.slot.tensor.copy_(entry.leaf.tensor)
            done.append(entry)
        return
    done.extend(run)


def _copy_each(targets: list[torch.Tensor], sources: list[torch.Tensor]) -> None:
    for target, source in zip(targets, sources):
        target.copy_(source)


_foreach_copy = getattr(torch, "_foreach_copy_", _copy_each)


def _reads(plan: Plan, writes: list[Entry]) -> list[Read]:
    """What the writes will read, in order, for the read session: tensors not in memory (one
    pass, no call for those: a load from memory has 20,000 of them)."""
    mapped, memory = plan.mapped, MemoryTensor
    return [
        Read(e.leaf, local_block(e.slot.tensor) if e.slot.kind == SlotKind.SHARDED else None, e.path in mapped)
        for e in writes
        if type(e.leaf) is not memory and lazy(e.leaf) and e.status == Status.LOADED
    ]


def _check_after(plan: Plan, session: ReadSession) -> None:
    """After the last write: every file read is still the file opened, unchanged."""
    try:
        session.check_after()
    except SourceError as error:
        message = f"{error}; every tensor was written, from a file that changed: load again"
        raise SourceError(message, path="", report=plan.report(applied=True)) from None


def add_note_once(interruption: BaseException, note: str) -> None:
    """Add structload's note to an interruption, unless an inner step already said where it stopped."""
    if not any(n.startswith("structload:") for n in getattr(interruption, "__notes__", ())):
        interruption.add_note(note)


def _interrupted_note(done: list[Entry], total: int, torn: str | None = None) -> str:
    last = f"; the last was '{done[-1].path}'" if done else ""
    partly = f"; '{torn}' may be partly written" if torn else ""
    return (
        f"structload: the load was interrupted after writing {len(done)} of {total} tensors{last}{partly}; "
        "the destination is partly loaded"
    )


def _may_tear(plan: Plan, entry: Entry) -> bool:
    """Whether a write that stops midway can leave its tensor partly written: a file tensor is read
    straight into it, piece by piece (any other source is read whole, then copied in one call)."""
    if entry.status != Status.LOADED or entry.path in plan.mapped or entry.slot.kind == SlotKind.EXTRA:
        return False
    return isinstance(entry.leaf, SourceTensor) and reads_from_file(entry.leaf)


def _written(plan: Plan, done: list[Entry]) -> LoadReport:
    """The report of a load that stopped after the writes `done`: exactly what was written."""
    written = {e.path for e in done}
    was_written = written | {e.path for e in plan.entries if e.writer and e.writer in written}
    report = plan.report(applied=True)
    report.loaded = [p for p in report.loaded if p in was_written]
    report.zeroed = [p for p in report.zeroed if p in was_written]
    report.cast = [c for c in report.cast if c.path in was_written]
    report.converted = [c for c in report.converted if c.path in was_written]
    report.adapted = [a for a in report.adapted if a.path in was_written]
    return report


def _partial_failure(plan: Plan, done: list[Entry], failed: Entry, error: Exception, torn: bool = False) -> LoadError:
    """The error of a load that failed while writing, with a report of exactly what was written
    (and, in `torn`, the tensor the failed write may have left partly written).

    A source that could not be read stays a `SourceError`; any other failure
    becomes a `LoadError` chained to it.
    """
    report = _written(plan, done)
    report.torn = [failed.path] if torn else []
    cause = error.problems[0].message if isinstance(error, SourceError) else f"{type(error).__name__}: {error}"
    partly = f"; '{failed.path}' may be partly written (report.torn)" if torn else ""
    message = (
        f"{cause}; the load stopped at '{failed.path}' after writing "
        f"{len(done)} of {len(plan.writes())} tensors (report.loaded lists them){partly}"
    )
    report.problems.append(Problem(ProblemKind.SOURCE, failed.path, message))
    if isinstance(error, SourceError):
        return SourceError(message, path=failed.path, report=report)
    return LoadError(report.problems[-1:], report, message=f"writing '{failed.path}' failed: {message}")


def write_entry(entry: Entry, device: torch.device, dtype, sharing: Sequence[Slot], session: ReadSession) -> None:
    """Write one planned entry into the destination, from what `session` reads; `sharing` lists
    every slot holding its tensor, `dtype` is the ``load(dtype=)`` option for meta tensors."""
    slot = entry.slot
    if slot.kind == SlotKind.EXTRA:
        slot.owner.set_extra_state(extra_state_value(entry.leaf, session.read))
        return
    target = slot.tensor
    if slot.kind == SlotKind.SHARDED:  # a shard of a global tensor: fill the local block only
        local = target.to_local()
        if entry.status == Status.ZEROED:
            local.zero_()
        else:
            session.read_slice_into(entry.leaf, local, *local_block(target))
        return
    if slot.kind == SlotKind.LAZY:  # takes the source's shape, as load_state_dict's lazy hook does
        target.materialize(entry.leaf.shape)
    elif target.is_meta:
        target = _materialize(
            target, device, materialized_dtype(target, getattr(entry.leaf, "dtype", None), dtype), sharing
        )
    if entry.status == Status.ZEROED:
        target.zero_()
    else:
        session.read_into(entry.leaf, target)


def install_mmap_view(entry: Entry, sharing: Sequence[Slot], session: ReadSession) -> None:
    """``mmap=True``: the meta tensor becomes a copy-on-write view of the file's mmap, no bytes copied."""
    old = entry.slot.tensor
    new = session.mmap_view(entry.leaf)
    if old.stride() != new.stride():  # another memory format (channels_last): a copy after all
        new = new.as_strided(old.shape, new.stride()).clone(memory_format=_memory_format(old))
    if isinstance(old, torch.nn.Parameter):
        new = torch.nn.Parameter(new, requires_grad=old.requires_grad)
    for slot in sharing:
        _install(slot, new)


def _memory_format(tensor: torch.Tensor) -> torch.memory_format:
    if tensor.dim() == 4 and tensor.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def extra_state_value(leaf, read):
    """What ``set_extra_state`` receives: the source's value with every lazy file tensor in it read
    by `read` (a torch file's extra state can hold tensors; a safetensors file stores it as one tensor)."""
    value = leaf.value if isinstance(leaf, ExtraState) else leaf
    return _read_tensors(value, read)


def _read_tensors(value, read):
    if isinstance(value, SourceTensor):
        return read(value)
    if isinstance(value, dict):
        return type(value)((key, _read_tensors(item, read)) for key, item in value.items())
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a namedtuple
        return type(value)(*(_read_tensors(item, read) for item in value))
    if isinstance(value, (list, tuple)):
        return type(value)(_read_tensors(item, read) for item in value)
    return value


def _materialize(old: torch.Tensor, device: torch.device, dtype: torch.dtype, sharing: Sequence[Slot]) -> torch.Tensor:
    """A real tensor for a meta tensor, with its strides (channels_last stays channels_last),
    installed in every slot that shares it."""
    new = torch.empty_strided(old.shape, old.stride(), dtype=dtype, device=device)
    if isinstance(old, torch.nn.Parameter):
        new = torch.nn.Parameter(new, requires_grad=old.requires_grad)
    for slot in sharing:
        _install(slot, new)
    return new


def _install(slot: Slot, tensor: torch.Tensor) -> None:
    getattr(slot.owner, slot.attr)[slot.name] = tensor
    slot.tensor = tensor


def _nbytes(entry: Entry) -> int:
    tensor = entry.slot.tensor
    if entry.slot.kind == SlotKind.LAZY:
        return entry.leaf.nbytes
    if entry.slot.kind == SlotKind.SHARDED:
        tensor = tensor.to_local()
    return tensor.numel() * tensor.element_size() if isinstance(tensor, torch.Tensor) else 0
