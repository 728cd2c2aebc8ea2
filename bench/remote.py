"""Loading over HTTP on the loopback address: a GPT-2-small-shaped checkpoint (~475 MiB).

Run: python bench/remote.py [--repeat N] [--dir DIR]

The parent process serves the checkpoint with the tests' loopback HTTP server
(tests/loopback.py: byte ranges, ETags; page cache warm) and counts the bytes
it sends. Each case runs in a fresh Python process --repeat times, interleaved;
the table shows median times, and the bytes served per run:

  sl.load(model, url)                        the full load, straight from the server;
  download with fsspec, then sl.load(path)   the baseline: fs.get to a local file, then a local load;
  sl.load(model, url, include="h.0.*")       6% of the bytes.

Targets: the full remote load at most 1.0x the download-then-load baseline; the
include= load at most 10% of the full load's time and of its bytes (checked;
results as JSON in bench/results/remote.json or --json PATH; exit 1 on a miss).
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from targets import Targets, options, run_child

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

CASES = ("sl.load url", "download then sl.load", "sl.load url include=h.0.*")


def child(case: str, url: str) -> None:
    import fsspec
    import fsspec.implementations.http  # aiohttp: every import happens before the clock
    import torch  # noqa: F401

    sys.path.insert(0, str(HERE))
    from overhead import GPT

    import structload as sl

    model = GPT()
    start = time.perf_counter()
    if case == "sl.load url":
        report = sl.load(model, url)
    elif case == "sl.load url include=h.0.*":
        report = sl.load(model, url, include="h.0.*")
    else:
        with tempfile.TemporaryDirectory() as folder:
            local = str(Path(folder) / "gpt2.safetensors")
            fs, path = fsspec.core.url_to_fs(url)
            fs.get(path, local)
            report = sl.load(model, local)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "ok": report.ok or "include" in case}))


def main() -> None:
    parser = options(__doc__, "remote", repeat=5, directory="/tmp/structload-bench", child=("CASE", "URL"))
    args = parser.parse_args()
    if args.child:
        return child(*args.child)
    from files import write_checkpoints
    from loopback import LoopbackServer

    path = Path(write_checkpoints(Path(args.dir))["safetensors"])
    server = LoopbackServer(path.parent)
    url = f"{server.url}/{path.name}"
    print(f"checkpoint: {path.stat().st_size / 2**20:.1f} MiB at {url}; median of {args.repeat} fresh processes")
    runs: dict[str, list[tuple[float, int]]] = {case: [] for case in CASES}
    try:
        for _ in range(args.repeat):
            for case in CASES:  # interleaved
                before = server.served
                result = run_child(__file__, case, url)
                if not result["ok"]:
                    raise SystemExit(f"{case}: the load reported problems")
                runs[case].append((result["seconds"], server.served - before))
    finally:
        server.close()
    table = {}
    for case in CASES:
        seconds = statistics.median(s for s, _ in runs[case])
        served = statistics.median(b for _, b in runs[case])
        table[case] = {"seconds": seconds, "bytes_served": served}
        print(f"{case:30s} {seconds * 1e3:8.1f} ms   {served / 2**20:8.1f} MiB served")
    full, baseline = table["sl.load url"], table["download then sl.load"]
    part = table["sl.load url include=h.0.*"]
    targets = Targets("remote")
    targets.at_most("sl.load url / download then load", full["seconds"] / baseline["seconds"], 1.0)
    targets.at_most("include=h.0.*: time / full load", part["seconds"] / full["seconds"], 0.10)
    targets.at_most("include=h.0.*: bytes / full load", part["bytes_served"] / full["bytes_served"], 0.10)
    targets.finish(table, args.json)


if __name__ == "__main__":
    main()
