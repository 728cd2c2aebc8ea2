"""Applying transformers' declared conversions: a Mixtral-shaped checkpoint in its hub layout against the same bytes without them.

Run: python bench/conversions.py [--repeat N] [--dir DIR]

Builds a MixtralModel (transformers' own class, random init: hidden 512, 8 experts of 1024, 4 layers: 200 MiB in fp32)
and writes it twice into --dir: with ``save_pretrained`` (the hub layout: one tensor per expert,
``block_sparse_moe.experts.{e}.w1/w2/w3``, that ``from_pretrained`` fuses through the conversions
transformers declares) and as its own ``state_dict()`` (already fused ``mlp.experts.gate_up_proj``:
the same bytes, nothing to convert). Both files are dropped from the page cache and read once, so
they sit in it the same way (`evict`); then,
alternating, ``sl.load`` fills the same real model from each, --repeat times, and the medians are
compared (their ratio, and the median of the ratios of neighbouring loads, which
drifts less when other processes share the machine); the process's CPU time is shown beside.

Target: the declared conversions cost at most 1.2x the load of the same bytes without them
(checked; results as JSON in bench/results/conversions.json or --json PATH; exit status 1 if missed).
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from targets import Targets, options, warm

import structload as sl


def mixtral():
    from transformers import MixtralConfig, MixtralModel

    config = MixtralConfig(
        hidden_size=512, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2,
        num_local_experts=8, num_experts_per_tok=2, vocab_size=1024, max_position_embeddings=128,
    )  # fmt: skip
    torch.manual_seed(0)
    return MixtralModel(config)


def write(directory: Path, model) -> tuple[Path, Path]:
    """The hub layout (save_pretrained) and the model's own layout, as safetensors files."""
    hub, own = directory / "hub", directory / "own.safetensors"
    if not (hub / "model.safetensors").exists():
        model.save_pretrained(hub)
    if not own.exists():
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, own)
    return hub, own


def evict(paths) -> None:
    """Drop the files from the page cache (where the system allows), so that `warm` reads both
    back the same way. How a file came into the cache changes what reading it costs: on the
    development machine, a file written hours before and partly evicted since read 1.3x slower
    than one just written (7.3 against 5.7 ms for one contiguous 32 MiB read, one thread), which
    made this bench measure its files' history (1.18-1.33) instead of the conversions."""
    if not hasattr(os, "posix_fadvise"):
        return
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)  # written pages cannot be dropped until they are on disk
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def timed(model, source: str) -> tuple[float, sl.LoadReport, float]:
    """Wall time, the report, and the CPU time of the whole process (every thread) for one load."""
    start, cpu = time.perf_counter(), time.process_time()
    report = sl.load(model, source)
    return time.perf_counter() - start, report, time.process_time() - cpu


def main() -> None:
    args = options(__doc__, "conversions", repeat=21, directory="/tmp/structload-bench/conversions").parse_args()
    directory = Path(args.dir)
    directory.mkdir(parents=True, exist_ok=True)
    model = mixtral()
    hub, own = write(directory, model)
    files = [hub / "model.safetensors", own]
    evict(files)  # both files enter the page cache the same way (see `evict`)
    warm(files)
    _, report, _ = timed(model, str(hub))  # once untimed each: imports, first-touch of the model's pages
    assert report.converted, "the hub layout should need the declared converters"
    timed(model, str(own))
    sources = {"declared conversions (hub layout)": str(hub), "same bytes, no conversion": str(own)}
    times: dict[str, list[float]] = {name: [] for name in sources}
    cpu: dict[str, list[float]] = {name: [] for name in sources}
    for _ in range(args.repeat):
        for name, source in sources.items():  # alternating: both see the same load of the machine
            wall, _, spent = timed(model, source)
            times[name].append(wall)
            cpu[name].append(spent)
    medians = {name: statistics.median(values) for name, values in times.items()}
    hub_times, own_times = times.values()
    ratio = medians["declared conversions (hub layout)"] / medians["same bytes, no conversion"]
    paired = statistics.median(h / o for h, o in zip(hub_times, own_times))  # each load against its neighbour
    cpu_ratio = statistics.median(cpu[next(iter(sources))]) / statistics.median(cpu["same bytes, no conversion"])
    nbytes = (hub / "model.safetensors").stat().st_size
    for name, value in medians.items():
        print(
            f"{name}: {value * 1e3:.1f} ms (median of {args.repeat}), CPU {statistics.median(cpu[name]) * 1e3:.1f} ms"
        )
    print(f"ratio {ratio:.3f} (of medians), {paired:.3f} (median of paired ratios), CPU time {cpu_ratio:.3f}")
    print(f"{nbytes / 2**20:.1f} MiB; {len(report.converted)} tensors converted; load average {os.getloadavg()[0]:.1f}")
    targets = Targets("conversions")
    targets.at_most("declared conversions / same bytes without them", ratio, 1.2)
    targets.at_most("the same, median of paired ratios", paired, 1.2)
    results = {
        "medians_s": medians,
        "ratio": ratio,
        "paired_ratio": paired,
        "cpu_ratio": cpu_ratio,
        "load_average": os.getloadavg()[0],
        "file_bytes": nbytes,
        "converted": len(report.converted),
    }
    targets.finish(results, args.json)


if __name__ == "__main__":
    main()
