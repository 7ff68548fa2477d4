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
- **Render time** (:mod:`.guards`), against a per-render limit (:data:`~.guards.MAX_TEXT` characters, plus the
  size of the inputs for the preference template): every string, list or number a template builds (``+``,
  ``*``, ``%``, ``**``, ``~``, a filter, a method, a macro) is refused before it would pass the limit; ``range``
  holds at most :data:`~.guards.MAX_RANGE` items; the loops of one render run
  :data:`~.guards.MAX_LOOP_ITERATIONS` iterations in all; output (captured output included:
  ``{% set %}...{% endset %}``, macros, filter blocks) is counted; calls nest at most
  :data:`~.guards.MAX_CALL_DEPTH` deep; list, tuple and dict literals are sized like the values a template
  builds; ``|tojson`` and ``|pprint`` are sized before they write (:mod:`.sizes`); the ``in`` operator and the
  tests look through :data:`~.guards.MAX_TEST_WORK` items or characters in all; the rendered text is at most the
  limit; and the render ends after :data:`~.clock.MAX_RENDER_SECONDS` of wall-clock time (checked at every
  loop iteration, call, operator, filter, test, attribute lookup and output).
- The globals no persona needs are gone (``lipsum``, ``cycler``, ``joiner``, ``namespace``, ``dict``).

A limit passed raises :class:`jinja2.exceptions.SecurityError` (at render) or
:class:`jinja2.TemplateSyntaxError` (at parse); callers turn every failure into their typed error
(:class:`~langchain_persona_judge.errors.PersonaError`, :class:`~langchain_persona_judge.errors.PromptTemplateError`)
with :func:`template_line` and :func:`describe_error`. No LangChain, no torch.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, nodes
from jinja2.environment import Template
from jinja2.exceptions import SecurityError, TemplateError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.visitor import NodeTransformer

from .clock import CLOCK, Clock
from .guards import (
    BUDGET,
    BUILTIN_METHODS,
    MAX_CALL_DEPTH,
    MAX_TEXT,
    Budget,
    binop,
    check_format_spec,
    check_method,
    check_size,
    concat,
    container,
    current_budget,
    emit,
    guard_filter,
    guard_test,
    iterate,
    literal,
    refuse,
    small_range,
    tick,
)

MAX_SOURCE = 10_000
"""Characters of template source."""
MAX_NESTING = 48
"""Depth of the parsed template (statements and expressions nested in one another)."""

_REFUSED_TAGS: dict[type[nodes.Node], str] = {
    nodes.Extends: "extends",
    nodes.Include: "include",
    nodes.Import: "import",
    nodes.FromImport: "from ... import",
    nodes.Block: "block",
}


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
    """Rewrite the parsed template so that loops, ``~``, output, literals and ``in`` go through the budget."""

    def visit_List(self, node: nodes.List) -> nodes.Node:
        self.generic_visit(node)
        return _guard_call("persona_literal", node, node.lineno)

    def visit_Dict(self, node: nodes.Dict) -> nodes.Node:
        self.generic_visit(node)
        return _guard_call("persona_literal", node, node.lineno)

    def visit_Tuple(self, node: nodes.Tuple) -> nodes.Node:
        self.generic_visit(node)
        return _guard_call("persona_literal", node, node.lineno) if node.ctx == "load" else node

    def visit_Compare(self, node: nodes.Compare) -> nodes.Node:
        self.generic_visit(node)
        for operand in node.ops:
            if operand.op in ("in", "notin"):
                operand.expr = _guard_call("persona_container", operand.expr, operand.lineno)
        return node

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
        self.globals["range"] = small_range
        self.filters = {name: guard_filter(name, f) for name, f in self.filters.items()}
        self.tests = {name: guard_test(name, t) for name, t in self.tests.items()}

    # The rewritten template calls these as ``environment.persona_*``.
    persona_iterate = staticmethod(iterate)
    persona_concat = staticmethod(concat)
    persona_emit = staticmethod(emit)
    persona_literal = staticmethod(literal)
    persona_container = staticmethod(container)

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
        return binop(operator, left, right)

    def getattr(self, obj: Any, attribute: str) -> Any:
        tick()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        tick()
        return super().getitem(obj, argument)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapper = super().wrap_str_format(value)
        if wrapper is None:
            return None
        owner = value.__self__

        @functools.wraps(wrapper)
        def bounded(*args: Any, **kwargs: Any) -> str:
            check_format_spec(owner, current_budget().limit)
            return check_size(wrapper(*args, **kwargs), "format()")

        return bounded

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        if __obj is iterate or __obj is emit or __obj is concat or __obj is literal or __obj is container:
            return __obj(*args)
        if isinstance(__obj, BUILTIN_METHODS):
            args = check_method(__obj, args, kwargs)
        budget = tick()
        budget.depth += 1
        try:
            if budget.depth > MAX_CALL_DEPTH:
                raise refuse(f"calls nested more than {MAX_CALL_DEPTH} deep (a macro calling itself?)")
            result = super().call(__context, __obj, *args, **kwargs)
        finally:
            budget.depth -= 1
        return check_size(result, f"calling {getattr(__obj, '__name__', type(__obj).__name__)}()")


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
    builds) and the time left on the shared :class:`~.clock.Clock` (:func:`~.clock.shared_clock`; a clock of
    its own otherwise). Raises SecurityError past a limit, or whatever the template raised."""
    clock = CLOCK.get() or Clock()
    start = time.perf_counter()
    token = BUDGET.set(Budget(limit, deadline=start + clock.left, seconds=clock.seconds))
    try:
        context = template.new_context(dict(variables))
        parts: list[str] = []
        size = 0
        chunks = template.root_render_func(context)
        for chunk in chunks:
            size += len(chunk)
            if size > limit:
                # Raised at the template's current line, so that the error can name it.
                chunks.throw(refuse(f"the rendered text is longer than {limit} characters"))
            parts.append(chunk)
        return "".join(parts)
    finally:
        clock.left -= time.perf_counter() - start
        BUDGET.reset(token)


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
