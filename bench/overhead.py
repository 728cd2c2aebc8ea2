"""Per-leaf overhead of `sl.load` against `load_state_dict`, with the state already in memory.

Run: python bench/overhead.py [--repeat N]

Two models:
- "flat": a flat nn.ModuleList of 1,666 small blocks (about 20,000 tensors,
  22 MB), where `load_state_dict` is quadratic (it filters the whole dict
  once per child);
- "gpt2": a GPT-2-small-shaped model (12 layers, d=768, vocab 50257, tied
  embedding), where the time is mostly the copy itself.

Prints the median of each, and the ratio sl.load / load_state_dict measured
in the same run. Targets: flat <= 0.1x, gpt2 <= 1.2x (checked; results as JSON
in bench/results/overhead.json or --json PATH; exit status 1 if one is missed).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn as nn
from targets import Targets

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--only", choices=["flat", "gpt2"])
    parser.add_argument(
        "--json", metavar="PATH", help="where to write the results (default bench/results/overhead.json)"
    )
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeat} runs")
    targets, results = Targets("overhead"), []
    for name, make, limit in (("flat", flat_model, 0.1), ("gpt2", GPT, 1.2)):
        if args.only in (None, name):
            result = compare(name, make, args.repeat)
            targets.at_most(f"{name}: sl.load / load_state_dict", result["ratio"], limit)
            results.append(result)
    targets.finish(results, args.json)


if __name__ == "__main__":
    main()
