"""What both tree drawings share (`_render` for reports, `_render_inspect` for checkpoint
contents): a path trie, and runs of numbered siblings drawn as one line (``h.0–11``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence


def node_at(root, path: str, make: Callable):
    """The node of a tree of ``.children`` dicts at a dotted path, created with `make()` as needed."""
    node = root
    for part in path.split(".") if path else []:
        node = node.children.setdefault(part, make())
    return node


def numbered_run_end(items: Sequence[tuple[str, object]], start: int, alike: Callable[[int, int], bool]) -> int:
    """One past the last of the consecutively numbered siblings ``items[start:]`` for which
    ``alike(k, start)`` holds (it compares item `k` with item `start`); ``start + 1`` when the
    item at `start` begins no run.

    >>> items = [("0", "a"), ("1", "a"), ("2", "b"), ("4", "b")]
    >>> same = lambda k, first: items[k][1] == items[first][1]
    >>> numbered_run_end(items, 0, same), numbered_run_end(items, 2, same)
    (2, 3)
    """
    if not (items[start][0].isdigit() and alike(start, start)):
        return start + 1
    end = start + 1
    while (
        end < len(items)
        and items[end][0].isdigit()
        and int(items[end][0]) == int(items[end - 1][0]) + 1
        and alike(end, start)
    ):
        end += 1
    return end
