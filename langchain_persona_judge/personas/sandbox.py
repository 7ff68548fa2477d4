"""The one Jinja environment that renders persona and preference templates, hardened for untrusted text.

Registries are shared between people, so a template is untrusted input. jinja2's immutable sandbox already
refuses private attributes, unsafe callables and writes to lists and dicts; it does not bound the work or the
memory a template may take. This environment does, so that any template finishes in well under a second:

- **Parse time** (:meth:`HardenedSandbox._parse`, and again before compiling): the source holds at most
  :data:`MAX_SOURCE` characters and
  nests at most :data:`MAX_NESTING` levels; ``include``, ``extends``, ``import``, ``from ... import`` and
  ``block`` (templates loading other templates), recursive ``for`` loops and macros calling themselves are
  refused. No constant is folded at compile time (``optimized=False``), and the operators below are
  intercepted, so nothing of the template runs before it is rendered.
- **Render time**, against a per-render limit (:data:`MAX_TEXT` characters, plus the size of the inputs for
  the preference template): every string, list or number a template builds (``+``, ``*``, ``%``, ``**``,
  ``~``, a filter, a method, a macro) is refused before it would pass the limit; ``range`` holds at most
  :data:`MAX_RANGE` items; the loops of one render run :data:`MAX_LOOP_ITERATIONS` iterations in all; output
  (captured output included: ``{% set %}...{% endset %}``, macros, filter blocks) is counted; calls nest at
  most :data:`MAX_CALL_DEPTH` deep; and the rendered text is at most the limit.
- The globals no persona needs are gone (``lipsum``, ``cycler``, ``joiner``, ``namespace``, ``dict``).

A limit passed raises :class:`jinja2.exceptions.SecurityError` (at render) or
:class:`jinja2.TemplateSyntaxError` (at parse); callers turn every failure into their typed error
(:class:`~langchain_persona_judge.errors.PersonaError`, :class:`~langchain_persona_judge.errors.PromptTemplateError`)
with :func:`template_line` and :func:`describe_error`. No LangChain, no torch.
"""

from __future__ import annotations

import functools
import re
import string
import types
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, nodes
from jinja2.environment import Template
from jinja2.exceptions import SecurityError, TemplateError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.visitor import NodeTransformer

MAX_SOURCE = 10_000
"""Characters of template source."""
MAX_TEXT = 10_000
"""Characters of a rendered persona text, and of anything a template builds beyond the size of its inputs."""
MAX_NESTING = 48
"""Depth of the parsed template (statements and expressions nested in one another)."""
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

_REFUSED_TAGS: dict[type[nodes.Node], str] = {
    nodes.Extends: "extends",
    nodes.Include: "include",
    nodes.Import: "import",
    nodes.FromImport: "from ... import",
    nodes.Block: "block",
}


def _refuse(message: str) -> SecurityError:
    return SecurityError(f"the template went past a limit: {message}")


def _refused(message: str, line: int, name: str | None) -> TemplateSyntaxError:
    """A template refused at parse time (valid Jinja, but not allowed here)."""
    exc = TemplateSyntaxError(message, line, name)
    exc.persona_refusal = True  # type: ignore[attr-defined]
    return exc


def is_refusal(exc: BaseException) -> bool:
    """Whether ``exc`` is this sandbox refusing a template (a limit or a forbidden tag), not a plain error."""
    if isinstance(exc, TemplateSyntaxError):
        return getattr(exc, "persona_refusal", False)
    return isinstance(exc, SecurityError)


class InlineTemplate(str):
    """Template text (never a file path) that remembers where it came from, for error messages; it is
    otherwise a plain ``str`` (a persona's ``system:`` template is one, with its file, line and name)."""

    origin: str | None

    def __new__(cls, text: str, origin: str | None = None) -> InlineTemplate:
        self = super().__new__(cls, text)
        self.origin = origin
        return self


# -- per-render budget ----------------------------------------------------------------------------------


@dataclass
class _Budget:
    limit: int
    """Largest text (or list, by weight) the template may build, and the longest output."""
    loops: int = MAX_LOOP_ITERATIONS
    output: int = 0
    depth: int = 0


_BUDGET: ContextVar[_Budget | None] = ContextVar("persona_template_budget", default=None)


def _budget() -> _Budget:
    # Outside render_template (constant folding at compile time, a bare Template.render) every check still
    # applies, against the default limit.
    return _BUDGET.get() or _Budget(MAX_TEXT)


