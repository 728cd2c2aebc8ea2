"""The ``structload`` command line, built on the public functions.

    structload inspect SRC [--depth N] [--json]
    structload diff A B [--values] [--json]
    structload check FACTORY SRC [--no-strict] [--include P] [--exclude P] [--rename REGEX=REPL]
    structload align FACTORY SRC [--hint DST=SRC] [--rename REGEX=REPL] [--include P] [--exclude P] [--json]
    structload verify FACTORY SRC --reference FACTORY2 [--align] [--input SHAPE] [--json]
    structload demo

Exit status: 0 success, 1 problems found (or differences), 2 bad usage or an
unreadable source. Errors are one message; ``--debug`` shows the traceback.
Colour is off when output is not a terminal or when ``NO_COLOR`` is set.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys
import traceback
from collections.abc import Iterator
from typing import Any

from rich.console import Console

from ._align.aligner import align
from ._empty import init_empty_weights
from ._inspect import diff, inspect
from ._load import run_load
from ._options import LoadOptions
from ._render.inspect import inspect_tree
from ._render.report import diff_table, report_tree
from ._render.text import hint_text
from ._report import LoadError, SourceError
from ._verify._command import add_command as add_verify_command
from .sources.tree import open_source

OK, PROBLEMS, USAGE = 0, 1, 2

#: How the command line writes the options its hints name: as flags (``--rename '^=bert.'``).
CLI = "cli"


class UsageError(Exception):
    """Bad arguments the parser could not catch (a factory that does not import, ...)."""


def _console(stderr: bool = False) -> Console:
    # rich turns colour off by itself when not on a terminal and when NO_COLOR is set
    return Console(stderr=stderr, soft_wrap=False)


def _print_json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def cmd_inspect(args: argparse.Namespace) -> int:
    tree = open_source(args.src)
    infos = inspect(tree)
    if args.json:
        _print_json({path: info.to_dict() for path, info in infos.items()})
    else:
        _console().print(inspect_tree(infos, os.fspath(args.src), depth=args.depth, types=tree.types))
    return OK


def cmd_diff(args: argparse.Namespace) -> int:
    result = diff(args.a, args.b, values=args.values)
    if args.json:
        _print_json(result.to_dict())
    else:
        console = _console()
        console.print(f"a: {args.a}\nb: {args.b}")
        console.print(diff_table(result, CLI))
    return OK if result.ok else PROBLEMS


def cmd_check(args: argparse.Namespace) -> int:
    model = build_on_meta(args.factory)
    rename = dict(_split_pair(r, "--rename", "REGEX=REPL") for r in args.rename) if args.rename else None
    # built on meta only for this dry run: tensors it leaves on meta are not a problem
    options = LoadOptions(
        strict=args.strict, include=args.include, exclude=args.exclude, rename=rename, dry_run=True, meta_is_final=False
    )
    console = _console()
    try:
        report = run_load(model, args.src, options)
    except SourceError:
        raise
    except LoadError as error:
        console.print(report_tree(error.report, CLI) if error.report is not None else error.report)
        return PROBLEMS
    console.print(report_tree(report, CLI))
    return OK if report.ok else PROBLEMS


def build_on_meta(factory: str):
    """Build the model FACTORY names, its weights on the meta device (`init_empty_weights`).

    FACTORY is ``package.module:callable`` (modules in the working directory
    import, as with ``python -m``, while the factory is imported and called;
    `sys.path` is restored afterwards), or a Hugging Face model directory or
    ``config.json``, built with transformers' ``from_config``.
    """
    config = _transformers_config(factory)
    if config is not None:
        return _build_transformers_model(config)
    module_name, _, attribute = factory.partition(":")
    if not module_name or not attribute:
        raise UsageError(f"FACTORY must look like package.module:callable, got '{factory}'")
    with _importing_from(os.getcwd()):
        try:
            module = importlib.import_module(module_name)
        except Exception as error:
            raise UsageError(f"cannot import '{module_name}' for {factory}: {type(error).__name__}: {error}") from error
        make: Any = module
        for part in attribute.split("."):
            make = getattr(make, part, None)
            if make is None:
                raise UsageError(f"'{module_name}' has no '{attribute}'")
        if not callable(make):
            raise UsageError(f"{factory} is not callable")
        with init_empty_weights():
            try:
                return make()
            except Exception as error:  # the user's code, not structload's: say whose (--debug: where)
                raise UsageError(f"{factory} raised {type(error).__name__}: {error} (built on meta)") from error


def _transformers_config(factory: str) -> str | None:
    """The config.json a FACTORY names (itself, or inside the directory it names), or ``None``."""
    if os.path.isdir(factory):
        candidate = os.path.join(factory, "config.json")
        if not os.path.isfile(candidate):
            raise UsageError(
                f"{factory}: a directory without config.json; FACTORY is package.module:callable or a model directory"
            )
        return candidate
    if os.path.basename(factory) == "config.json" or (factory.endswith(".json") and os.path.isfile(factory)):
        return factory
    return None


def _build_transformers_model(config_path: str):
    """The model a transformers config.json describes, from ``config.architectures[0]``, on meta."""
    try:
        import transformers
    except ImportError:
        raise UsageError(
            f"{config_path}: building a model from config.json needs transformers (pip install transformers)"
        ) from None
    try:
        config = transformers.AutoConfig.from_pretrained(os.path.dirname(os.path.abspath(config_path)))
    except Exception as error:
        raise UsageError(f"{config_path}: not a transformers config ({type(error).__name__}: {error})") from error
    architectures = getattr(config, "architectures", None) or []
    model_class: Any = getattr(transformers, architectures[0], None) if architectures else transformers.AutoModel
    if model_class is None:
        raise UsageError(f"{config_path}: transformers has no class {architectures[0]!r}")
    with init_empty_weights():
        if model_class is transformers.AutoModel:
            return transformers.AutoModel.from_config(config)
        return model_class._from_config(config)


@contextlib.contextmanager
def _importing_from(directory: str) -> Iterator[None]:
    """Let imports find modules in `directory` while the block runs; `sys.path` is restored after."""
    saved = list(sys.path)
    sys.path.insert(0, directory)
    try:
        yield
    finally:
        sys.path[:] = saved


def cmd_align(args: argparse.Namespace) -> int:
    model = build_on_meta(args.factory)
    hints = dict(_split_pair(h, "--hint", "DST=SRC") for h in args.hint) if args.hint else None
    rename = dict(_split_pair(r, "--rename", "REGEX=REPL") for r in args.rename) if args.rename else None
    alignment = align(model, args.src, hints=hints, rename=rename, include=args.include, exclude=args.exclude)
    if args.json:
        _print_json(alignment.to_dict())
    else:
        sys.stdout.write(alignment.code())
        _console(stderr=True).print(alignment.summary(), markup=False, highlight=False)
    return OK if alignment.ok else PROBLEMS


def _split_pair(text: str, flag: str, form: str) -> tuple[str, str]:
    left, sep, right = text.partition("=")
    if not sep:
        raise UsageError(f"{flag} takes {form} (split at the first '='), got '{text}'")
    return left, right


def _demo(args: argparse.Namespace) -> int:
    from ._demo import run

    return run(_console())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="structload",
        description="Load PyTorch weights structurally: inspect, compare and check checkpoints.",
        epilog="Exit status: 0 success, 1 problems found, 2 bad usage or unreadable source.",
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    sub = commands.add_parser("inspect", help="tree of a checkpoint: paths, shapes, dtypes, sizes, totals")
    sub.add_argument("src", help="a .safetensors, torch.save file, *.index.json or checkpoint directory")
    sub.add_argument("--depth", type=int, metavar="N", help="fold subtrees deeper than N levels")
    sub.add_argument("--json", action="store_true", help="machine-readable output")
    sub.set_defaults(run=cmd_inspect)

    sub = commands.add_parser("diff", help="what differs between two checkpoints (exit 1 when they differ)")
    sub.add_argument("a")
    sub.add_argument("b")
    sub.add_argument("--values", action="store_true", help="also compare tensor contents")
    sub.add_argument("--json", action="store_true", help="machine-readable output")
    sub.set_defaults(run=cmd_diff)

    sub = commands.add_parser("check", help="dry-run loading SRC into the model FACTORY builds (on meta)")
    sub.add_argument("factory", metavar="FACTORY", help="package.module:callable returning the model")
    sub.add_argument("src", metavar="SRC")
    sub.add_argument("--no-strict", dest="strict", action="store_false", help="report problems instead of failing")
    sub.add_argument("--include", action="append", metavar="P", help="glob of destination paths to load (repeatable)")
    sub.add_argument("--exclude", action="append", metavar="P", help="glob of destination paths to leave (repeatable)")
    sub.add_argument("--rename", action="append", metavar="REGEX=REPL", help="rewrite source paths (repeatable)")
    sub.set_defaults(run=cmd_check)

    sub = commands.add_parser("align", help="work out rename= and convert= from structure; prints them as Python")
    sub.add_argument("factory", metavar="FACTORY", help="package.module:callable, or a transformers model directory")
    sub.add_argument("src", metavar="SRC")
    sub.add_argument("--hint", action="append", metavar="DST=SRC", help="pin destination glob DST to source glob SRC")
    sub.add_argument("--rename", action="append", metavar="REGEX=REPL", help="rewrite source paths first (repeatable)")
    sub.add_argument("--include", action="append", metavar="P", help="glob of destination paths to align (repeatable)")
    sub.add_argument(
        "--exclude", action="append", metavar="P", help="glob of destination or source paths to leave (repeatable)"
    )
    sub.add_argument("--json", action="store_true", help="machine-readable output")
    sub.set_defaults(run=cmd_align)

    add_verify_command(commands)  # structload/_verify/_command.py

    sub = commands.add_parser("demo", help="a self-contained run of the main job on generated data")
    sub.set_defaults(run=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit:  # argparse: 0 for --help, 2 for bad usage
        return int(exit.code or 0)
    if not hasattr(args, "run"):
        parser.print_help(sys.stderr)
        return USAGE
    try:
        return args.run(args)
    except (SourceError, UsageError, ValueError, TypeError) as error:
        return _fail(args, error)
    except Exception as error:  # never a bare traceback unless asked for
        return _fail(args, error, internal=True)


def _fail(args: argparse.Namespace, error: Exception, internal: bool = False) -> int:
    console = _console(stderr=True)
    if args.debug:
        traceback.print_exception(error)
    message = str(error).splitlines()[0] if isinstance(error, SourceError) else str(error)
    if isinstance(error, LoadError):  # hints written as the options are typed here: --rename '^=bert.'
        message = hint_text(message, [p.hint for p in error.problems if p.hint is not None], CLI)
    if internal:
        message = f"internal error: {type(error).__name__}: {message} (run with --debug for the traceback)"
    console.print(f"structload: {message}", style="red", markup=False, highlight=False)
    return USAGE


if __name__ == "__main__":
    sys.exit(main())
