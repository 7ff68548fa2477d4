"""Tool calling for ChatPersonaJudge: converting tools, rendering them and tool histories, the grammar of a
tool call, and parsing calls out of the decoded text (whole, and as a stream).

The call format is the Hermes/Qwen one, which many chat templates with ``tools`` support already teach::

    <tool_call>
    {"name": "get_weather", "arguments": {"location": "Paris"}}
    </tool_call>

Tools reach the model through the chat template's ``tools=`` support when the template has it; otherwise
through the fallback system prompt :data:`FALLBACK_TOOLS_PROMPT` (the tools as JSON and the call format), with
earlier calls written into the assistant turns in the same format and tool results as user turns in
``<tool_response>`` tags.

With a grammar engine installed (``langchain-persona-judge[grammar]``) the answer is constrained:

* ``tool_choice="any"``/``"required"`` or a tool name: the answer is only ``<tool_call>`` blocks (one unless
  ``parallel_tool_calls=True``), each one's arguments valid against that tool's JSON schema;
* ``"auto"``: free text, and once the model writes ``<tool_call>`` the block is constrained the same way;
* ``"none"``: the tools are not shown and the answer is plain text.

Without it, ``"auto"`` still works (calls are parsed leniently) and the forcing choices raise a clear error.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable, Iterator, Sequence
from functools import lru_cache
from typing import Any, Literal

from jinja2 import TemplateSyntaxError, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment
from langchain_core.messages import AIMessageChunk, ToolCall
from langchain_core.messages.tool import InvalidToolCall, invalid_tool_call, tool_call, tool_call_chunk
from langchain_core.outputs import ChatGenerationChunk
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .errors import InvalidArgumentError, InvalidOptionError
from .grammar import Grammar

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"

FALLBACK_TOOLS_PROMPT = """You can call these tools:
<tools>
{tools}
</tools>
To call a tool, reply with a JSON object with its name and arguments inside <tool_call></tool_call> tags:
<tool_call>
{{"name": "<tool name>", "arguments": {{<the arguments as JSON>}}}}
</tool_call>
Tool results come back inside <tool_response></tool_response> tags. {policy}"""
"""The system prompt that shows tools to a model whose chat template has no ``tools`` support."""

_POLICY = {
    "auto": "Call a tool when it helps to answer; otherwise answer in plain text.",
    "required": "Answer by calling one of the tools.",
}

JSON_SCHEMA_PROMPT = "Reply with only a JSON object that matches this JSON schema:\n{schema}"
"""The system prompt of a ``response_format`` JSON schema (the grammar enforces it; this says what it means)."""
JSON_OBJECT_PROMPT = "Reply with only a JSON object."

ToolChoiceMode = Literal["auto", "required", "none"]


def new_tool_call_id() -> str:
    """A fresh tool call id, ``call_<uuid>``."""
    return f"call_{uuid.uuid4().hex}"


# -- tools and tool_choice --------------------------------------------------------------------------------


def convert_tool(tool: Any) -> dict[str, Any]:
    """A LangChain tool, function, pydantic class, TypedDict or JSON schema -> an OpenAI-format tool dict."""
    if isinstance(tool, dict) and tool.get("type") == "function" and "function" in tool:
        formatted = tool
    else:
        try:
            formatted = convert_to_openai_tool(tool)
        except (ValueError, TypeError) as exc:
            raise InvalidOptionError(
                f"Cannot use {tool!r} as a tool ({exc}); pass a LangChain tool, a function with a docstring, "
                "a pydantic class, a TypedDict or a JSON schema with a title."
            ) from exc
    function = formatted["function"]
    if not function.get("name"):
        raise InvalidOptionError(f"The tool {tool!r} has no name; give it one (a JSON schema needs a 'title').")
    function.setdefault("parameters", {"type": "object", "properties": {}})
    return formatted


def tool_names(tools: Sequence[dict[str, Any]]) -> list[str]:
    return [t["function"]["name"] for t in tools]


def normalize_tool_choice(tool_choice: Any, names: Sequence[str]) -> str | None:
    """``tool_choice`` as ``"auto"``, ``"required"``, ``"none"`` or a bound tool's name (None: auto).

    Accepts ``"any"`` (= ``"required"``), ``True`` (= ``"required"``), ``False`` (= ``"none"``), a tool name,
    and OpenAI's ``{"type": "function", "function": {"name": ...}}``.
    """
    if tool_choice is None:
        return None
    if tool_choice is True:
        return "required"
    if tool_choice is False:
        return "none"
    if isinstance(tool_choice, dict):
        name = (tool_choice.get("function") or {}).get("name") or tool_choice.get("name")
        if not isinstance(name, str):
            raise InvalidArgumentError(f"tool_choice={tool_choice!r} names no tool; use {{'function': {{'name': ...}}}}.")
        tool_choice = name
    if not isinstance(tool_choice, str):
        raise InvalidArgumentError(f"tool_choice={tool_choice!r} is not valid; use 'auto', 'any', 'required', 'none' or a name.")
    if tool_choice == "any":
        return "required"
    if tool_choice in ("auto", "required", "none"):
        return tool_choice
    if tool_choice not in names:
        bound = ", ".join(repr(n) for n in names) or "none"
        raise InvalidOptionError(
            f"tool_choice={tool_choice!r} is not a bound tool; the bound tools are {bound} "
            "(or use 'auto', 'any', 'required' or 'none')."
        )
    return tool_choice


class OutputSpec(BaseModel):
    """What a call's answer must look like: the bound tools and tool choice, and/or a response format.

    Built from the per-call keyword arguments that ``bind_tools`` and ``with_structured_output`` bind.
    """

    model_config = ConfigDict(frozen=True)

    tools: list[dict[str, Any]] = Field(default_factory=list)
    tool_choice: str | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _check(self) -> OutputSpec:
        names = tool_names(self.tools)
        if self.tool_choice not in (None, "auto", "none") and not self.tools:
            raise InvalidOptionError(f"tool_choice={self.tool_choice!r} was given without tools; bind tools with bind_tools.")
        normalize_tool_choice(self.tool_choice, names)
        if self.response_format is not None:
            kind = self.response_format.get("type")
            if kind == "json_schema":
                if not isinstance(self.response_format.get("json_schema", {}).get("schema"), dict):
                    raise InvalidOptionError("response_format of type 'json_schema' needs json_schema={'schema': {...}}.")
            elif kind == "json_object":
                if not isinstance(self.response_format.get("schema") or {}, dict):
                    raise InvalidOptionError("response_format of type 'json_object' takes an optional schema={...} dict.")
            elif kind != "text":
                raise InvalidOptionError(
                    f"response_format type {kind!r} is not supported; use 'json_schema', 'json_object' or 'text'."
                )
        return self

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any]) -> OutputSpec | None:
        """The spec in a call's keyword arguments (None when it asks for nothing special)."""
        if not any(kwargs.get(k) is not None for k in ("tools", "tool_choice", "response_format")):
            return None
        tools = [convert_tool(t) for t in kwargs.get("tools") or []]
        choice = normalize_tool_choice(kwargs.get("tool_choice"), tool_names(tools))
        return cls(
            tools=tools,
            tool_choice=choice,
            parallel_tool_calls=kwargs.get("parallel_tool_calls"),
            response_format=kwargs.get("response_format"),
        )

    @property
    def mode(self) -> ToolChoiceMode:
        """How tools are used: ``auto``, ``required`` (any tool, or the named one) or ``none``."""
        if not self.tools or self.tool_choice == "none":
            return "none"
        return "auto" if self.tool_choice in (None, "auto") else "required"

    @property
    def offered_tools(self) -> list[dict[str, Any]]:
        """The tools the model may call (all of them, or the named one)."""
        if self.mode == "none":
            return []
        if self.tool_choice in (None, "auto", "required"):
            return list(self.tools)
        return [t for t in self.tools if t["function"]["name"] == self.tool_choice]

    @property
    def parses_tool_calls(self) -> bool:
        return self.mode != "none"

    @property
    def response_schema(self) -> dict[str, Any] | None:
        """The JSON schema the answer must follow, if any. In JSON mode (``json_object``) that is the
        optional ``schema`` it carries (our extension of OpenAI's form), or else ``{"type": "object"}``."""
        if self.response_format is None:
            return None
        kind = self.response_format.get("type")
        if kind == "json_schema":
            return self.response_format["json_schema"]["schema"]
        if kind == "json_object":
            return self.response_format.get("schema") or {"type": "object"}
        return None

    @property
    def needs_grammar(self) -> bool:
        """Whether the answer cannot be honoured without a grammar (forced calls, JSON)."""
        return self.mode == "required" or self.response_schema is not None

    def grammar(self) -> Grammar | None:
        """The grammar of the answer, or None when it is free text."""
        schema = self.response_schema
        if self.mode == "none":
            if schema is None:
                return None
            return Grammar.json_object() if schema == {"type": "object"} else Grammar.json_schema(schema)
        tags = [_call_tag(t) for t in self.offered_tools]
        one = not self.parallel_tool_calls
        calls = {"type": "tags_with_separator", "tags": tags, "separator": "\n", "at_least_one": True,
                 "stop_after_first": one}
        if self.mode == "required":
            return Grammar.structural_tag(calls)
        if schema is not None:  # auto with a response format: tool calls, or the final answer as that JSON
            return Grammar.structural_tag({"type": "or", "elements": [calls, _json_format(schema)]})
        return Grammar.structural_tag(
            {"type": "triggered_tags", "triggers": [TOOL_CALL_OPEN], "tags": tags, "at_least_one": False,
             "stop_after_first": one}
        )

    def instructions(self, template_has_tools: bool) -> str | None:
        """The system text this spec adds to the conversation (None: nothing)."""
        parts: list[str] = []
        if self.mode != "none" and not template_has_tools:
            listed = "\n".join(json.dumps(t, ensure_ascii=False) for t in self.offered_tools)
            policy = _POLICY[self.mode]
            if self.mode == "required" and self.tool_choice not in (None, "auto", "required"):
                policy = f"Answer by calling the tool {self.tool_choice}."
            parts.append(FALLBACK_TOOLS_PROMPT.format(tools=listed, policy=policy))
        schema = self.response_schema
        if schema == {"type": "object"}:
            parts.append(JSON_OBJECT_PROMPT)
        elif schema is not None:
            parts.append(JSON_SCHEMA_PROMPT.format(schema=json.dumps(schema, ensure_ascii=False)))
        return "\n\n".join(parts) or None