def weight(value: Any, cap: int) -> int:
    """Size of a value: characters of a text, items of a container plus the weight of each (recursively);
    counting stops past ``cap``, so the cost is O(cap)."""
    total = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, (str, bytes, bytearray, range)):
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


def _check_size(value: Any, what: str) -> Any:
    """``value`` if it is within the render's limit; generators are wrapped to count what they yield."""
    limit = _budget().limit
    if isinstance(value, (Iterator, types.GeneratorType)) and not isinstance(value, (str, bytes)):
        return _counted(value, limit, what)
    if _is_int(value) and value.bit_length() > MAX_INT_BITS:
        raise _refuse(f"{what} built an integer of {value.bit_length()} bits (limit {MAX_INT_BITS})")
    if weight(value, limit) > limit:
        raise _refuse(f"{what} built a value larger than {limit} characters or items")
    return value


def _counted(items: Iterable[Any], limit: int, what: str) -> Iterator[Any]:
    total = 0
    for item in items:
        total += weight(item, limit)
        if total > limit:
            raise _refuse(f"{what} produced more than {limit} characters or items")
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
                raise _refuse("a `*` width or precision in a % format (write the number)")
            if number is not None and int(number) > limit:
                raise _refuse(f"a % format width or precision of {number} (limit {limit})")


def _check_format_spec(fmt: str, limit: int) -> None:
    try:
        fields = list(string.Formatter().parse(fmt))
    except ValueError:
        return  # str.format raises the same error
    for _, _, spec, _ in fields:
        if not spec:
            continue
        if "{" in spec:
            raise _refuse("a nested {} in a format spec (write the width)")
        for number in _SPEC_NUMBER.findall(spec):
            if len(number) > 6 or int(number) > limit:
                raise _refuse(f"a format width or precision of {number} (limit {limit})")


def _binop(operator: str, left: Any, right: Any) -> Any:
    limit = _budget().limit
    if operator == "**":
        if _is_int(left) and _is_int(right) and right > 0 and abs(left) > 1:
            if left.bit_length() * right > MAX_INT_BITS:
                raise _refuse(f"`**` would build an integer of about {left.bit_length() * right} bits "
                              f"(limit {MAX_INT_BITS})")
        return left**right
    if operator == "*":
        if _is_int(left) and _is_int(right):
            if left.bit_length() + right.bit_length() > MAX_INT_BITS:
                raise _refuse(f"`*` would build an integer of more than {MAX_INT_BITS} bits")
        elif isinstance(left, _SEQUENCES) or isinstance(right, _SEQUENCES):
            sequence, count = (left, right) if isinstance(left, _SEQUENCES) else (right, left)
            count = count if isinstance(count, int) else 0  # str * str: Python raises TypeError
            if count > 0 and weight(sequence, limit) * count > limit:
                raise _refuse(f"`*` would repeat a value to more than {limit} characters or items")
        return _check_size(left * right, "`*`")
    if operator == "+":
        if isinstance(left, _SEQUENCES) and isinstance(right, _SEQUENCES):
            if weight(left, limit) + weight(right, limit) > limit:
                raise _refuse(f"`+` would build a value larger than {limit} characters or items")
        return _check_size(left + right, "`+`")
    if operator == "%":
        if isinstance(left, (str, bytes)):
            _check_printf(left, limit)
        return _check_size(left % right, "`%`")
    raise AssertionError(operator)  # only the operators above are intercepted


def _concat(parts: list[Any]) -> str:
    texts = [str(p) for p in parts]
    limit = _budget().limit
    if sum(len(t) for t in texts) > limit:
        raise _refuse(f"`~` would build a text longer than {limit} characters")
    return "".join(texts)


def _emit(value: Any) -> Any:
    budget = _budget()
    budget.output += len(str(value))
    if budget.output > MAX_OUTPUT_FACTOR * budget.limit:
        raise _refuse(f"the template wrote more than {MAX_OUTPUT_FACTOR * budget.limit} characters")
    return value


def _iterate(items: Iterable[Any]) -> Iterator[Any]:
    budget = _budget()
    for item in items:
        budget.loops -= 1
        if budget.loops < 0:
            raise _refuse(f"its loops ran more than {MAX_LOOP_ITERATIONS} iterations")
        yield item


