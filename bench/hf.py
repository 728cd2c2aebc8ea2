"""transformers' ``from_pretrained`` against "build on meta with ``from_config``, then ``sl.load``".

Run: python bench/hf.py [--repeat N] [--shapes medium large] [--dir DIR] [--json PATH]

GPT-2-medium (355M) and -large (774M) shapes, random init, saved by
``save_pretrained`` as sharded safetensors in fp32 and in bf16, kept in the page
cache. Each case runs in a fresh Python process (imports before the clock),
cases interleaved, --repeat rounds; time counts until the model is ready and
every weight page is resident (a pass that reads every parameter, since a
mapped model has not read its pages yet when the call returns), and "load"
the same without building the model (what the floor compares with); peak RSS is
VmHWM over the process's RSS after imports. Cases, for an fp32 model:

  from_pretrained(dir, dtype=float32)
  sl.load(meta model, dir)                 -- copies into fresh memory
  sl.load(meta model, dir, mmap=True)      -- views of the mapped files
  sl.load(real model, dir)                 -- into an already-built model (build not timed)
  floor: read the files into freshly allocated memory
  cast floor (bf16 files): map the files and cast every tensor into fresh fp32 memory

Targets (API issue 13), medians, ratios in the same run: fp32 with mmap=True at most
1.0x from_pretrained's time and 1.05x its peak RSS; a bf16 file into an fp32 model
(mmap=True too: the case built for big models) at most 0.8x its time and 0.75x its
peak RSS; the copying meta load within 1.1x of the floor (for bf16 files, of the
cast floor); every sl.load case gives from_pretrained's logits bit for bit (a fixed
input of 32 tokens, after the clock). Results and verdicts in bench/results/hf.json.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import time
from pathlib import Path

from files import peak_rss_bytes, reset_peak, rss_bytes
from targets import Targets, options, run_child, warm

HERE = Path(__file__).resolve().parent
SHAPES = {
    "medium": {"n_embd": 1024, "n_layer": 24, "n_head": 16},
    "large": {"n_embd": 1280, "n_layer": 36, "n_head": 20},
}
CASES = ("from_pretrained", "sl.load meta", "sl.load meta mmap", "sl.load real", "floor")
CAST_FLOOR = "cast floor"  # bf16 files only


def child(case: str, folder: str) -> None:
    import torch
    import transformers

    import structload as sl

    os.environ["HF_HUB_OFFLINE"] = "1"
    config = transformers.AutoConfig.from_pretrained(folder)
    gpt2 = transformers.GPT2LMHeadModel  # a lazy import in transformers: done before the clock, as every import
    real = gpt2(config) if case == "sl.load real" else None  # built before the clock
    files = sorted(str(p) for p in Path(folder).glob("*.safetensors"))
    base = rss_bytes()
    reset_peak()
    start = time.perf_counter()
    if case == "from_pretrained":
        model = gpt2.from_pretrained(folder, dtype=torch.float32)
    elif case == "floor":  # the files' bytes into fresh memory, kept, then read once like a model
        buffers = []
        for path in files:
            buffer = torch.empty(os.path.getsize(path) // 4, dtype=torch.float32)
            view = memoryview(buffer.view(torch.uint8).numpy())
            with open(path, "rb", buffering=0) as f:
                while view:
                    view = view[f.readinto(view) :]
            buffers.append(buffer)
        model = torch.nn.ParameterList(buffers)
    elif case == CAST_FLOOR:  # every tensor a view of the mapped files, cast into fresh fp32 memory
        model = torch.nn.ParameterList(t for path in files for t in cast_mapped(path))
    else:
        if real is not None:
            model = real
        else:
            with sl.init_empty_weights():
                model = gpt2(config)
        loading = time.perf_counter()
        report = sl.load(model, folder, mmap=case.endswith("mmap"))
        assert report.ok, report
    checksum = 0.0
    if model is not None:  # every page resident: read every parameter once
        with torch.no_grad():
            for p in model.parameters():
                checksum += float(p.float().sum()) if p.dtype != torch.float32 else float(p.sum())
    end = time.perf_counter()
    peak = peak_rss_bytes()
    load_seconds = end - (loading if case.startswith("sl.load") else start)  # without building the model
    result = {"seconds": end - start, "load_seconds": load_seconds, "added_rss": peak - base, "checksum": checksum}
    if isinstance(model, transformers.PreTrainedModel):  # after the clock: the logits of a fixed input
        with torch.no_grad():
            ids = torch.arange(32).remainder(config.vocab_size).unsqueeze(0)
            logits = model.eval()(ids).logits
        result["logits"] = hashlib.sha256(logits.numpy().tobytes()).hexdigest()
    print(json.dumps(result))


def cast_mapped(path: str):
    """Each tensor of a safetensors file, viewed in a mapping of the file and cast to fp32."""
    import torch

    with open(path, "rb") as f:
        length = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(length))
    size = os.path.getsize(path)
    mapped = torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage.from_file(path, shared=False, nbytes=size))
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        data = mapped[8 + length + start : 8 + length + end].view(torch.bfloat16).view(info["shape"])
        yield data.to(torch.float32)


def write(folder: Path, shape: str, dtype: str) -> None:
    if (folder / "config.json").exists():
        return
    import torch
    import transformers

    config = transformers.GPT2Config(**SHAPES[shape])
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).to(getattr(torch, dtype))
    model.save_pretrained(folder, max_shard_size="500MB")


def main() -> None:
    parser = options(__doc__, "hf", repeat=3, directory="/tmp/structload-bench-hf", child=("CASE", "DIR"))
    parser.add_argument("--shapes", nargs="+", default=["medium"], choices=list(SHAPES))
    args = parser.parse_args()
    if args.child:
        return child(*args.child)
    targets, results = Targets("hf"), {}
    for shape in args.shapes:
        for dtype in ("float32", "bfloat16"):
            folder = Path(args.dir) / f"{shape}-{dtype}"
            write(folder, shape, dtype)
            warm(folder.glob("*.safetensors"))
            cases = CASES + ((CAST_FLOOR,) if dtype == "bfloat16" else ())
            runs: dict[str, list[dict]] = {c: [] for c in cases}
            for _ in range(args.repeat):  # interleaved
                for case in cases:
                    runs[case].append(run_child(__file__, case, str(folder)))
            keys = ("seconds", "load_seconds", "added_rss")
            table = {c: {key: statistics.median(r[key] for r in rs) for key in keys} for c, rs in runs.items()}
            results[f"{shape}-{dtype}"] = table
            hf = table["from_pretrained"]
            print(f"{shape} {dtype} file, fp32 model, median of {args.repeat}:")
            for case, row in table.items():
                print(
                    f"  {case:20s} {row['seconds']:7.3f} s (load {row['load_seconds']:6.3f} s)  "
                    f"peak RSS +{row['added_rss'] / 2**20:8.1f} MiB  ({row['seconds'] / hf['seconds']:.2f}x time, "
                    f"{row['added_rss'] / max(hf['added_rss'], 1):.2f}x RSS of from_pretrained)"
                )
            expected = {r["logits"] for r in runs["from_pretrained"]}
            differing = [c for c in cases if c.startswith("sl.load") and {r["logits"] for r in runs[c]} != expected]
            print(f"  logits differing from from_pretrained's, bit for bit: {differing or 'none'}")
            targets.at_most(
                f"{shape} {dtype}: sl.load cases whose logits differ from from_pretrained's", len(differing), 0
            )
            if dtype == "float32":
                mapped = table["sl.load meta mmap"]
                targets.at_most(f"{shape} fp32 mmap / from_pretrained time", mapped["seconds"] / hf["seconds"], 1.0)
                targets.at_most(
                    f"{shape} fp32 mmap / from_pretrained peak RSS", mapped["added_rss"] / hf["added_rss"], 1.05
                )
                copy_load = table["sl.load meta"]["load_seconds"]  # the floor builds no model
                targets.at_most(f"{shape} fp32 meta copy (load) / floor", copy_load / table["floor"]["seconds"], 1.1)
            else:
                mapped, copy = table["sl.load meta mmap"], table["sl.load meta"]  # mmap=True: as for fp32
                targets.at_most(
                    f"{shape} bf16->fp32 mmap / from_pretrained time", mapped["seconds"] / hf["seconds"], 0.8
                )
                targets.at_most(
                    f"{shape} bf16->fp32 mmap / from_pretrained peak RSS", mapped["added_rss"] / hf["added_rss"], 0.75
                )
                floor = table[CAST_FLOOR]["seconds"]
                targets.at_most(f"{shape} bf16->fp32 meta copy (load) / cast floor", copy["load_seconds"] / floor, 1.1)
    targets.finish(results, args.json)


if __name__ == "__main__":
    main()
