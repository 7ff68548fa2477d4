"""Sizes of the values given to ``|tojson`` and ``|pprint``, measured before they write anything.

Both filters can turn a small value into a huge text: ``tojson(indent=n)`` writes ``n`` spaces per nesting
level before every item, and ``pprint`` indents the items of a dict's value by the length of its key, so a value
that holds a few thousand characters can print gigabytes. The sandbox's guards (:mod:`.guards`) refuse
``tojson`` when :func:`json_size` (an upper bound of what it writes) is over the render's limit, and ``pprint``
when the value is too large or too deep (:func:`count_nodes`; it then writes to a stream that stops at the
limit). A value nested past :data:`MAX_DUMP_DEPTH` levels counts as :data:`TOO_DEEP`. Each walk counts at least one for each node it visits and stops past ``cap``: its cost is O(cap). No
Jinja, no LangChain.
"""

from __future__ import annotations

import json
from typing import Any

MAX_DUMP_DEPTH = 100
"""Nesting levels of a value given to ``|tojson`` or ``|pprint``."""

_DICT_VIEWS = (type({}.keys()), type({}.values()), type({}.items()))
_HTML_UNSAFE = "<>&'"  # tojson writes each as \\u00XX: 5 characters more
TOO_DEEP = -1
"""What :func:`json_size` and :func:`count_nodes` return for a value nested past :data:`MAX_DUMP_DEPTH` levels."""


def _json_scalar(value: Any) -> int:
    if isinstance(value, str):
        return len(json.dumps(value)) + 5 * sum(value.count(c) for c in _HTML_UNSAFE)
    if isinstance(value, bool) or value is None:
        return 5
    if isinstance(value, int):
        return value.bit_length() * 31 // 100 + 2  # decimal digits, and a sign
    if isinstance(value, float):
        return 24
    return 1  # json.dumps refuses it (TypeError): nothing is written


def json_size(value: Any, indent: Any, cap: int) -> int:
    """At most how many characters ``|tojson(indent=indent)`` writes for ``value`` (``cap + 1``: more than
    ``cap``); :data:`TOO_DEEP` past :data:`MAX_DUMP_DEPTH` levels."""
    width = len(indent) if isinstance(indent, str) else max(indent, 0) if isinstance(indent, int) else 0
    if width > cap:
        return cap + 1  # json.dumps builds the indent string first
    lines = indent is not None
    total = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if level > MAX_DUMP_DEPTH:
            return TOO_DEEP
        if isinstance(item, dict):
            children: list[Any] = list(item.values())
            total += sum(_json_scalar(k if isinstance(k, str) else str(k)) + 2 for k in item)
        elif isinstance(item, (list, tuple)):
            children = list(item)
        else:
            total += _json_scalar(item)
            children = []
        if isinstance(item, (dict, list, tuple)):
            # brackets; a separator, a line break and the indent before each item, and before the closing bracket
            total += 2 + (1 + width * level if lines else 0)
            total += len(children) * (2 + (1 + width * (level + 1) if lines else 0))
            stack.extend((child, level + 1) for child in children)
        if total > cap:
            return cap + 1
    return total


def count_nodes(value: Any, cap: int) -> int:
    """How many items ``value`` holds, itself included (``cap + 1``: more than ``cap``); :data:`TOO_DEEP` past
    :data:`MAX_DUMP_DEPTH` levels. ``pprint`` writes at least a character an item, and walks the whole value
    again at every level."""
    count = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if level > MAX_DUMP_DEPTH:
            return TOO_DEEP
        count += 1
        if count > cap:
            return cap + 1
        if isinstance(item, dict):
            stack.extend((child, level + 1) for pair in item.items() for child in pair)
        elif isinstance(item, (list, tuple, set, frozenset, *_DICT_VIEWS)):
            stack.extend((child, level + 1) for child in item)
    return count


__all__ = ["MAX_DUMP_DEPTH", "TOO_DEEP", "count_nodes", "json_size"]