def _small_range(*args: int) -> range:
    rng = range(*args)
    if len(rng) > MAX_RANGE:
        raise _refuse(f"range() of {len(rng)} items (limit {MAX_RANGE})")
    return rng


# -- filters -------------------------------------------------------------------------------------------


def _check_center(value: Any, width: int = 80) -> None:
    if _is_int(width) and width > _budget().limit:
        raise _refuse(f"center({width}) (limit {_budget().limit})")


def _check_indent(s: Any, width: Any = 4, first: bool = False, blank: bool = False) -> None:
    text = str(s)
    per_line = len(width) if isinstance(width, str) else width if _is_int(width) else 0
    if len(text) + (text.count("\n") + 1) * per_line > _budget().limit:
        raise _refuse(f"indent() would build a text longer than {_budget().limit} characters")


def _check_wordwrap(s: Any, width: int = 79, break_long_words: bool = True, wrapstring: str | None = None,
                    break_on_hyphens: bool = True) -> None:
    text = str(s)
    lines = len(text) // max(int(width) if _is_int(width) else 1, 1) + text.count("\n") + 1
    if len(text) + lines * len(wrapstring if isinstance(wrapstring, str) else "\n") > _budget().limit:
        raise _refuse(f"wordwrap() would build a text longer than {_budget().limit} characters")


def _check_replace(s: Any, old: Any, new: Any, count: int | None = None) -> None:
    text, old, new = str(s), str(old), str(new)
    hits = (text.count(old) if old else len(text) + 1) if count is None or count < 0 else min(count, len(text) + 1)
    if len(text) + hits * (len(new) - len(old)) > _budget().limit:
        raise _refuse(f"replace() would build a text longer than {_budget().limit} characters")


def _check_count(name: str) -> Callable[..., None]:
    def check(value: Any, count: Any, fill_with: Any = None) -> None:
        if _is_int(count) and count > MAX_RANGE:
            raise _refuse(f"{name}({count}) (limit {MAX_RANGE})")

    return check


def _check_sum(iterable: Any, attribute: Any = None, start: Any = 0) -> None:
    if not isinstance(start, (int, float)):
        raise _refuse("sum() of anything but numbers (join texts with |join)")


def _check_round(value: Any, precision: int = 0, method: str = "common") -> None:
    if _is_int(precision) and abs(precision) > MAX_ROUND_DIGITS:
        raise _refuse(f"round({precision}) (limit {MAX_ROUND_DIGITS} digits)")


def _check_format(value: Any, *args: Any, **kwargs: Any) -> None:
    _check_printf(str(value), _budget().limit)


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
}


def _guard_join(original: Callable[..., str]) -> Callable[..., str]:
    @functools.wraps(original)
    def join(eval_ctx: Any, value: Iterable[Any], d: str = "", attribute: Any = None) -> str:
        items = list(_counted(value, _budget().limit, "join()"))
        size = sum(len(str(i)) for i in items) + len(str(d)) * max(len(items) - 1, 0)
        if attribute is None and size > _budget().limit:
            raise _refuse(f"join() would build a text longer than {_budget().limit} characters")
        return _check_size(original(eval_ctx, items, d, attribute), "join()")

    return join