def _json_format(schema: dict[str, Any]) -> dict[str, Any]:
    # The grammar module writes it with fixed separators, as json.dumps does.
    return {"type": "json_schema", "json_schema": schema}


def _call_tag(tool: dict[str, Any]) -> dict[str, Any]:
    function = tool["function"]
    head = json.dumps(function["name"], ensure_ascii=False)
    return {
        "type": "tag",
        "begin": f'{TOOL_CALL_OPEN}\n{{"name": {head}, "arguments": ',
        "content": _json_format(function["parameters"]),
        "end": f"}}\n{TOOL_CALL_CLOSE}",
    }


# -- rendering conversations --------------------------------------------------------------------------------

_ENV = ImmutableSandboxedEnvironment()


@lru_cache(maxsize=16)
def _template_reads_tools(template: str) -> bool:
    """Whether the template reads a ``tools`` variable: a walk of its parse tree, never a compile (which would
    fold constant expressions: ``{{ 10**(10**8) }}`` in a model's chat template would hang the check)."""
    try:
        tree = _ENV.parse(template)
    except TemplateSyntaxError:
        return False
    return any(node.name == "tools" and node.ctx == "load" for node in tree.find_all(nodes.Name))


def template_supports_tools(tokenizer: Any) -> bool:
    """Whether the tokenizer's chat template renders a ``tools`` variable."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # named templates: transformers picks "tool_use" when tools are passed
        template = template.get("tool_use") or template.get("default")
    return isinstance(template, str) and _template_reads_tools(template)


def convert_tool_call(call: ToolCall) -> dict[str, Any]:
    """A LangChain tool call -> the OpenAI/Hugging Face dict chat templates read (arguments as a dict)."""
    return {
        "id": call.get("id"),
        "type": "function",
        "function": {"name": call["name"], "arguments": call.get("args") or {}},
    }


def format_tool_call(name: str, arguments: Any) -> str:
    """A call written as the model writes it."""
    body = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
    return f"{TOOL_CALL_OPEN}\n{body}\n{TOOL_CALL_CLOSE}"


def _tool_result_text(message: dict[str, Any]) -> str:
    content = str(message.get("content", ""))
    if message.get("status") == "error" and not content.lower().startswith("error"):
        content = f"Error: {content}"
    return content


def render_conversation(
    tokenizer: Any, conversation: list[dict[str, Any]], spec: OutputSpec | None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The conversation as this tokenizer's chat template should see it, and the template's extra kwargs.

    Messages are the dicts of ``chat_models._convert_message_to_dict``: assistant turns may carry
    ``tool_calls`` (OpenAI format), tool turns ``tool_call_id``, ``name`` and ``status``.
    """
    native = template_supports_tools(tokenizer)
    has_tool_turns = any(m.get("tool_calls") or m["role"] == "tool" for m in conversation)
    if native:
        messages = [
            {**m, "content": _tool_result_text(m)} if m["role"] == "tool" else m for m in conversation
        ]
    elif has_tool_turns:
        messages = _fallback_history(conversation)
    else:
        messages = conversation
    template_kwargs: dict[str, Any] = {}
    if spec is not None:
        if native and spec.offered_tools:
            template_kwargs["tools"] = spec.offered_tools
        text = spec.instructions(template_has_tools=native)
        if text:
            # After the user's own system turns: persona rendering joins every system turn into one, in order.
            at = next((i for i, m in enumerate(messages) if m["role"] != "system"), len(messages))
            messages = [*messages[:at], {"role": "system", "content": text}, *messages[at:]]
    return messages, template_kwargs


