"""Cost of `sl.align`: a GPT-2-small-shaped port, and the flat many-tensor model against a plain plan.

Run: python bench/align.py [--repeat N] [--json PATH]

- "gpt2": transformers' GPT2LMHeadModel with GPT-2 small's shapes (124M parameters, in
  memory) as the source, a custom model with other names and separate q / k / v (built
  on meta) as the destination: time of `sl.align(dst, src)` alone. Target: under 20 ms (CPU
  time of the process; wall time printed too).
- "flat": the flat ModuleList of small blocks from bench/overhead.py (19,992 tensors),
  aligned against a state_dict with the same names, against the plain plan of the same
  load (`sl.load(..., dry_run=True)`), in the same run. Target: at most 2x, in CPU time of
  the process (wall time is printed too; on a shared machine it inflates pure-Python work).
- "growth": the flat model at about 5k, 10k, 20k and 40k tensors: microseconds per
  tensor should stay flat (linear growth).

Medians of --repeat runs; results and target verdicts in bench/results/align.json.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
from overhead import median_seconds
from targets import Targets, options

import structload as sl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def flat_model(blocks: int) -> nn.Module:
    from overhead import SmallBlock

    return nn.ModuleList(SmallBlock() for _ in range(blocks))


def gpt2_case(repeat: int) -> dict:
    import transformers
    from ports import SplitGPT

    config = transformers.GPT2Config()  # GPT-2 small: 12 layers, d=768, vocab 50257
    source = transformers.GPT2LMHeadModel(config)
    with sl.init_empty_weights():
        destination = SplitGPT(config.vocab_size, config.n_positions, config.n_embd, config.n_layer, config.n_head)
    alignment = sl.align(destination, source)
    assert alignment.ok, alignment.code()
    seconds = median_seconds(lambda: sl.align(destination, source), repeat)
    cpu = median_cpu_seconds(lambda: sl.align(destination, source), repeat)
    print(f"gpt2   {len(alignment.matched):6d} matches | sl.align {seconds * 1e3:7.2f} ms | CPU {cpu * 1e3:7.2f} ms")
    return {"case": "gpt2", "matches": len(alignment.matched), "align_s": seconds, "cpu_align_s": cpu}


def median_cpu_seconds(fn, repeat: int) -> float:
    """The median CPU time of this process for `fn`: on a machine shared with other jobs, wall time
    of pure-Python work grows with the load more than the plan's does; CPU time does not."""
    times = []
    for _ in range(repeat):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times)


def flat_case(blocks: int, repeat: int) -> dict:
    torch.manual_seed(0)
    model, state = flat_model(blocks), flat_model(blocks).state_dict()
    aligned = median_seconds(lambda: sl.align(model, state), repeat)
    planned = median_seconds(lambda: sl.load(model, state, dry_run=True), repeat)
    cpu_aligned = median_cpu_seconds(lambda: sl.align(model, state), repeat)
    cpu_planned = median_cpu_seconds(lambda: sl.load(model, state, dry_run=True), repeat)
    tensors = len(state)
    print(
        f"flat {tensors:7d} tensors | sl.align {aligned * 1e3:8.1f} ms ({aligned / tensors * 1e6:5.2f} µs/tensor) | "
        f"plain plan {planned * 1e3:8.1f} ms | ratio {aligned / planned:.2f} | "
        f"CPU {cpu_aligned * 1e3:6.1f} / {cpu_planned * 1e3:6.1f} ms, ratio {cpu_aligned / cpu_planned:.2f}"
    )
    return {
        "case": "flat",
        "tensors": tensors,
        "align_s": aligned,
        "plan_s": planned,
        "ratio": aligned / planned,
        "cpu_align_s": cpu_aligned,
        "cpu_plan_s": cpu_planned,
        "cpu_ratio": cpu_aligned / cpu_planned,
    }


def main() -> None:
    args = options(__doc__, "align", repeat=5).parse_args()
    print(f"torch {torch.__version__}, median of {args.repeat} runs")
    targets, results = Targets("align"), []
    gpt2 = gpt2_case(args.repeat)
    targets.at_most("gpt2: sl.align seconds (CPU time)", gpt2["cpu_align_s"], 0.020)
    results.append(gpt2)
    growth = [flat_case(blocks, args.repeat) for blocks in (417, 833, 1666, 3333)]
    results += growth
    [flat] = [r for r in growth if r["tensors"] == 19_992]
    targets.at_most("flat: sl.align / plain plan (CPU time)", flat["cpu_ratio"], 2.0)
    per_tensor = [r["align_s"] / r["tensors"] for r in growth]
    targets.at_most("growth: µs per tensor at 40k / at 5k", per_tensor[-1] / per_tensor[0], 1.5)
    targets.finish(results, args.json)


if __name__ == "__main__":
    main()