def _guard_filter(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
    if name == "join":
        return _guard_join(original)
    check = _FILTER_CHECKS.get(name)
    lead = 1 if getattr(original, "jinja_pass_arg", None) is not None else 0

    @functools.wraps(original)  # keeps jinja_pass_arg: Jinja passes the context/environment as before
    def guarded(*args: Any, **kwargs: Any) -> Any:
        if check is not None:
            check(*args[lead:], **kwargs)
        return _check_size(original(*args, **kwargs), f"|{name}")

    return guarded


# -- methods called from templates -------------------------------------------------------------------------

_BUILTIN_METHODS = (types.BuiltinMethodType, types.MethodWrapperType)


def _check_method(method: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> tuple[Any, ...]:
    """Size arguments of a built-in method (``'x'.ljust(n)``, ``s.replace(a, b)``...) within the limit; the
    arguments to call it with (an iterable given to ``str.join`` is read into a list first)."""
    owner = getattr(method, "__self__", None)
    if owner is None or isinstance(owner, types.ModuleType):
        return args
    limit = _budget().limit
    for value in (*args, *kwargs.values()):
        if _is_int(value) and abs(value) > limit:
            raise _refuse(f"{type(owner).__name__}.{method.__name__}() with {value} (limit {limit})")
    name = method.__name__
    if isinstance(owner, (str, bytes)):
        if name == "replace" and len(args) >= 2:
            _check_replace(owner, args[0], args[1], args[2] if len(args) > 2 else None)
        elif name == "expandtabs":
            size = args[0] if args else kwargs.get("tabsize", 8)
            tabs = owner.count("\t" if isinstance(owner, str) else b"\t")
            if _is_int(size) and len(owner) + tabs * size > limit:
                raise _refuse(f"expandtabs() would build a text longer than {limit} characters")
        elif name == "join" and len(args) == 1:
            items = list(_counted(args[0], limit, "join()"))
            if weight(items, limit) + len(owner) * len(items) > limit:
                raise _refuse(f"join() would build a text longer than {limit} characters")
            return (items,)
    return args


# -- parse-time checks and rewriting ---------------------------------------------------------------------


def _digits_line(source: str) -> int:
    match = re.search(r"\d{1000,}", source)
    return source.count("\n", 0, match.start()) + 1 if match else 1


def _check_tree(tree: nodes.Template, name: str | None) -> None:
    stack: list[tuple[nodes.Node, int]] = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        line = getattr(node, "lineno", 1) or 1
        if depth > MAX_NESTING:
            raise _refused(f"the template nests more than {MAX_NESTING} levels deep; flatten it", line, name)
        tag = _REFUSED_TAGS.get(type(node))
        if tag is not None:
            raise _refused(
                f"`{{% {tag} %}}` is not allowed: a persona template cannot load other templates", line, name
            )
        if isinstance(node, nodes.For) and node.recursive:
            raise _refused("recursive loops are not allowed", line, name)
        if isinstance(node, nodes.Macro):
            for call in node.find_all(nodes.Call):
                if isinstance(call.node, nodes.Name) and call.node.name == node.name:
                    raise _refused(
                        f"macro {node.name!r} calls itself; recursive macros are not allowed", call.lineno, name
                    )
        stack.extend((child, depth + 1) for child in node.iter_child_nodes())


def _guard_call(function: str, argument: nodes.Expr, lineno: int) -> nodes.Call:
    return nodes.Call(nodes.EnvironmentAttribute(function, lineno=lineno), [argument], [], None, None, lineno=lineno)


class _Guards(NodeTransformer):
    """Rewrite the parsed template so that loops, ``~`` and output go through the budget."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = _guard_call("persona_iterate", node.iter, node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return _guard_call("persona_concat", nodes.List(node.nodes, lineno=node.lineno), node.lineno)

    def visit_Output(self, node: nodes.Output) -> nodes.Node:
        self.generic_visit(node)
        node.nodes = [
            _guard_call(
                "persona_emit",
                nodes.Const(child.data, lineno=child.lineno) if isinstance(child, nodes.TemplateData) else child,
                child.lineno,
            )
            for child in node.nodes
        ]
        return node


class HardenedSandbox(ImmutableSandboxedEnvironment):
    """jinja2's immutable sandbox with bounded work and memory (see the module docstring for the limits)."""

    intercepted_binops = frozenset({"+", "*", "%", "**"})

    def __init__(self) -> None:
        super().__init__(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False, optimized=False)
        for name in ("lipsum", "cycler", "joiner", "namespace", "dict"):
            self.globals.pop(name, None)
        self.globals["range"] = _small_range
        self.filters = {name: _guard_filter(name, f) for name, f in self.filters.items()}

    # The rewritten template calls these as ``environment.persona_*``.
    persona_iterate = staticmethod(_iterate)
    persona_concat = staticmethod(_concat)
    persona_emit = staticmethod(_emit)

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        if len(source) > MAX_SOURCE:
            raise _refused(f"the template is {len(source)} characters long; the limit is {MAX_SOURCE}", 1, name)
        try:
            tree = super()._parse(source, name, filename)
        except TemplateSyntaxError:
            raise
        except RecursionError:
            raise _refused(f"the template nests too deeply (limit {MAX_NESTING} levels)", 1, name) from None
        except (ValueError, OverflowError, MemoryError) as exc:  # e.g. a 5000-digit literal
            raise _refused(f"could not read a literal: {exc}", _digits_line(source), name) from None
        _check_tree(tree, name)
        return tree

    def _generate(
        self, source: nodes.Template, name: str | None, filename: str | None, defer_init: bool = False
    ) -> str:
        # Compiling (not parsing, so that meta.find_undeclared_variables reads the tree as written): rewrite the
        # tree, in place, so that loops, `~` and output are counted.
        _check_tree(source, name)
        tree = _Guards().visit(source)
        tree.set_environment(self)
        return super()._generate(tree, name, filename, defer_init)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        return _binop(operator, left, right)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapper = super().wrap_str_format(value)
        if wrapper is None:
            return None
        owner = value.__self__

        @functools.wraps(wrapper)
        def bounded(*args: Any, **kwargs: Any) -> str:
            _check_format_spec(owner, _budget().limit)
            return _check_size(wrapper(*args, **kwargs), "format()")

        return bounded

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        if __obj is _iterate or __obj is _emit or __obj is _concat:
            return __obj(*args)
        if isinstance(__obj, _BUILTIN_METHODS):
            args = _check_method(__obj, args, kwargs)
        budget = _budget()
        budget.depth += 1
        try:
            if budget.depth > MAX_CALL_DEPTH:
                raise _refuse(f"calls nested more than {MAX_CALL_DEPTH} deep (a macro calling itself?)")
            result = super().call(__context, __obj, *args, **kwargs)
        finally:
            budget.depth -= 1
        return _check_size(result, f"calling {getattr(__obj, '__name__', type(__obj).__name__)}()")


ENVIRONMENT = HardenedSandbox()


@lru_cache(maxsize=512)
def parse_template(source: str) -> nodes.Template:
    """The checked, rewritten syntax tree of ``source`` (for ``meta.find_undeclared_variables``)."""
    return ENVIRONMENT.parse(source)


@lru_cache(maxsize=256)
def compile_template(source: str) -> Template:
    """``source`` compiled in the hardened sandbox; raises TemplateSyntaxError for a refused template."""
    try:
        return ENVIRONMENT.from_string(source)
    except TemplateSyntaxError:
        raise
    except (RecursionError, SyntaxError, MemoryError) as exc:
        raise _refused(f"the template could not be compiled ({type(exc).__name__}: {exc})", 1, None) from None


def input_size(*values: Any) -> int:
    """Characters of the texts among ``values`` (texts, and lists of texts): what a template may repeat once."""
    total = 0
    for value in values:
        if isinstance(value, str):
            total += len(value)
        elif isinstance(value, (list, tuple)):
            total += sum(len(v) for v in value if isinstance(v, str))
    return total


def render_template(template: Template, variables: Mapping[str, Any], limit: int = MAX_TEXT) -> str:
    """Render ``template`` with ``variables``, within ``limit`` (characters of output, and of any value it
    builds). Raises SecurityError past a limit, or whatever the template raised."""
    token = _BUDGET.set(_Budget(limit))
    try:
        context = template.new_context(dict(variables))
        parts: list[str] = []
        size = 0
        chunks = template.root_render_func(context)
        for chunk in chunks:
            size += len(chunk)
            if size > limit:
                # Raised at the template's current line, so that the error can name it.
                chunks.throw(_refuse(f"the rendered text is longer than {limit} characters"))
            parts.append(chunk)
        return "".join(parts)
    finally:
        _BUDGET.reset(token)


def template_line(exc: BaseException, template: Template | None = None) -> int | None:
    """The line of the template where ``exc`` was raised (None when unknown)."""
    if isinstance(exc, TemplateSyntaxError):
        return exc.lineno
    line = None
    tb = exc.__traceback__
    while tb is not None:
        owner = tb.tb_frame.f_globals.get("__jinja_template__")
        if owner is not None and (template is None or owner is template):
            line = owner.get_corresponding_lineno(tb.tb_lineno)
        tb = tb.tb_next
    return line


def describe_error(exc: BaseException) -> str:
    """What went wrong, in words, for an error raised while parsing or rendering a template."""
    if isinstance(exc, TemplateSyntaxError):
        return str(exc.message or exc).rstrip(".")
    if isinstance(exc, SecurityError):
        text = str(exc)
        if text.startswith("the template went past a limit"):
            return text
        return (f"the template tried an unsafe operation ({text}); templates may only use variables, filters "
                "and plain expressions")
    if isinstance(exc, UndefinedError):
        return str(exc)
    if isinstance(exc, RecursionError):
        return "the template recursed too deeply"
    if isinstance(exc, MemoryError):
        return "the template ran out of memory"
    if isinstance(exc, TemplateError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
