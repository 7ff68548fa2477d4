"""What a call's answer must look like (:class:`OutputSpec`): the bound tools and tool choice, and/or a
response format; the grammar that holds the answer to it, and the system text that tells the model.

Tools reach the model through the chat template's ``tools=`` support when the template has it; otherwise
through the fallback system prompt :data:`FALLBACK_TOOLS_PROMPT` (the tools as JSON and the call format of
:mod:`.tools`), with earlier calls written into the assistant turns in the same format and tool results as user
turns in ``<tool_response>`` tags (:mod:`.tool_rendering`).

With a grammar engine installed (``langchain-persona-judge[grammar]``) the answer is constrained:

* ``tool_choice="any"``/``"required"`` or a tool name: the answer is only ``<tool_call>`` blocks (one unless
  ``parallel_tool_calls=True``), each one's arguments valid against that tool's JSON schema;
* ``"auto"``: free text, and once the model writes ``<tool_call>`` the block is constrained the same way;
* ``"none"``: the tools are not shown and the answer is plain text.

Without it, ``"auto"`` still works (calls are parsed leniently, :mod:`.tool_calls`) and the forcing choices
raise a clear error.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .errors import InvalidOptionError
from .grammar import Grammar
from .runtime import OutputGrammar
from .tools import TOOL_CALL_CLOSE, TOOL_CALL_OPEN, convert_tool, normalize_tool_choice, tool_names

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

    def output_grammar(self) -> OutputGrammar | None:
        """The grammar as the runtime takes it (with whether the call needs it), or None for free text."""
        grammar = self.grammar()
        if grammar is None:
            return None
        shape = "tool call" if self.mode == "required" else "schema" if self.response_schema else "answer"
        return OutputGrammar(grammar, required=self.needs_grammar, shape=shape)

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


__all__ = ["FALLBACK_TOOLS_PROMPT", "JSON_OBJECT_PROMPT", "JSON_SCHEMA_PROMPT", "OutputSpec", "ToolChoiceMode"]
