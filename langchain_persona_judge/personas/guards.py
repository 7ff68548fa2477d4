"""Render-time guards of the hardened sandbox (:mod:`.sandbox`): the per-render budget, and the checked versions
of the operators, filters, loops, output and built-in methods a template may use.

Every string, list or number a template builds is refused before it would pass the render's limit
(:data:`MAX_TEXT` characters, or the limit :func:`~.sandbox.render_template` sets); ``range`` holds at most
:data:`MAX_RANGE` items; the loops of one render run :data:`MAX_LOOP_ITERATIONS` iterations in all; output is
counted (:data:`MAX_OUTPUT_FACTOR`); calls nest at most :data:`MAX_CALL_DEPTH` deep; ``|tojson`` and ``|pprint``
are sized before they write (:mod:`.sizes`); the ``in`` operator and the tests look through at most
:data:`MAX_TEST_WORK` items or characters in all; and one render (or the renders sharing a
:class:`~.clock.Clock`: a persona's ``extends`` chain) runs at most :data:`~.clock.MAX_RENDER_SECONDS` of
wall-clock time, checked at every loop iteration, call, operator, filter, test, attribute and output. A limit
passed raises :class:`jinja2.exceptions.SecurityError` (:func:`refuse`).
"""

from __future__ import annotations

import functools
import math
import pprint
import re
import string
import time
import types
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from jinja2.exceptions import SecurityError

from .clock import MAX_RENDER_SECONDS
from .sizes import MAX_DUMP_DEPTH, TOO_DEEP, count_nodes, json_size

MAX_TEXT = 10_000
"""Characters of a rendered persona text, and of anything a template builds beyond the size of its inputs."""
MAX_RANGE = 1_000
"""Items of ``range(...)``."""
MAX_LOOP_ITERATIONS = 10_000
"""``for`` iterations in one render, all loops together."""
MAX_OUTPUT_FACTOR = 4
"""Text written by one render, captured output included, as a multiple of the limit."""
MAX_CALL_DEPTH = 24
"""Nested calls (macros calling macros, ``caller()``...)."""
MAX_INT_BITS = 4_096
"""Bits of an integer built with ``*`` or ``**`` (about 1 200 digits)."""
MAX_ROUND_DIGITS = 100
"""``|round(precision)``."""
MAX_TEST_WORK = 10_000_000
"""Items and characters that the ``in`` operator and the tests (``is in``, ``select('in', ...)``...) of one
render look through, all together."""


def refuse(message: str) -> SecurityError:
    return SecurityError(f"the template went past a limit: {message}")


# -- per-render budget ----------------------------------------------------------------------------------


@dataclass
class Budget:
    limit: int
    """Largest text (or list, by weight) the template may build, and the longest output."""
    loops: int = MAX_LOOP_ITERATIONS
    output: int = 0
    depth: int = 0
    work: int = MAX_TEST_WORK
    deadline: float = math.inf
    """:func:`time.perf_counter` value past which the render is refused."""
    seconds: float = MAX_RENDER_SECONDS
    """The time limit that ``deadline`` enforces (for the message)."""
    known: dict[int, tuple[Any, int]] = field(default_factory=dict)
    """The weights of the latest containers written in the template (:func:`literal`)."""


BUDGET: ContextVar[Budget | None] = ContextVar("persona_template_budget", default=None)


def current_budget() -> Budget:
    # Outside render_template (constant folding at compile time, a bare Template.render) every check still
    # applies, against the default limit; only the clock does not run.
    return BUDGET.get() or Budget(MAX_TEXT)


def tick() -> Budget:
    """The render's budget, once its time limit is checked (called at every step a template takes)."""
    budget = current_budget()
    if time.perf_counter() > budget.deadline:
        raise refuse(
            f"it ran for more than {budget.seconds:g} s (its loops, calls, filters and tests together); make it do "
            "less work"
        )
    return budget


