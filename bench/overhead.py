"""Per-leaf overhead of `sl.load` against `load_state_dict`, with the state already in memory.

Run: python bench/overhead.py [--repeat N]

Two models:
- "flat": a flat nn.ModuleList of 1,666 small blocks (about 20,000 tensors,
  22 MB), where `load_state_dict` is quadratic (it filters the whole dict
  once per child);
- "gpt2": a GPT-2-small-shaped model (12 layers, d=768, vocab 50257, tied
  embedding), where the time is mostly the copy itself.

Prints the median of each, and the ratio sl.load / load_state_dict measured
in the same run, then the flat model's load phase by phase (microseconds per
tensor: the source tree, the plan (walk and rules), the writes, the report) and
its time per tensor at 5k, 20k and 80k tensors (linear growth), each size in a
fresh process, as a user's first load. Targets:
flat <= 0.1x, gpt2 <= 1.2x, flat at most 5 us per tensor (checked; results as
JSON in bench/results/overhead.json or --json PATH; exit status 1 if one is missed).
"""

from __future__ import annotations

import functools
import itertools
import json
import statistics
import time

import torch
import torch.nn as nn
from targets import Targets, options, run_child

import structload as sl


class SmallBlock(nn.Module):
    def __init__(self, d: int = 32):
        super().__init__()
        self.a, self.na = nn.Linear(d, d), nn.LayerNorm(d)
        self.b, self.nb = nn.Linear(d, d), nn.LayerNorm(d)
        self.c, self.nc = nn.Linear(d, d), nn.LayerNorm(d)


def flat_model() -> nn.Module:
    return nn.ModuleList(SmallBlock() for _ in range(1666))


class GPTBlock(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d)
        self.c_attn = nn.Linear(d, 3 * d)
        self.c_proj = nn.Linear(d, d)
        self.ln_2 = nn.LayerNorm(d)
        self.c_fc = nn.Linear(d, 4 * d)
        self.mlp_proj = nn.Linear(4 * d, d)


class GPT(nn.Module):
    """GPT-2 small's shapes: 124M parameters, lm_head tied to the token embedding."""

    def __init__(self, vocab: int = 50257, d: int = 768, layers: int = 12, context: int = 1024):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(context, d)
        self.h = nn.ModuleList(GPTBlock(d) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.lm_head.weight = self.wte.weight


def median_seconds(fn, repeat: int) -> float:
    fn()  # warm up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def compare(name: str, make, repeat: int) -> dict:
    torch.manual_seed(0)
    source = make()
    state = source.state_dict()
    model = make()
    tensors = len(state)
    unique = {t.data_ptr(): t for t in state.values()}.values()  # tied tensors once
    mbytes = sum(t.numel() * t.element_size() for t in unique) / 2**20
    structload = median_seconds(lambda: sl.load(model, state), repeat)
    baseline = median_seconds(lambda: model.load_state_dict(state), repeat)
    ratio = structload / baseline
    print(
        f"{name:5s} {tensors:6d} tensors {mbytes:7.1f} MiB | sl.load {structload * 1e3:8.1f} ms | "
        f"load_state_dict {baseline * 1e3:8.1f} ms | ratio {ratio:.3f}"
    )
    return {"model": name, "tensors": tensors, "sl_load_s": structload, "load_state_dict_s": baseline, "ratio": ratio}


def phases(make, repeat: int) -> dict[str, float]:
    """Microseconds per tensor of each phase of `sl.load` (what `run_load` does, step by step)."""
    import gc

    from structload._apply import apply_plan
    from structload._plan.plan import make_plan
    from structload._plan.select import Selection
    from structload.sources import to_source_tree

    torch.manual_seed(0)
    state, model = make().state_dict(), make()
    names = ("source tree", "plan: walk and rules", "apply: writes", "report")

    def once() -> list[float]:
        gc.disable()
        marks = [time.perf_counter()]
        tree = to_source_tree(state)
        marks.append(time.perf_counter())
        plan = make_plan(model, tree, Selection(None, None, None))
        marks.append(time.perf_counter())
        apply_plan(plan, torch.device("cpu"), False)
        marks.append(time.perf_counter())
        plan.report(applied=True)
        marks.append(time.perf_counter())
        gc.enable()
        return [b - a for a, b in itertools.pairwise(marks)]

    once()
    runs = [once() for _ in range(repeat)]
    return {name: statistics.median(r[i] for r in runs) / len(state) * 1e6 for i, name in enumerate(names)}


def flat_of(blocks: int):
    return lambda: nn.ModuleList(SmallBlock() for _ in range(blocks))


def child(blocks: int, repeat: int) -> None:
    """In a fresh process (objects laid out as a user's first load finds them): `sl.load` of the
    flat model with this many blocks, median seconds as JSON."""
    torch.manual_seed(0)
    state, model = flat_of(blocks)().state_dict(), flat_of(blocks)()
    seconds = median_seconds(functools.partial(sl.load, model, state), repeat)
    print(json.dumps({"tensors": len(state), "seconds": seconds}))


def main() -> None:
    parser = options(__doc__, "overhead", repeat=5, child=("BLOCKS", "REPEAT"), child_type=int)
    parser.add_argument("--only", choices=["flat", "gpt2"])
    args = parser.parse_args()
    if args.child:
        return child(*args.child)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeat} runs")
    targets, results = Targets("overhead"), []
    for name, make, limit in (("flat", flat_model, 0.1), ("gpt2", GPT, 1.2)):
        if args.only in (None, name):
            result = compare(name, make, args.repeat)
            targets.at_most(f"{name}: sl.load / load_state_dict", result["ratio"], limit)
            results.append(result)
    if args.only in (None, "flat"):
        split = phases(flat_model, args.repeat)
        print("flat, phase by phase: " + ", ".join(f"{name} {us:.2f} us" for name, us in split.items()))
        scaling = {}
        for blocks in (416, 1666, 6666):  # about 5k, 20k and 80k tensors, each in a fresh process
            fresh = run_child(__file__, str(blocks), str(args.repeat))
            scaling[fresh["tensors"]] = fresh["seconds"] / fresh["tensors"] * 1e6
        print("flat, per tensor: " + ", ".join(f"{n} tensors {us:.2f} us" for n, us in scaling.items()))
        per_tensor = results[0]["sl_load_s"] / results[0]["tensors"] * 1e6
        targets.at_most("flat: microseconds per tensor", per_tensor, 5.0)
        results.append({"model": "flat phases (us per tensor)", **split})
        results.append({"model": "flat scaling (us per tensor)", **{str(n): us for n, us in scaling.items()}})
    targets.finish(results, args.json)


if __name__ == "__main__":
    main()
