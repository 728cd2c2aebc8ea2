"""Loading a GPT-2-small-shaped checkpoint from files: time and peak memory, per method.

Run: python bench/files.py [--repeat N] [--dir DIR]

Writes the checkpoint as .safetensors and .pt (once, into --dir), reads both
once so they sit in the page cache, then runs every case below as a fresh
Python process --repeat times and prints the median load time and the median
peak RSS added by the load (Linux: VmHWM, reset through /proc/self/clear_refs
just before loading, minus the RSS of the constructed model):

  sl.load from .safetensors / .pt, into a real model and into a meta one;
  load_state_dict(safetensors.torch.load_file(p));
  load_state_dict(torch.load(p, mmap=True, weights_only=True));
  load_state_dict(torch.load(p, weights_only=True));
  floor: reading the same number of bytes into an allocated buffer;
  a partial load (include="h.0.*") next to the full one;
  files as users hold them: the whole model pickled (torch.save(model)), a
  Lightning-style checkpoint (state_dict beside an argparse.Namespace and
  numpy scalars; the load reads its "state_dict"), and an .npz export;
  a legacy (pre-1.6, non-zip) torch.save file, beside
  load_state_dict(torch.load(p, weights_only=True, map_location="cpu")).

Targets: sl.load within 1.1x the fastest baseline and 1.3x the floor; added
peak RSS under 5% of the file for a real model, at most 1.05x the file for a
meta model; the three user files within 1.1x of sl.load from the plain .pt, and
under 5% of the file in added peak RSS; the legacy file within 1.3x of
torch.load + load_state_dict and under 5% of the file in added peak RSS
(checked; results as JSON in
bench/results/files.json or --json PATH; exit status 1 if one is missed).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from targets import Targets, options, run_child, warm

HERE = Path(__file__).resolve().parent

CASES = {
    "sl.load safetensors": ("safetensors", "real"),
    "sl.load pt": ("pt", "real"),
    "sl.load safetensors -> meta": ("safetensors", "meta"),
    "sl.load pt -> meta": ("pt", "meta"),
    "load_state_dict(load_file)": ("safetensors", "real"),
    "load_state_dict(torch.load mmap)": ("pt", "real"),
    "load_state_dict(torch.load)": ("pt", "real"),
    "floor: read into buffer": ("safetensors", "none"),
    "sl.load safetensors include=h.0.*": ("safetensors", "real"),
    "sl.load whole pickled model": ("whole", "real"),
    "sl.load lightning ckpt": ("lightning", "real"),
    "sl.load npz": ("npz", "real"),
    "sl.load legacy pt": ("legacy", "real"),
    "torch.load legacy + load_state_dict": ("legacy", "real"),
}
USER_FILES = ("sl.load whole pickled model", "sl.load lightning ckpt", "sl.load npz")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def child(case: str, path: str) -> None:
    """Run one case in this (fresh) process and print {"seconds", "added_rss"} as JSON.

    Everything a case imports is imported before the clock starts."""
    import safetensors.torch
    import torch

    sys.path.insert(0, str(HERE))
    from overhead import GPT

    import structload as sl

    _, target = CASES[case]
    if target == "meta":
        with torch.device("meta"):
            model = GPT()
    elif target == "real":
        model = GPT()
    nbytes = os.path.getsize(path)

    def run():
        if case.startswith("sl.load") and "include" in case:
            return sl.load(model, path, include="h.0.*")
        if case == "sl.load lightning ckpt":
            return sl.load(model, sl.open(path)["state_dict"])
        if case.startswith("sl.load"):
            return sl.load(model, path)
        if case == "load_state_dict(load_file)":
            return model.load_state_dict(safetensors.torch.load_file(path), strict=False)
        # strict=False: the file stores the tied lm_head.weight once, as wte.weight
        if case == "load_state_dict(torch.load mmap)":
            return model.load_state_dict(torch.load(path, mmap=True, weights_only=True), strict=False)
        if case == "load_state_dict(torch.load)":
            return model.load_state_dict(torch.load(path, weights_only=True), strict=False)
        if case == "torch.load legacy + load_state_dict":
            return model.load_state_dict(torch.load(path, weights_only=True, map_location="cpu"), strict=False)
        view = memoryview(floor_buffer)  # the floor: the same bytes into memory we already own
        with open(path, "rb", buffering=0) as f:
            while view:
                view = view[f.readinto(view) :]
        return None

    floor_buffer = bytearray(nbytes) if target == "none" else None  # allocated and touched, like a model
    base = rss_bytes()
    reset_peak()
    start = time.perf_counter()
    result = run()
    seconds = time.perf_counter() - start
    added = peak_rss_bytes() - base
    if case.startswith("sl.load") and not getattr(result, "ok", True) and "include" not in case:
        raise SystemExit(f"{case}: load reported problems: {result}")
    print(json.dumps({"seconds": seconds, "added_rss": added, "file_bytes": nbytes}))


def write_checkpoints(directory: Path) -> dict[str, str]:
    """The GPT-2-small checkpoints every file benchmark reads, written into `directory` (made if
    need be) unless already there, and read once into the page cache: format -> path."""
    import safetensors.torch
    import torch

    sys.path.insert(0, str(HERE))

    import numpy as np
    from overhead import GPT

    names = {"safetensors": "gpt2.safetensors", "pt": "gpt2.pt", "whole": "gpt2-whole.pt"}
    names |= {"lightning": "gpt2-lightning.ckpt", "npz": "gpt2.npz", "legacy": "gpt2-legacy.pt"}
    directory.mkdir(parents=True, exist_ok=True)
    paths = {kind: directory / name for kind, name in names.items()}
    if not all(p.exists() for p in paths.values()):
        torch.manual_seed(0)
        model = GPT()
        state = model.state_dict()
        state.pop("lm_head.weight")  # tied to wte.weight: stored once, as Hugging Face does
        safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, str(paths["safetensors"]))
        torch.save(state, paths["pt"])
        torch.save(model, paths["whole"])  # pickles overhead.GPT, which structload never imports
        hparams = argparse.Namespace(lr=6e-4, n_layer=12, betas=(0.9, 0.95))
        extra = {"loss": np.float32(3.25), "step": np.int64(600_000), "epoch": 4}
        torch.save({"state_dict": state, "hyper_parameters": hparams, **extra}, paths["lightning"])
        np.savez(paths["npz"], **{k: v.numpy() for k, v in state.items()})
        torch.save(state, paths["legacy"], _use_new_zipfile_serialization=False)
    warm(paths.values())
    return {k: str(v) for k, v in paths.items()}


def main() -> None:
    parser = options(__doc__, "files", repeat=5, directory="/tmp/structload-bench", child=("CASE", "PATH"))
    args = parser.parse_args()
    if args.child:
        return child(*args.child)
    paths = write_checkpoints(Path(args.dir))
    print(
        f"checkpoint: {os.path.getsize(paths['safetensors']) / 2**20:.1f} MiB; median of {args.repeat} fresh processes"
    )
    results = {}
    for case, (fmt, _) in CASES.items():
        runs = [run_child(__file__, case, paths[fmt]) for _ in range(args.repeat)]
        seconds = statistics.median(r["seconds"] for r in runs)
        added = statistics.median(r["added_rss"] for r in runs)
        results[case] = (seconds, added, runs[0]["file_bytes"])
        print(
            f"{case:36s} {seconds * 1e3:8.1f} ms   peak RSS +{added / 2**20:7.1f} MiB ({added / runs[0]['file_bytes']:6.1%} of file)"
        )
    baselines = [results[c][0] for c in CASES if c.startswith("load_state_dict")]
    floor = results["floor: read into buffer"][0]
    targets = Targets("files")
    for case in ("sl.load safetensors", "sl.load pt"):
        t = results[case][0]
        print(f"{case}: {t / min(baselines):.2f}x the fastest baseline, {t / floor:.2f}x the floor")
        targets.at_most(f"{case} / fastest baseline", t / min(baselines), 1.1)
        targets.at_most(f"{case} / floor", t / floor, 1.3)
        targets.at_most(f"{case}: added peak RSS / file", results[case][1] / results[case][2], 0.05)
        meta = f"{case} -> meta"
        targets.at_most(f"{meta}: added peak RSS / file", results[meta][1] / results[meta][2], 1.05)
    for case in USER_FILES:
        t, plain = results[case][0], results["sl.load pt"][0]
        print(f"{case}: {t / plain:.2f}x sl.load from the plain .pt")
        targets.at_most(f"{case} / sl.load pt", t / plain, 1.1)
        targets.at_most(f"{case}: added peak RSS / file", results[case][1] / results[case][2], 0.05)
    legacy, torch_legacy = results["sl.load legacy pt"], results["torch.load legacy + load_state_dict"][0]
    print(f"sl.load legacy pt: {legacy[0] / torch_legacy:.2f}x torch.load + load_state_dict")
    targets.at_most("sl.load legacy pt / torch.load + load_state_dict", legacy[0] / torch_legacy, 1.3)
    targets.at_most("sl.load legacy pt: added peak RSS / file", legacy[1] / legacy[2], 0.05)
    part, full = results["sl.load safetensors include=h.0.*"][0], results["sl.load safetensors"][0]
    print(f"partial load (h.0.*): {part / full:.1%} of the full load's time")
    table = {case: {"seconds": s, "added_rss": a, "file_bytes": f} for case, (s, a, f) in results.items()}
    targets.finish(table, args.json)


if __name__ == "__main__":
    main()