def charge(cost: int, what: str) -> None:
    """Count ``cost`` items or characters that a test or the ``in`` operator looks through."""
    budget = tick()
    budget.work -= cost
    if budget.work < 0:
        raise refuse(
            f"its tests (`in`, `==`...) looked through more than {MAX_TEST_WORK} items or characters in all (the "
            f"last one: {what}); test smaller values, or fewer times"
        )


def _length(value: Any) -> int:
    """What looking through ``value`` costs (``x in value``): its length for a text or a sequence, else 1."""
    return len(value) if isinstance(value, (str, bytes, bytearray, list, tuple, range)) else 1


def weight(value: Any, cap: int, known: Mapping[int, tuple[Any, int]] | None = None) -> int:
    """Size of a value: characters of a text, items of a container plus the weight of each (recursively);
    counting stops past ``cap``, so the cost is O(cap). ``known``: containers already weighed (by id: the
    container, its weight), not walked again."""
    total = 0
    stack = [value]
    while stack:
        item = stack.pop()
        hit = known.get(id(item)) if known else None
        if hit is not None and hit[0] is item:
            total += hit[1]
        elif isinstance(item, (str, bytes, bytearray, range)):
            total += len(item)
        elif isinstance(item, (list, tuple, set, frozenset)):
            total += len(item)
            if total <= cap:
                stack.extend(item)
        elif isinstance(item, dict):
            total += len(item)
            if total <= cap:
                stack.extend(item.keys())
                stack.extend(item.values())
        else:
            total += 1
        if total > cap:
            return cap + 1
    return total


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_size(value: Any, what: str) -> Any:
    """``value`` if it is within the render's limit; generators are wrapped to count what they yield."""
    limit = current_budget().limit
    if isinstance(value, (Iterator, types.GeneratorType)) and not isinstance(value, (str, bytes)):
        return counted(value, limit, what)
    if _is_int(value) and value.bit_length() > MAX_INT_BITS:
        raise refuse(f"{what} built an integer of {value.bit_length()} bits (limit {MAX_INT_BITS})")
    if weight(value, limit, current_budget().known) > limit:
        raise refuse(f"{what} built a value larger than {limit} characters or items")
    return value


KNOWN_WEIGHTS = 256
"""Containers written in a template whose weights a render remembers (the latest)."""


def literal(value: Any) -> Any:
    """A list, tuple or dict written in the template, sized like any value a template builds. Its weight is
    remembered, so that literals nested in one another (``[[[a]]]``, or ``{% set a = [a] %}`` repeated) are
    weighed once, not once a level."""
    budget = current_budget()
    size = weight(value, budget.limit, budget.known)
    if size > budget.limit:
        raise refuse(f"a list, tuple or dict written in the template holds more than {budget.limit} characters "
                     "or items")
    budget.known[id(value)] = (value, size)  # the container is kept alive, so its id is not reused
    if len(budget.known) > KNOWN_WEIGHTS:
        del budget.known[next(iter(budget.known))]
    return value


def counted(items: Iterable[Any], limit: int, what: str) -> Iterator[Any]:
    total = 0
    for item in items:
        tick()
        total += weight(item, limit)
        if total > limit:
            raise refuse(f"{what} produced more than {limit} characters or items")
        yield item


# -- operators --------------------------------------------------------------------------------------------

_SEQUENCES = (str, bytes, list, tuple)
_PRINTF = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?")
_SPEC_NUMBER = re.compile(r"\d+")


def _check_printf(fmt: str | bytes, limit: int) -> None:
    text = fmt.decode("latin-1") if isinstance(fmt, bytes) else fmt
    for match in _PRINTF.finditer(text):
        for number in match.groups():
            if number == "*":
                raise refuse("a `*` width or precision in a % format (write the number)")
            if number is not None and int(number) > limit:
                raise refuse(f"a % format width or precision of {number} (limit {limit})")


def check_format_spec(fmt: str, limit: int) -> None:
    try:
        fields = list(string.Formatter().parse(fmt))
    except ValueError:
        return  # str.format raises the same error
    for _, _, spec, _ in fields:
        if not spec:
            continue
        if "{" in spec:
            raise refuse("a nested {} in a format spec (write the width)")
        for number in _SPEC_NUMBER.findall(spec):
            if len(number) > 6 or int(number) > limit:
                raise refuse(f"a format width or precision of {number} (limit {limit})")


