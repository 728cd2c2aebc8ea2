"""``structload verify FACTORY SRC --reference FACTORY2``: load one checkpoint into two
implementations and verify that they compute the same.

Both models are built on meta (as ``check`` and ``align`` build them), loaded with SRC (the model
through ``--align`` when its names differ; the reference with ``--reference-src`` when it reads
another file; ``--rename`` rewrites SRC's paths wherever SRC is loaded, as a DDP ``module.`` prefix
needs) and run on one random input: token ids below the reference's ``vocab_size`` when it
has a transformers config, else ``--input SHAPE`` floats (``--ids N`` draws ids below N). Exit 0
when every paired module agrees, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys

import torch


def add_command(commands) -> None:
    """The ``verify`` subcommand, on the parser's subcommands."""
    sub = commands.add_parser("verify", help="load SRC into two implementations and name the first module that differs")
    sub.add_argument("factory", metavar="FACTORY", help="package.module:callable, or a transformers model directory")
    sub.add_argument("src", metavar="SRC")
    sub.add_argument("--reference", required=True, metavar="FACTORY2", help="the implementation to compare with")
    sub.add_argument("--reference-src", metavar="SRC2", help="what to load into the reference (default: SRC)")
    sub.add_argument("--align", action="store_true", help="load and pair FACTORY's modules by structure")
    sub.add_argument(
        "--rename", action="append", metavar="REGEX=REPL", help="rewrite SRC's paths wherever it is loaded (repeatable)"
    )
    sub.add_argument("--input", default="1,16", metavar="SHAPE", help="input shape, comma-separated (default 1,16)")
    sub.add_argument("--ids", type=int, metavar="N", help="integer token ids below N (default: the vocab_size)")
    sub.add_argument("--json", action="store_true", help="machine-readable output")
    sub.set_defaults(run=cmd_verify)


def cmd_verify(args: argparse.Namespace) -> int:
    from .._cli import OK, PROBLEMS, UsageError, _console, _print_json, _split_pair, build_on_meta
    from .._load import load
    from . import verify

    try:
        shape = tuple(int(n) for n in args.input.split(","))
    except ValueError:
        raise UsageError(f"--input takes a shape like 1,16, got '{args.input}'") from None
    model, reference = build_on_meta(args.factory), build_on_meta(args.reference)
    rename = dict(_split_pair(r, "--rename", "REGEX=REPL") for r in args.rename) if args.rename else None
    load(model, args.src, align=args.align, rename=rename)
    load(reference, args.reference_src or args.src, rename=None if args.reference_src else rename)
    torch.manual_seed(0)
    vocab = args.ids or getattr(getattr(reference, "config", None), "vocab_size", None)
    inputs = torch.randint(0, vocab, shape) if vocab else torch.randn(shape)
    result = verify(model, reference, inputs, align=True if args.align else None)
    if args.json:
        _print_json(result.to_dict())
    else:
        _console().print(result)
        sys.stdout.flush()
    return OK if result.ok else PROBLEMS
