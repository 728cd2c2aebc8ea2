"""Loading a GPT-2-small-shaped checkpoint into an FSDP2-sharded model: bytes read and memory per rank.

Run: python bench/distributed.py [--world 2] [--repeat 3] [--dir DIR]

Each rank builds the model on the meta device, shards it with
``fully_shard`` (every block, then the root), allocates its shards with
``to_empty(device="cpu")`` and calls ``sl.load(model, checkpoint.safetensors)``.
Per rank it reports the bytes its shards hold, the bytes read from files
(``rchar`` of /proc/self/io, the kernel's count, so it includes the header),
the peak RSS added over the sharded model with its shards touched (VmHWM,
reset before loading) and the time; medians over --repeat runs (each a fresh
set of processes). Target: about 1/world of the checkpoint per rank, plus
replicated tensors (FSDP2 replicates none): checked as at most 1/world + 1% of
the file (results as JSON in bench/results/distributed.json or --json PATH;
exit status 1 if missed).
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def rchar() -> int:
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))


def rank_main(rank: int, world: int, port: int, path: str, out: str) -> None:
    import torch
    import torch.distributed as dist
    from files import peak_rss_bytes, reset_peak, rss_bytes
    from overhead import GPT
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    import structload as sl

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world, timeout=timedelta(seconds=300)
    )
    mesh = init_device_mesh("cpu", (world,))
    with torch.device("meta"):
        model = GPT()
    for block in model.h:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    model.to_empty(device="cpu")
    with torch.no_grad():  # touch the shards, so the baseline holds the model's own memory
        shards = {t.to_local().data_ptr(): t.to_local() for t in model.state_dict().values()}  # tied once
        for local in shards.values():
            local.zero_()
    shard_bytes = sum(local.numel() * local.element_size() for local in shards.values())
    dist.barrier()
    base_rss, base_read = rss_bytes(), rchar()
    reset_peak()
    start = time.perf_counter()
    report = sl.load(model, path)
    seconds = time.perf_counter() - start
    added = peak_rss_bytes() - base_rss
    result = {
        "seconds": seconds,
        "read": rchar() - base_read,
        "added_rss": added,
        "shard": shard_bytes,
        "ok": report.ok,
    }
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()
    os._exit(0)  # skip interpreter finalization (gloo threads; see tests/test_distributed.py)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    import torch.multiprocessing as mp
    from files import write_checkpoints
    from targets import Targets, options

    parser = options(__doc__, "distributed", repeat=3, directory="/tmp/structload-bench")
    parser.add_argument("--world", type=int, default=2)
    args = parser.parse_args()
    directory = Path(args.dir)
    path = write_checkpoints(directory)["safetensors"]
    size = os.path.getsize(path)
    runs: list[list[dict]] = []
    for _ in range(args.repeat):
        out = directory / "ranks"
        out.mkdir(exist_ok=True)
        mp.start_processes(
            rank_main, args=(args.world, free_port(), path, str(out)), nprocs=args.world, start_method="spawn"
        )
        runs.append([json.loads((out / f"rank{r}.json").read_text()) for r in range(args.world)])
    print(f"checkpoint {size / 2**20:.1f} MiB, {args.world} ranks, FSDP2, median of {args.repeat} runs")
    targets, results = Targets("distributed"), []
    for rank in range(args.world):
        mine = [run[rank] for run in runs]
        assert all(r["ok"] for r in mine)
        read = statistics.median(r["read"] for r in mine)
        added = statistics.median(r["added_rss"] for r in mine)
        seconds = statistics.median(r["seconds"] for r in mine)
        shard = mine[0]["shard"]
        print(
            f"rank {rank}: holds {shard / 2**20:6.1f} MiB of shards; read {read / 2**20:6.1f} MiB "
            f"({read / size:5.1%} of the file); peak RSS +{added / 2**20:5.1f} MiB over the sharded model; "
            f"{seconds * 1e3:6.1f} ms"
        )
        targets.at_most(f"rank {rank}: bytes read / file", read / size, 1 / args.world + 0.01)
        results.append({"rank": rank, "shard_bytes": shard, "read": read, "added_rss": added, "seconds": seconds})
    targets.finish({"file_bytes": size, "world": args.world, "ranks": results}, args.json)


if __name__ == "__main__":
    main()