def binop(operator: str, left: Any, right: Any) -> Any:
    limit = tick().limit
    if operator == "**":
        if _is_int(left) and _is_int(right) and right > 0 and abs(left) > 1:
            if left.bit_length() * right > MAX_INT_BITS:
                raise refuse(f"`**` would build an integer of about {left.bit_length() * right} bits "
                              f"(limit {MAX_INT_BITS})")
        return left**right
    if operator == "*":
        if _is_int(left) and _is_int(right):
            if left.bit_length() + right.bit_length() > MAX_INT_BITS:
                raise refuse(f"`*` would build an integer of more than {MAX_INT_BITS} bits")
        elif isinstance(left, _SEQUENCES) or isinstance(right, _SEQUENCES):
            sequence, count = (left, right) if isinstance(left, _SEQUENCES) else (right, left)
            count = count if isinstance(count, int) else 0  # str * str: Python raises TypeError
            if count > 0 and weight(sequence, limit) * count > limit:
                raise refuse(f"`*` would repeat a value to more than {limit} characters or items")
        return check_size(left * right, "`*`")
    if operator == "+":
        if isinstance(left, _SEQUENCES) and isinstance(right, _SEQUENCES):
            if weight(left, limit) + weight(right, limit) > limit:
                raise refuse(f"`+` would build a value larger than {limit} characters or items")
        return check_size(left + right, "`+`")
    if operator == "%":
        if isinstance(left, (str, bytes)):
            _check_printf(left, limit)
        return check_size(left % right, "`%`")
    raise AssertionError(operator)  # only the operators above are intercepted


def concat(parts: list[Any]) -> str:
    texts = [str(p) for p in parts]
    limit = tick().limit
    if sum(len(t) for t in texts) > limit:
        raise refuse(f"`~` would build a text longer than {limit} characters")
    return "".join(texts)


def emit(value: Any) -> Any:
    budget = tick()
    budget.output += len(str(value))
    if budget.output > MAX_OUTPUT_FACTOR * budget.limit:
        raise refuse(f"the template wrote more than {MAX_OUTPUT_FACTOR * budget.limit} characters")
    return value


def iterate(items: Iterable[Any]) -> Iterator[Any]:
    budget = current_budget()
    for item in items:
        tick()
        budget.loops -= 1
        if budget.loops < 0:
            raise refuse(f"its loops ran more than {MAX_LOOP_ITERATIONS} iterations")
        yield item


def small_range(*args: int) -> range:
    rng = range(*args)
    if len(rng) > MAX_RANGE:
        raise refuse(f"range() of {len(rng)} items (limit {MAX_RANGE})")
    return rng


def container(value: Any) -> Any:
    """``value``, the right side of an ``in`` or ``not in``, once what looking through it costs is counted."""
    charge(_length(value), f"`in` a {type(value).__name__} of {_length(value)}")
    return value


# -- filters -------------------------------------------------------------------------------------------


def _check_center(value: Any, width: int = 80) -> None:
    if _is_int(width) and width > current_budget().limit:
        raise refuse(f"center({width}) (limit {current_budget().limit})")


def _check_indent(s: Any, width: Any = 4, first: bool = False, blank: bool = False) -> None:
    text = str(s)
    per_line = len(width) if isinstance(width, str) else width if _is_int(width) else 0
    if len(text) + (text.count("\n") + 1) * per_line > current_budget().limit:
        raise refuse(f"indent() would build a text longer than {current_budget().limit} characters")


def _check_wordwrap(s: Any, width: int = 79, break_long_words: bool = True, wrapstring: str | None = None,
                    break_on_hyphens: bool = True) -> None:
    text = str(s)
    lines = len(text) // max(int(width) if _is_int(width) else 1, 1) + text.count("\n") + 1
    if len(text) + lines * len(wrapstring if isinstance(wrapstring, str) else "\n") > current_budget().limit:
        raise refuse(f"wordwrap() would build a text longer than {current_budget().limit} characters")