def _fallback_history(conversation: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tool turns as plain text, for a template that knows nothing of tools.

    Calls join the assistant's text in the call format; results become user turns (consecutive results one
    turn) in ``<tool_response>`` tags, as Qwen's template writes them; every template knows user turns.
    """
    out: list[dict[str, Any]] = []
    for message in conversation:
        if message["role"] == "assistant" and message.get("tool_calls"):
            calls = [format_tool_call(c["function"]["name"], c["function"]["arguments"]) for c in message["tool_calls"]]
            text = "\n".join(p for p in [str(message.get("content") or "").strip(), *calls] if p)
            out.append({"role": "assistant", "content": text})
        elif message["role"] == "tool":
            attrs = "".join(
                f' {key}="{message[field]}"'
                for key, field in (("name", "name"), ("id", "tool_call_id"), ("status", "status"))
                if message.get(field)
            )
            block = f"<tool_response{attrs}>\n{_tool_result_text(message)}\n</tool_response>"
            if out and out[-1].get("_tool_results"):
                out[-1]["content"] += "\n" + block
            else:
                out.append({"role": "user", "content": block, "_tool_results": True})
        else:
            out.append({k: v for k, v in message.items() if k != "tool_calls"})
    return [{k: v for k, v in m.items() if k != "_tool_results"} for m in out]


# -- parsing calls out of the answer --------------------------------------------------------------------------

_NAME = re.compile(r'"name"\s*:\s*"((?:[^"\\]|\\.)*)"')


class ToolCallParser:
    """Splits decoded text, fed piece by piece, into free text and parsed tool calls.

    ``feed`` returns what is decided so far: text outside ``<tool_call>`` blocks (whitespace around a block
    dropped, save one run between two texts; anything that may still be the start of a block held back), and
    each block once it closes, as a
    ``ToolCall`` or an ``InvalidToolCall`` (never dropped). ``finish`` flushes the rest; a block still open
    there was cut short (``max_tokens`` or a stop string) and is an invalid call.
    """

    def __init__(self, names: Iterable[str] | None = None) -> None:
        self.names = list(names) if names is not None else None
        self._buffer = ""
        self._in_call = False
        self._space = ""  # trailing whitespace held back: kept only if more text follows
        self._after_call = False
        self.calls = 0
        """Blocks parsed so far, valid or not."""

    def feed(self, text: str) -> list[str | ToolCall | InvalidToolCall]:
        self._buffer += text
        out: list[str | ToolCall | InvalidToolCall] = []
        while True:
            if self._in_call:
                end = self._buffer.find(TOOL_CALL_CLOSE)
                if end < 0:
                    return out
                out.append(self._parse(self._buffer[:end]))
                self._buffer = self._buffer[end + len(TOOL_CALL_CLOSE) :]
                self._in_call = False
                self._after_call = True
                continue
            start = self._buffer.find(TOOL_CALL_OPEN)
            if start >= 0:
                self._text(self._buffer[:start], out)  # its trailing whitespace waits: text may follow the call
                self._buffer = self._buffer[start + len(TOOL_CALL_OPEN) :]
                self._in_call = True
                continue
            keep = _partial_suffix(self._buffer, TOOL_CALL_OPEN)
            ready, self._buffer = self._buffer[: len(self._buffer) - keep], self._buffer[len(self._buffer) - keep :]
            self._text(ready, out)
            return out

    def finish(self, reason: str | None = None) -> list[str | ToolCall | InvalidToolCall]:
        out: list[str | ToolCall | InvalidToolCall] = []
        if self._in_call:
            self.calls += 1
            why = f" (finish_reason={reason!r})" if reason else ""
            out.append(
                invalid_tool_call(
                    name=_name_of(self._buffer), args=TOOL_CALL_OPEN + self._buffer, id=new_tool_call_id(),
                    error=f"The answer ended before this tool call was complete{why}; raise max_tokens.",
                )
            )
        else:
            self._text(self._buffer, out)
            if self._space and not self.calls:
                out.append(self._space)
        self._buffer, self._in_call, self._space, self._after_call = "", False, "", False
        return out

    def _text(self, text: str, out: list[Any]) -> None:
        if self._after_call:  # whitespace right after a block belongs to the call format, not the answer
            text = text.lstrip()
            self._after_call = not text
        body = text.rstrip()
        if body:
            out.append(self._space + body)
            self._space = ""
        self._space += text[len(body) :]

    def _parse(self, body: str) -> ToolCall | InvalidToolCall:
        self.calls += 1
        raw = f"{TOOL_CALL_OPEN}{body}{TOOL_CALL_CLOSE}"
        call_id = new_tool_call_id()

        def invalid(error: str, name: str | None = None) -> InvalidToolCall:
            return invalid_tool_call(name=name or _name_of(body), args=raw, id=call_id, error=error)

        try:
            data = json.loads(body)
        except json.JSONDecodeError as exc:
            return invalid(f"The tool call is not valid JSON: {exc}.")
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            return invalid('The tool call must be a JSON object with a "name" and "arguments".')
        name = data["name"]
        args = data.get("arguments", data.get("parameters", {}))
        if isinstance(args, str):  # some models write the arguments as a JSON string
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                pass
        if not isinstance(args, dict):
            return invalid(f"The arguments of {name!r} must be a JSON object.", name)
        if self.names is not None and name not in self.names:
            bound = ", ".join(repr(n) for n in self.names)
            return invalid(f"{name!r} is not a bound tool; the bound tools are {bound}.", name)
        return tool_call(name=name, args=args, id=call_id)


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag``."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:size]):
            return size
    return 0


def _name_of(body: str) -> str | None:
    match = _NAME.search(body)
    return match.group(1) if match else None


def parse_tool_calls(
    text: str, names: Iterable[str] | None = None
) -> tuple[str, list[ToolCall], list[InvalidToolCall]]:
    """(free text, tool calls, invalid tool calls) of a whole answer."""
    parser = ToolCallParser(names)
    pieces = parser.feed(text) + parser.finish()
    content = "".join(p for p in pieces if isinstance(p, str))
    calls = [p for p in pieces if isinstance(p, dict) and p.get("type") == "tool_call"]
    invalid = [p for p in pieces if isinstance(p, dict) and p.get("type") == "invalid_tool_call"]
    return content, calls, invalid  # type: ignore[return-value]


def tool_call_chunks(
    chunks: Iterator[ChatGenerationChunk], spec: OutputSpec | None, finish_reason: Any = None
) -> Iterator[ChatGenerationChunk]:
    """Text chunks -> chunks of free text and of whole tool calls (``tool_call_chunks``, one per call).

    Invalid calls come as chunks with ``invalid_tool_calls`` and the raw text of the call as their ``args``.
    ``finish_reason`` (a callable) says why decoding ended, for the message of a call cut short.
    """
    if spec is None or not spec.parses_tool_calls:
        yield from chunks
        return
    parser = ToolCallParser(tool_names(spec.tools))
    index = 0

    def emit(pieces: list[str | ToolCall | InvalidToolCall]) -> Iterator[ChatGenerationChunk]:
        nonlocal index
        for piece in pieces:
            if isinstance(piece, str):
                yield ChatGenerationChunk(message=AIMessageChunk(content=piece))
            elif piece.get("type") == "tool_call":
                args = json.dumps(piece["args"], ensure_ascii=False)
                chunk = tool_call_chunk(name=piece["name"], args=args, id=piece["id"], index=index)
                index += 1
                yield ChatGenerationChunk(message=AIMessageChunk(content="", tool_call_chunks=[chunk]))
            else:
                yield ChatGenerationChunk(message=AIMessageChunk(content="", invalid_tool_calls=[piece]))

    for chunk in chunks:
        yield from emit(parser.feed(chunk.text))
    yield from emit(parser.finish(finish_reason() if callable(finish_reason) else finish_reason))


__all__ = [
    "FALLBACK_TOOLS_PROMPT",
    "OutputSpec",
    "ToolCallParser",
    "convert_tool",
    "format_tool_call",
    "new_tool_call_id",
    "normalize_tool_choice",
    "parse_tool_calls",
    "render_conversation",
    "template_supports_tools",
    "tool_call_chunks",
]
