"""Where a pickle ends, and that it cannot make the unpickler allocate memory it does not hold.

Python's C unpickler keeps its memo in an array indexed by the number a
``PUT`` / ``LONG_BINPUT`` opcode gives, and grows (and zero-fills) the array
to twice that number: a ten-byte pickle saying ``LONG_BINPUT 2**31 - 1``
makes it fill 32 GiB before it has built anything (the process is killed
for lack of memory, or its neighbours are). `scan` walks the opcodes
before the unpickler runs (reading no object, calling nothing) and refuses a
memo index larger than the pickle itself: a pickler numbers its memo entries
from 0, each entry written by an opcode of at least two bytes, so a real
pickle's indices are always below its length (indices below 2**20 pass
whatever the length: 16 MiB of memo at most). It also finds where the pickle
ends, for formats that put several pickles one after the other. Runs of
opcodes with fixed-size arguments are matched by a regular expression, so the
walk costs a fraction of the unpickling it protects.

    >>> import pickle
    >>> data = pickle.dumps({"w": [1.5, "x"]}, protocol=2)
    >>> scan(data + b"more after the pickle") == len(data)
    True
    >>> scan(b"\\x80\\x02Nr\\xff\\xff\\xff\\x7f.")
    Traceback (most recent call last):
    ...
    structload.sources.formats.pickle_scan.PickleRefused: memo index 2147483647 in a pickle of at most 9 bytes
"""

from __future__ import annotations

import pickletools
import re


class PickleRefused(Exception):
    """The pickle would make the unpickler allocate memory out of proportion to its size."""


class Incomplete(Exception):
    """The bytes end before the pickle does; `needed` is how many bytes the scan needs at least."""

    def __init__(self, needed: int):
        super().__init__(f"the pickle data ends before its STOP opcode (at least {needed} bytes needed)")
        self.needed = needed


# What follows each opcode: a fixed number of bytes (>= 0), or one of these kinds.
_LINE, _TWO_LINES, _LENGTH1, _LENGTH4, _LENGTH8, _PUT_LINE, _LONG_PUT, _STOP, _UNKNOWN = range(-9, 0)
_LENGTH_KINDS = {
    pickletools.TAKEN_FROM_ARGUMENT1: _LENGTH1,
    pickletools.TAKEN_FROM_ARGUMENT4: _LENGTH4,
    pickletools.TAKEN_FROM_ARGUMENT4U: _LENGTH4,
    pickletools.TAKEN_FROM_ARGUMENT8U: _LENGTH8,
    pickletools.UP_TO_NEWLINE: _LINE,
}


def _argument_table() -> list[int]:
    """For each byte value: how its opcode's argument is laid out (from pickletools' descriptions)."""
    table = [_UNKNOWN] * 256
    for op in pickletools.opcodes:
        table[ord(op.code)] = 0 if op.arg is None else op.arg.n if op.arg.n >= 0 else _LENGTH_KINDS[op.arg.n]
    table[ord("c")] = table[ord("i")] = _TWO_LINES  # GLOBAL, INST: module and name, a line each
    table[ord("p")], table[ord("r")], table[ord(".")] = _PUT_LINE, _LONG_PUT, _STOP
    return table


_ARGUMENTS = _argument_table()
#: Memo indices below this are never refused (their memo takes at most 16 MiB).
SMALL_INDEX = 1 << 20


def _fixed_run() -> re.Pattern[bytes]:
    """A run of opcodes with fixed-size arguments, ``LONG_BINPUT``s of an index below 2**20
    included: matched at C speed, so the Python loop sees only the other opcodes (strings, mostly)."""
    by_size: dict[int, bytes] = {}
    for byte, kind in enumerate(_ARGUMENTS):
        if kind >= 0:
            by_size[kind] = by_size.get(kind, b"") + re.escape(bytes([byte]))
    parts = [b"[" + codes + b"]" + b"." * size for size, codes in sorted(by_size.items())]
    parts.append(b"r..[\x00-\x0f]\x00")
    return re.compile(b"(?:" + b"|".join(parts) + b")*", re.DOTALL)


_FIXED_RUN = _fixed_run()


def scan(data: bytes | bytearray, start: int = 0) -> int:
    """Check the pickle that starts at `start` of `data` and return where it ends (just after ``STOP``).

    Raises `PickleRefused` for a memo index above the pickle's length, `Incomplete` when `data`
    ends first, and `ValueError` for an opcode that does not exist (the unpickler would stop there).
    """
    table, size, i, run = _ARGUMENTS, len(data), start, _FIXED_RUN.match
    while i < size:
        fixed = run(data, i)  # always a match (maybe empty): the pattern is a repetition
        i = fixed.end() if fixed else i
        if i >= size:
            break
        kind = table[data[i]]
        i += 1
        if kind >= 0:  # a fixed-size argument that runs past the end of the data
            i += kind
        elif kind == _LENGTH4:
            i += 4 + int.from_bytes(data[i : i + 4], "little") if i + 4 <= size else 4
        elif kind == _LONG_PUT:
            if i + 4 <= size:
                _check_index(int.from_bytes(data[i : i + 4], "little"), start, size)
            i += 4
        elif kind == _STOP:
            return i
        else:
            i = _rarer(data, i, kind, start)
    raise Incomplete(max(i, size + 1) - start)


def _rarer(data: bytes | bytearray, i: int, kind: int, start: int) -> int:
    """Where the argument of a rarer opcode (at `i`) ends."""
    size = len(data)
    if kind == _LENGTH1:
        return i + 1 + data[i] if i < size else i + 1
    if kind == _LENGTH8:
        return i + 8 + int.from_bytes(data[i : i + 8], "little") if i + 8 <= size else i + 8
    if kind == _UNKNOWN:
        raise ValueError(f"invalid opcode {data[i - 1]:#04x} at byte {i - 1 - start} of the pickle")
    end = _after_line(data, i)
    if kind == _TWO_LINES and end <= size:
        end = _after_line(data, end)
    elif kind == _PUT_LINE and end <= size:
        try:
            index = int(data[i : end - 1])
        except ValueError:  # the unpickler refuses it
            return end
        _check_index(index, start, size)
    return end


def _after_line(data: bytes | bytearray, i: int) -> int:
    """Just past the newline at or after `i`, or past the end of `data` when it has none."""
    newline = data.find(b"\n", i)
    return newline + 1 if newline >= 0 else len(data) + 1


def _check_index(index: int, start: int, size: int) -> None:
    if index > max(size - start, SMALL_INDEX):
        raise PickleRefused(f"memo index {index} in a pickle of at most {size - start} bytes")