def _check_replace(s: Any, old: Any, new: Any, count: int | None = None) -> None:
    text, old, new = str(s), str(old), str(new)
    hits = (text.count(old) if old else len(text) + 1) if count is None or count < 0 else min(count, len(text) + 1)
    if len(text) + hits * (len(new) - len(old)) > current_budget().limit:
        raise refuse(f"replace() would build a text longer than {current_budget().limit} characters")


def _check_count(name: str) -> Callable[..., None]:
    def check(value: Any, count: Any, fill_with: Any = None) -> None:
        if _is_int(count) and count > MAX_RANGE:
            raise refuse(f"{name}({count}) (limit {MAX_RANGE})")

    return check


def _check_sum(iterable: Any, attribute: Any = None, start: Any = 0) -> None:
    if not isinstance(start, (int, float)):
        raise refuse("sum() of anything but numbers (join texts with |join)")


def _check_round(value: Any, precision: int = 0, method: str = "common") -> None:
    if _is_int(precision) and abs(precision) > MAX_ROUND_DIGITS:
        raise refuse(f"round({precision}) (limit {MAX_ROUND_DIGITS} digits)")


def _check_format(value: Any, *args: Any, **kwargs: Any) -> None:
    _check_printf(str(value), current_budget().limit)


def _check_tojson(value: Any, indent: Any = None) -> None:
    limit = current_budget().limit
    written = json_size(value, indent, limit)
    if written == TOO_DEEP:
        raise refuse(f"|tojson of a value nested more than {MAX_DUMP_DEPTH} levels deep")
    if written > limit:
        raise refuse(f"|tojson would write more than {limit} characters; pass a smaller indent or a smaller value")


class _CappedStream:
    """Where ``|pprint`` writes: it refuses to hold more than ``limit`` characters, and checks the deadline at
    each write."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.parts: list[str] = []
        self.size = 0

    def write(self, text: str) -> None:
        tick()
        self.size += len(text)
        if self.size > self.limit:
            raise refuse(f"|pprint would write more than {self.limit - 1} characters; pass a smaller value")
        self.parts.append(text)


def bounded_pprint(value: Any) -> str:
    """``pprint.pformat(value)`` (what ``|pprint`` writes), within the render's limit and time."""
    limit = current_budget().limit
    nodes = count_nodes(value, limit)
    if nodes == TOO_DEEP:
        raise refuse(f"|pprint of a value nested more than {MAX_DUMP_DEPTH} levels deep")
    if nodes > limit:
        raise refuse(f"|pprint would write more than {limit} characters; pass a smaller value")
    stream = _CappedStream(limit + 1)  # pprint() ends with a line break, which pformat() does not write
    pprint.PrettyPrinter(stream=stream).pprint(value)
    return "".join(stream.parts)[:-1]


_FILTER_CHECKS: dict[str, Callable[..., None]] = {
    "center": _check_center,
    "indent": _check_indent,
    "wordwrap": _check_wordwrap,
    "replace": _check_replace,
    "batch": _check_count("batch"),
    "slice": _check_count("slice"),
    "sum": _check_sum,
    "round": _check_round,
    "format": _check_format,
    "tojson": _check_tojson,
}


def _guard_join(original: Callable[..., str]) -> Callable[..., str]:
    @functools.wraps(original)
    def join(eval_ctx: Any, value: Iterable[Any], d: str = "", attribute: Any = None) -> str:
        tick()
        items = list(counted(value, current_budget().limit, "join()"))
        size = sum(len(str(i)) for i in items) + len(str(d)) * max(len(items) - 1, 0)
        if attribute is None and size > current_budget().limit:
            raise refuse(f"join() would build a text longer than {current_budget().limit} characters")
        return check_size(original(eval_ctx, items, d, attribute), "join()")

    return join


