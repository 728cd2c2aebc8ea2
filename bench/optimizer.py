"""`sl.load_optimizer` against `sl.load` of the same model's weights, with everything in memory.

Run: python bench/optimizer.py [--repeat N]

The flat model of bench/overhead.py (1,666 small blocks, 19,992 parameters, no
buffers), trained one step by SGD with momentum (one state tensor per
parameter, as many as the weights) and by Adam (two tensors and a scalar
``step`` per parameter: three times as many). For each optimizer, the median
time of:
- "in place": the tree of `sl.optimizer_state` into an optimizer that already
  has state (the tensors are written in place);
- "fresh": the same tree into a new optimizer (the state tensors are made);
- "state_dict": the optimizer's own ``state_dict()`` (index keyed, with
  ``param_names``) into an optimizer that has state;
- torch's ``optimizer.load_state_dict`` of the same ``state_dict()``, for reference
  (it pairs by position and checks nothing);
each run alternated with `sl.load` of the weights (so that both see the same
load on a shared machine), and each ratio to the weights' median.
Target: every case of both optimizers costs at most 2x loading the weights
(per model, not per state entry; checked; results as JSON in
bench/results/optimizer.json or --json PATH; exit status 1 if one is missed).
"""

from __future__ import annotations

import gc
import statistics
import time

import torch
from overhead import flat_model
from targets import Targets, options

import structload as sl

OPTIMIZERS = {
    "sgd-momentum": lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9),
    "adam": lambda params: torch.optim.Adam(params, lr=1e-3),
}


def stepped(make, model):
    """An optimizer over `model` after one step, so that it holds state for every parameter."""
    optimizer = make(model.named_parameters())
    for param in model.parameters():
        param.grad = torch.full_like(param, 0.01)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return optimizer


def alternated(load, setup, weights, repeat: int) -> tuple[float, float]:
    """The median times of ``load(setup())`` and of `weights`, run one after the other `repeat`
    times (after one warm-up each), so that both see the same load on a shared machine."""
    load(setup())
    weights()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeat):
        for fn, argument, out in ((load, setup(), times[0]), (weights, None, times[1])):
            gc.collect()
            start = time.perf_counter()
            fn(argument) if fn is load else fn()
            out.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def measure(name: str, make, repeat: int, weights, source, model) -> dict:
    src_opt = stepped(make, source)
    tree, state_dict = sl.optimizer_state(src_opt, source), src_opt.state_dict()
    entries = sum(len(state) for state in src_opt.state.values())
    held = stepped(make, model)
    cases = {
        "in place": (lambda o: sl.load_optimizer(o, model, tree), lambda: held),
        "fresh": (lambda o: sl.load_optimizer(o, model, tree), lambda: make(model.parameters())),
        "state_dict": (lambda o: sl.load_optimizer(o, model, state_dict), lambda: held),
    }
    print(f"{name}: {entries} state entries ({entries / len(src_opt.state):.0f} per parameter)")
    result: dict = {"optimizer": name, "entries": entries}
    for case, (load, setup) in cases.items():
        seconds, weights_s = alternated(load, setup, weights, repeat)
        ratio = seconds / weights_s
        result[case] = {"seconds": seconds, "weights_s": weights_s, "ratio": ratio}
        print(f"  {case:22s} {seconds * 1e3:8.1f} ms | weights {weights_s * 1e3:6.1f} ms | {ratio:5.2f}x the weights")
    # torch's own load takes 10 to 50 times as long here: three runs are enough to see it
    torch_s, weights_s = alternated(lambda o: o.load_state_dict(state_dict), lambda: held, weights, min(repeat, 3))
    result["torch load_state_dict"] = {"seconds": torch_s, "weights_s": weights_s, "ratio": torch_s / weights_s}
    print(f"  {'torch load_state_dict':22s} {torch_s * 1e3:8.1f} ms | {torch_s / weights_s:5.2f}x the weights")
    return result


def main() -> None:
    args = options(__doc__, "optimizer", repeat=5).parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeat} alternated runs")
    torch.manual_seed(0)
    source, model = flat_model(), flat_model()
    state = source.state_dict()
    print(f"weights: sl.load of {len(state)} tensors, timed beside each case")
    targets, results = Targets("optimizer"), []
    for name, make in OPTIMIZERS.items():
        result = measure(name, make, args.repeat, lambda: sl.load(model, state), source, model)
        results.append(result)
        for case in ("in place", "fresh", "state_dict"):
            targets.at_most(f"{name} {case}: load_optimizer / load", result[case]["ratio"], 2.0)
    targets.finish(results, args.json)


if __name__ == "__main__":
    main()
