"""How messages and drawings write numbers, shapes, dtypes, sizes and paths: one place for all.

>>> plural(1, "tensor"), plural(3, "tensor")
('1 tensor', '3 tensors')
>>> shape_text((3,)), shape_text((2, 4)), dtype_text(__import__("torch").bfloat16)
('(3,)', '(2, 4)', 'bfloat16')
>>> human_bytes(497_799_168), human_count(124_439_808), number_ranges([0, 1, 2, 5])
('474.7 MiB', '124.4M', '0–2, 5')
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable


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


def option_text(option: str, value, syntax: str = "python") -> str:
    """A load option as the user would type it: ``rename={r"^module\\.": ""}`` in Python (`syntax`
    ``"python"``), ``--rename '^module\\.='`` on the command line (``"cli"``); ``exclude="head"`` or
    ``--exclude head``.

    >>> option_text("rename", {r"^module\\.": ""}), option_text("exclude", "head")
    ('rename={r"^module\\\\.": ""}', 'exclude="head"')
    >>> option_text("rename", {r"^module\\.": ""}, "cli"), option_text("exclude", "head", "cli")
    ("--rename '^module\\\\.='", '--exclude head')
    """
    if syntax == "cli":
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


class Hint(str):
    """Advice that names a load option: text around `option_text(option, value)`.

    As a string it is the Python spelling, which messages, ``str(error)`` and
    ``report.hints`` hold; ``text("cli")`` spells the option as the command
    line's flags, which is how ``structload`` prints it.

    >>> hint = Hint("a new head? keep the destination's own with ", "exclude", "head")
    >>> print(hint)
    a new head? keep the destination's own with exclude="head"
    >>> hint.text("cli")
    "a new head? keep the destination's own with --exclude head"
    """

    before: str
    option: str
    value: object
    after: str

    def __new__(cls, before: str, option: str, value, after: str = "") -> Hint:
        hint = super().__new__(cls, before + option_text(option, value) + after)
        hint.before, hint.option, hint.value, hint.after = before, option, value, after
        return hint

    def __getnewargs__(self) -> tuple:  # copies and pickles rebuild it from its parts
        return (self.before, self.option, self.value, self.after)

    def text(self, syntax: str = "python") -> str:
        """The hint with its option written in `syntax` (``"python"`` or ``"cli"``)."""
        return self.before + option_text(self.option, self.value, syntax) + self.after


def hint_text(text: str, hints, syntax: str) -> str:
    """`text` with each of `hints` in it written in `syntax` (the last occurrence of each)."""
    for hint in hints:
        if isinstance(hint, Hint) and syntax != "python":
            head, found, tail = text.rpartition(hint)
            if found:
                text = head + hint.text(syntax) + tail
    return text