def guard_filter(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
    if name == "join":
        return _guard_join(original)
    if name == "pprint":  # Jinja's is pprint.pformat(value), written at once
        original = bounded_pprint
    check = _FILTER_CHECKS.get(name)
    lead = 1 if getattr(original, "jinja_pass_arg", None) is not None else 0

    @functools.wraps(original)  # keeps jinja_pass_arg: Jinja passes the context/environment as before
    def guarded(*args: Any, **kwargs: Any) -> Any:
        tick()
        if check is not None:
            check(*args[lead:], **kwargs)
        return check_size(original(*args, **kwargs), f"|{name}")

    return guarded


_COSTLY_TESTS = frozenset(
    {"in", "lower", "upper", "==", "eq", "equalto", "!=", "ne", ">", "gt", "greaterthan", ">=", "ge", "<", "lt",
     "lessthan", "<=", "le"}
)
"""Tests that look through their values (the others, ``sameas`` included, take constant time)."""


def guard_test(name: str, original: Callable[..., bool]) -> Callable[..., bool]:
    """A Jinja test (``is in``, ``is eq``... and ``select``/``reject``'s), its cost counted: the length of the
    texts and sequences it looks through."""
    costly = name in _COSTLY_TESTS

    @functools.wraps(original)  # keeps jinja_pass_arg
    def guarded(*args: Any, **kwargs: Any) -> bool:
        cost = sum(_length(a) for a in (*args, *kwargs.values())) if costly else 1
        charge(cost, f"the `{name}` test")
        return original(*args, **kwargs)

    return guarded


# -- methods called from templates -------------------------------------------------------------------------

BUILTIN_METHODS = (types.BuiltinMethodType, types.MethodWrapperType)


def check_method(method: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> tuple[Any, ...]:
    """Size arguments of a built-in method (``'x'.ljust(n)``, ``s.replace(a, b)``...) within the limit; the
    arguments to call it with (an iterable given to ``str.join`` is read into a list first)."""
    owner = getattr(method, "__self__", None)
    if owner is None or isinstance(owner, types.ModuleType):
        return args
    limit = current_budget().limit
    for value in (*args, *kwargs.values()):
        if _is_int(value) and abs(value) > limit:
            raise refuse(f"{type(owner).__name__}.{method.__name__}() with {value} (limit {limit})")
    name = method.__name__
    if isinstance(owner, (str, bytes)):
        if name == "replace" and len(args) >= 2:
            _check_replace(owner, args[0], args[1], args[2] if len(args) > 2 else None)
        elif name == "expandtabs":
            size = args[0] if args else kwargs.get("tabsize", 8)
            tabs = owner.count("\t" if isinstance(owner, str) else b"\t")
            if _is_int(size) and len(owner) + tabs * size > limit:
                raise refuse(f"expandtabs() would build a text longer than {limit} characters")
        elif name == "translate" and len(args) == 1 and isinstance(owner, str) and isinstance(args[0], dict):
            table = args[0]
            size = sum(n * (len(v) if isinstance(v := table.get(ord(c), c), str) else 1)
                       for c, n in Counter(owner).items())
            if size > limit:
                raise refuse(f"translate() would build a text longer than {limit} characters")
        elif name == "join" and len(args) == 1:
            items = list(counted(args[0], limit, "join()"))
            if weight(items, limit) + len(owner) * len(items) > limit:
                raise refuse(f"join() would build a text longer than {limit} characters")
            return (items,)
    return args


__all__ = [
    "BUDGET",
    "BUILTIN_METHODS",
    "MAX_CALL_DEPTH",
    "MAX_INT_BITS",
    "MAX_LOOP_ITERATIONS",
    "MAX_OUTPUT_FACTOR",
    "MAX_RANGE",
    "MAX_ROUND_DIGITS",
    "MAX_TEST_WORK",
    "MAX_TEXT",
    "Budget",
    "binop",
    "charge",
    "check_format_spec",
    "check_method",
    "check_size",
    "concat",
    "container",
    "current_budget",
    "emit",
    "guard_filter",
    "guard_test",
    "iterate",
    "literal",
    "refuse",
    "small_range",
    "tick",
    "weight",
]
