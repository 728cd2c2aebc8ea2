"""How messages and drawings write numbers, shapes, dtypes, sizes and paths: one place for all.

>>> plural(1, "tensor"), plural(3, "tensor")
('1 tensor', '3 tensors')
>>> shape_text((3,)), shape_text((2, 4)), dtype_text(__import__("torch").bfloat16)
('(3,)', '(2, 4)', 'bfloat16')
>>> human_bytes(497_799_168), human_count(124_439_808), number_ranges([0, 1, 2, 5])
('474.7 MiB', '124.4M', '0–2, 5')
"""

from __future__ import annotations

import contextlib
import shlex
from collections.abc import Iterable, Iterator
from contextvars import ContextVar


def plural(n: int, noun: str) -> str:
    """``1 tensor``, ``2 tensors``."""
    return f"{n} {noun}" + ("" if n == 1 else "s")


def shape_text(shape: Iterable[int]) -> str:
    """``(3, 4)`` for a shape, ``(3,)`` for one dimension, as messages print it."""
    dims = [str(d) for d in shape]
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


def dtype_text(dtype: object) -> str:
    """``float32`` for ``torch.float32``."""
    return str(dtype).removeprefix("torch.")


def path_prefixes(path: str) -> list[str]:
    """``a``, ``a.b``, ``a.b.c`` for ``a.b.c``: the path and every module above it."""
    parts = path.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def display_path(path: str) -> str:
    """The path as users read it; the root of the tree has the empty path."""
    return path if path else "<root>"


def human_bytes(n: int) -> str:
    """``474.7 MiB`` for a byte count."""
    size = float(n)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def human_count(n: int) -> str:
    """``124.4M`` for a parameter count."""
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n / scale:.1f}{suffix}"
    return str(n)


def number_ranges(numbers: Iterable[int]) -> str:
    """``0–2, 5`` for ``[0, 1, 2, 5]`` (sorted input)."""
    spans: list[list[int]] = []
    for i in numbers:
        if spans and i == spans[-1][1] + 1:
            spans[-1][1] = i
        else:
            spans.append([i, i])
    return ", ".join(f"{a}" if a == b else f"{a}–{b}" for a, b in spans)


# --- options as a hint writes them: Python (the default) or the command line -----------------

#: How hints write an option: ``"python"`` (``rename={...}``) or ``"cli"`` (``--rename '...'``).
#: The command line sets it for the duration of a command (`hint_syntax`); nothing else does.
HINT_SYNTAX: ContextVar[str] = ContextVar("structload_hint_syntax", default="python")


@contextlib.contextmanager
def hint_syntax(syntax: str) -> Iterator[None]:
    """Write hints in `syntax` (``"python"`` or ``"cli"``) inside the block."""
    token = HINT_SYNTAX.set(syntax)
    try:
        yield
    finally:
        HINT_SYNTAX.reset(token)


def option_text(option: str, value) -> str:
    """A load option as the user would type it: ``rename={r"^module\\.": ""}`` in Python,
    ``--rename '^module\\.='`` on the command line; ``exclude="head"`` or ``--exclude head``.

    >>> option_text("rename", {r"^module\\.": ""}), option_text("exclude", "head")
    ('rename={r"^module\\\\.": ""}', 'exclude="head"')
    >>> with hint_syntax("cli"):
    ...     option_text("rename", {r"^module\\.": ""}), option_text("exclude", "head")
    ("--rename '^module\\\\.='", '--exclude head')
    """
    if HINT_SYNTAX.get() == "cli":
        flag = f"--{option.replace('_', '-')}"
        if value is True:
            return flag
        if isinstance(value, dict):
            return " ".join(f"{flag} {shlex.quote(f'{key}={replacement}')}" for key, replacement in value.items())
        return f"{flag} {shlex.quote(str(value))}"
    if isinstance(value, bool):
        return f"{option}={value}"
    if isinstance(value, dict):
        return f"{option}={{" + ", ".join(f'r"{key}": "{replacement}"' for key, replacement in value.items()) + "}"
    return f'{option}="{value}"'
