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
and each ratio to `sl.load` of the weights, measured in the same run.
Target: loading SGD's state costs at most 2x loading the weights (checked;
results as JSON in bench/results/optimizer.json or --json PATH; exit status 1
if it is missed). Adam's figures are printed beside it, per state entry too.
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


def median_seconds(fn, repeat: int, setup=lambda: None) -> float:
    """The median time of ``fn(setup())`` (setup not timed), after one warm-up run."""
    fn(setup())
    times = []
    for _ in range(repeat):
        argument = setup()
        gc.collect()
        start = time.perf_counter()
        fn(argument)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def stepped(make, model):
    """An optimizer over `model` after one step, so that it holds state for every parameter."""
    optimizer = make(model.named_parameters())
    for param in model.parameters():
        param.grad = torch.full_like(param, 0.01)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return optimizer


def measure(name: str, make, repeat: int, weights_s: float, source, model) -> dict:
    src_opt = stepped(make, source)
    tree, state_dict = sl.optimizer_state(src_opt, source), src_opt.state_dict()
    entries = sum(len(state) for state in src_opt.state.values())
    held = stepped(make, model)
    cases = {
        "in place": median_seconds(lambda o: sl.load_optimizer(o, model, tree), repeat, lambda: held),
        "fresh": median_seconds(lambda o: sl.load_optimizer(o, model, tree), repeat, lambda: make(model.parameters())),
        "state_dict": median_seconds(lambda o: sl.load_optimizer(o, model, state_dict), repeat, lambda: held),
        # torch's own load takes 10 to 50 times as long here: three runs are enough to see it
        "torch load_state_dict": median_seconds(lambda o: o.load_state_dict(state_dict), min(repeat, 3), lambda: held),
    }
    print(f"{name}: {entries} state entries ({entries / len(src_opt.state):.0f} per parameter)")
    for case, seconds in cases.items():
        ratio = seconds / weights_s
        per_entry = seconds / entries / (weights_s / len(source.state_dict()))
        print(f"  {case:22s} {seconds * 1e3:8.1f} ms | {ratio:5.2f}x the weights | {per_entry:5.2f}x per entry")
    return {"optimizer": name, "entries": entries, "weights_s": weights_s, **{f"{k}_s": v for k, v in cases.items()}}


def main() -> None:
    args = options(__doc__, "optimizer", repeat=5).parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeat} runs")
    torch.manual_seed(0)
    source, model = flat_model(), flat_model()
    state = source.state_dict()
    weights_s = median_seconds(lambda _: sl.load(model, state), args.repeat)
    print(f"weights: sl.load of {len(state)} tensors {weights_s * 1e3:.1f} ms")
    targets, results = Targets("optimizer"), []
    for name, make in OPTIMIZERS.items():
        result = measure(name, make, args.repeat, weights_s, source, model)
        results.append(result)
        if name == "sgd-momentum":
            targets.at_most("sgd-momentum in place: load_optimizer / load", result["in place_s"] / weights_s, 2.0)
            targets.at_most("sgd-momentum fresh: load_optimizer / load", result["fresh_s"] / weights_s, 2.0)
    targets.finish(results, args.json)


if __name__ == "__main__":
    main()
