"""What each fast path of an in-memory load saves: the flat model of bench/overhead.py (about
20,000 tensors), each fast path switched off in turn (as tests/test_fast_paths.py switches it off).

Run: python bench/fast_paths.py [--repeat N]

For each fast path, the phase it lives in (source tree, plan, apply, report) is timed with it on
and off, alternately, in one process, in CPU time (``time.process_time``: the machine is shared,
and CPU time is what other processes disturb least); printed: the medians in microseconds per tensor, and what
the fast path saves per tensor (a fast path saving under about 0.05 us per tensor, 1% of the
load, is not worth its code). No targets: the figures decide which fast paths stay
(docs/performance.md, "Fast paths").
"""

from __future__ import annotations

import contextlib
import gc
import statistics
import sys
import time
from pathlib import Path

import torch
from overhead import flat_model
from targets import Targets, options

from structload import _apply
from structload._plan import plan as _plan
from structload._plan.select import Selection
from structload.sources import MemoryTensor, to_source_tree
from structload.sources.memory import tensor_leaf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from lanes import LANES

#: fast path (a name of `LANES`) -> the phase of a load it saves time in
PHASES = {
    "judge's lane": "plan",
    "load_tensor's plain_load": "plan",
    "Plan.report's lane": "report",
    "the batched copies": "apply",
    "_foreach_copy_": "apply",
    "_module_children's Parameter lane": "plan",
    "settle_ties' shortcut": "plan",
    "the per-class caches": "plan",
    "compose_problems' clean-load shortcut": "plan",
    "_pytree.children' dict lane": "plan",
    "apply's from-memory lane": "apply",
}


def phase_seconds(phase: str, state, model, patches) -> float:
    """One run of `phase` of ``sl.load(model, state)`` (the earlier phases run untimed, lanes on)."""
    tree = to_source_tree(state)
    plan = _plan.make_plan(model, tree, Selection(None, None, None)) if phase != "plan" else None
    gc.disable()
    with contextlib.ExitStack() as stack:
        for patch in patches:
            stack.enter_context(patch)
        start = time.process_time()
        if phase == "plan":
            _plan.make_plan(model, tree, Selection(None, None, None))
        elif phase == "apply":
            _apply.apply_plan(plan, torch.device("cpu"), False)
        else:
            plan.report(applied=True)  # type: ignore[union-attr]
        seconds = time.process_time() - start
    gc.enable()
    return seconds


def compare(name: str, phase: str, patches, state, model, repeat: int) -> dict:
    on, off = [], []
    for _ in range(repeat):  # alternately, so that the machine's load falls on both alike
        on.append(phase_seconds(phase, state, model, []))
        off.append(phase_seconds(phase, state, model, patches()))
    per = 1e6 / len(state)
    fast, slow = statistics.median(on) * per, statistics.median(off) * per
    print(f"{name:40s} {phase:6s} on {fast:6.3f} us  off {slow:6.3f} us  saves {slow - fast:6.3f} us per tensor")
    return {"fast path": name, "phase": phase, "on_us": fast, "off_us": slow, "saves_us": slow - fast}


def inlined_tensor_leaf(state, repeat: int) -> dict:
    """`_tree_from_items`' inlined `tensor_leaf`: the call it saves, per tensor."""
    values = list(state.values())
    on = [_timed(lambda: [MemoryTensor(v) for v in values]) for _ in range(repeat)]
    off = [_timed(lambda: [tensor_leaf(v) for v in values]) for _ in range(repeat)]
    per = 1e6 / len(values)
    fast, slow = statistics.median(on) * per, statistics.median(off) * per
    print(
        f"{'inlined tensor_leaf (source tree)':40s} {'tree':6s} on {fast:6.3f} us  off {slow:6.3f} us  "
        f"saves {slow - fast:6.3f} us per tensor"
    )
    return {"fast path": "inlined tensor_leaf", "phase": "tree", "on_us": fast, "off_us": slow, "saves_us": slow - fast}


def _timed(fn) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def main() -> None:
    args = options(__doc__, "fast_paths", repeat=7).parse_args()
    torch.manual_seed(0)
    state, model = flat_model().state_dict(), flat_model()
    print(f"torch {torch.__version__}, flat model, {len(state)} tensors, median of {args.repeat} runs")
    results = [compare(name, PHASES[name], patches, state, model, args.repeat) for name, patches in LANES.items()]
    results.append(inlined_tensor_leaf(state, args.repeat))
    Targets("fast_paths").finish(results, args.json)


if __name__ == "__main__":
    main()
