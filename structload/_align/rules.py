r"""`code()` as a person writes it: rename rules that differ only in their numbers become one rule.

`align` first writes one rule per source module it matched outside numbered blocks
(``^encoder\.stages\.0\.layers\.1\.layer\.0\.convolution\.`` -> ``layer1.1.conv1.``). `generalise`
folds the rules whose paths are the same but for their numbers into one: each number of the
destination is a number of the source (``\2``), the same number shifted (stage 0 is ``layer1``:
a `Shifted` replacement, a small function, since a regex cannot add), or a constant. Numbers that
follow no rule stay as they are, each on its own line (the true exceptions).

>>> rules = {r"^stages\.0\.layer\.0\.conv\.": "layer1.conv1.", r"^stages\.1\.layer\.1\.conv\.": "layer2.conv2."}
>>> rules[r"^stem\.conv\."] = "conv1."
>>> for key, value in generalise(rules).items():
...     print(key, "->", value)
^stages\.(\d+)\.layer\.(\d+)\.conv\. -> lambda m: f"layer{int(m[1]) + 1}.conv{int(m[2]) + 1}."
^stem\.conv\. -> conv1.
>>> import re
>>> re.sub(r"^stages\.(\d+)\.layer\.(\d+)\.conv\.", generalise(rules)[r"^stages\.(\d+)\.layer\.(\d+)\.conv\."], "stages.3.layer.0.conv.weight")
'layer4.conv1.weight'
"""

from __future__ import annotations

import re

_NUMBER = re.compile(r"\d+")
_LITERAL = re.compile(r"\^((?:[^\\^$.*+?()\[\]{}|]|\\.)+?)(\\\.|\$)")


class Shifted:
    """A rename replacement that shifts numbers of the match (``layer{n + 1}`` for ``stages.{n}``),
    written in `code()` as the lambda it behaves as.

    `parts` are literal text and ``(group, offset)`` pairs.

    >>> shifted = Shifted(["layer", (1, 1), "."])
    >>> shifted, shifted(re.match(r"stages\\.(\\d+)\\.", "stages.0."))
    (lambda m: f"layer{int(m[1]) + 1}.", 'layer1.')
    """

    def __init__(self, parts: list):
        self.parts = parts

    def __call__(self, match: re.Match) -> str:
        return "".join(p if isinstance(p, str) else str(int(match[p[0]]) + p[1]) for p in self.parts)

    def __repr__(self) -> str:
        text = ""
        for part in self.parts:
            if isinstance(part, str):
                text += part.replace("{", "{{").replace("}", "}}").replace('"', '\\"')
            else:
                group, offset = part
                text += (
                    f"{{m[{group}]}}"
                    if offset == 0
                    else f"{{int(m[{group}]) {'+' if offset > 0 else '-'} {abs(offset)}}}"
                )
        return f'lambda m: f"{text}"'

    def __eq__(self, other) -> bool:
        return isinstance(other, Shifted) and other.parts == self.parts

    __hash__ = None  # type: ignore[assignment]


def generalise(rules: dict) -> dict:
    """`rules` with the literal rules that differ only in their numbers folded into one each (see
    the module); the others unchanged, in their order."""
    groups: dict[tuple, list[tuple[str, str, str]]] = {}
    for key, value in rules.items():
        found = _literal(key, value)
        if found is not None:
            src, tail = found
            groups.setdefault((_NUMBER.sub("#", src), _NUMBER.sub("#", value), tail), []).append((key, src, value))
    folded: dict = {}
    for members in groups.values():
        rule = _fold(members) if len(members) > 1 else None
        if rule is not None:
            for key, _, _ in members:
                folded[key] = rule
    result: dict = {}
    for key, value in rules.items():
        if key in folded:
            pattern, replacement = folded[key]
            result.setdefault(pattern, replacement)
        else:
            result[key] = value
    return result


def _literal(key, value) -> tuple[str, str] | None:
    """(the source path a plain rule names, its tail ``\\.`` or ``$``), or None for any other rule."""
    if type(key) is not str or not isinstance(value, str) or "\\" in value:
        return None
    found = _LITERAL.fullmatch(key)
    if found is None:
        return None
    return re.sub(r"\\(.)", r"\1", found[1]), found[2]


def _fold(members: list[tuple[str, str, str]]) -> tuple[str, object] | None:
    """One rule for rules alike but for their numbers, or None when the numbers follow no rule."""
    src_numbers = [[int(n) for n in _NUMBER.findall(src)] for _, src, _ in members]
    dst_numbers = [[int(n) for n in _NUMBER.findall(dst)] for _, _, dst in members]
    varying = [i for i in range(len(src_numbers[0])) if len({n[i] for n in src_numbers}) > 1]
    sources: list = []  # per destination number: (source number, offset), or its constant
    for j in range(len(dst_numbers[0])):
        column = [n[j] for n in dst_numbers]
        shifts = [(i, column[0] - src_numbers[0][i]) for i in varying]
        shifts = [(i, d) for i, d in shifts if all(c - n[i] == d for c, n in zip(column, src_numbers))]
        if shifts:
            taken = {s[0] for s in sources if isinstance(s, tuple)}  # each source number once, in order
            sources.append(min(shifts, key=lambda s: (s[0] in taken, s[1] != 0, s[0])))
        elif len(set(column)) == 1:
            sources.append(column[0])
        else:
            return None
    used = {s[0] for s in sources if isinstance(s, tuple)}
    if used != set(varying):  # a source number the destination does not follow
        return None
    group_of = {i: k + 1 for k, i in enumerate(varying)}
    _, src, dst = members[0]
    pieces = _NUMBER.split(src)
    pattern = "^" + re.escape(pieces[0])
    for i, piece in enumerate(pieces[1:]):
        pattern += (r"(\d+)" if i in group_of else str(src_numbers[0][i])) + re.escape(piece)
    parts: list = [_NUMBER.split(dst)[0]]
    for source, piece in zip(sources, _NUMBER.split(dst)[1:]):
        parts += [(group_of[source[0]], source[1]) if isinstance(source, tuple) else str(source), piece]
    tail = _LITERAL.fullmatch(members[0][0])[2]  # type: ignore[index]
    return pattern + tail, _replacement(parts)


def _replacement(parts: list):
    """A plain ``re.sub`` template when no number is shifted, else a `Shifted`."""
    if any(isinstance(p, tuple) and p[1] for p in parts):
        return Shifted([p for p in parts if p != ""])
    text = ""
    for i, part in enumerate(parts):
        if isinstance(part, str):
            text += part
        else:
            after = next((p for p in parts[i + 1 :] if p != ""), "")
            text += f"\\g<{part[0]}>" if isinstance(after, str) and after[:1].isdigit() else f"\\{part[0]}"
    return text
