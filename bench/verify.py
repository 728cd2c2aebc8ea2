"""Cost of `sl.verify` on a GPT-2-small-shaped pair, against two plain forward passes.

Run: python bench/verify.py [--repeat N] [--tokens T] [--json PATH]

The reference is transformers' GPT2LMHeadModel with GPT-2 small's shapes (124M parameters, random
init); the model is a custom GPT-2 with other names and separate q / k / v (tests/ports.py's
SplitGPT), loaded from it with `align=True`. For one batch of T tokens:

- time: `sl.verify(model, reference, ids)` against `model(ids)` plus `reference(ids)` under
  `torch.no_grad()`, medians of --repeat rounds (one of each per round) in the same process, with
  --threads torch threads (1 by default). Target: at most 3x.
- memory: what the hooks held at once (the reference's inputs and outputs waiting to be compared)
  against the bytes of every paired output together (what storing every activation would hold).
  Target: one reference call held at a time.

Results and target verdicts in bench/results/verify.json.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import torch
from overhead import median_seconds
from targets import Targets, options

import structload as sl
from structload._render.text import human_bytes

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def pair(tokens: int):
    import transformers
    from ports import SplitGPT

    torch.manual_seed(0)
    config = transformers.GPT2Config()  # GPT-2 small: 12 layers, d=768, vocab 50257
    reference = transformers.GPT2LMHeadModel(config).eval()
    with sl.init_empty_weights():
        model = SplitGPT(config.vocab_size, config.n_positions, config.n_embd, config.n_layer, config.n_head)
    alignment = sl.align(model, reference)
    assert sl.load(model, reference, align=alignment).ok
    ids = torch.randint(0, config.vocab_size, (1, tokens))
    return model.eval(), reference, ids, alignment


def timing_case(tokens: int, repeat: int) -> dict:
    from structload._verify import _lockstep

    model, reference, ids, alignment = pair(tokens)
    runs: list = []
    original = _lockstep.Lockstep.run

    def recorded(self, *args):
        runs.append(self)
        return original(self, *args)

    _lockstep.Lockstep.run = recorded  # type: ignore[method-assign]
    result = sl.verify(model, reference, ids, align=alignment)
    assert result.ok, str(result)

    def plain() -> None:
        with torch.no_grad():
            model(ids)
            reference(ids)

    def verified_run() -> None:
        sl.verify(model, reference, ids, align=alignment)

    # interleaved, one of each per round, so that the load of a shared machine hits both alike
    rounds = [(median_seconds(plain, 1), median_seconds(verified_run, 1)) for _ in range(repeat)]
    forward = statistics.median(f for f, _ in rounds)
    verified = statistics.median(v for _, v in rounds)
    ratio = statistics.median(v / f for f, v in rounds)
    lockstep = runs[0]
    print(
        f"gpt2 {tokens} tokens | two forwards {forward * 1e3:7.1f} ms | sl.verify {verified * 1e3:7.1f} ms | "
        f"ratio {ratio:.2f} (median of rounds) | {len(result.compared)} modules compared"
    )
    print(
        f"hooks held at most {lockstep.peak_buffered} reference call(s), {human_bytes(lockstep.peak_bytes)}; "
        f"every paired output together: {human_bytes(lockstep.all_output_bytes)}"
    )
    return {
        "case": "gpt2",
        "tokens": tokens,
        "compared": len(result.compared),
        "forward_s": forward,
        "verify_s": verified,
        "ratio": ratio,
        "held_calls": lockstep.peak_buffered,
        "held_bytes": lockstep.peak_bytes,
        "all_output_bytes": lockstep.all_output_bytes,
    }


def main() -> None:
    parser = options(__doc__, "verify", repeat=5)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    args = parser.parse_args()
    # One thread by default: on a shared, loaded machine, a main thread's OpenMP team of several
    # threads spins against other processes, and a forward pass there took 4-5x longer than the
    # same pass in a helper thread (where verify runs the reference), which flattered the ratio.
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), median of {args.repeat} runs")
    targets = Targets("verify")
    timing = timing_case(args.tokens, args.repeat)
    targets.at_most("gpt2: sl.verify / two plain forward passes", timing["ratio"], 3.0)
    targets.at_most("gpt2: reference calls held at once by the hooks", timing["held_calls"], 1)
    targets.finish([timing], args.json)


if __name__ == "__main__":
    main()
