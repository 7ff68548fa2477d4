"""Tools for ChatPersonaJudge: a LangChain tool, function, pydantic class, TypedDict or JSON schema as an
OpenAI-format tool dict; ``tool_choice`` normalised; and the format a call is written in.

The call format is the Hermes/Qwen one, which many chat templates with ``tools`` support already teach::

    <tool_call>
    {"name": "get_weather", "arguments": {"location": "Paris"}}
    </tool_call>

The rest of tool calling lives beside this module:

==================  =========================================================================================
``output_spec``     :class:`OutputSpec`: the bound tools, tool choice and response format of a call; the
                    grammar its answer follows and the system text that tells the model
``tool_rendering``  a conversation (tool calls and results included) as the tokenizer's chat template sees it
``tool_calls``      parsing calls out of the decoded text, whole and as a stream
==================  =========================================================================================
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

from langchain_core.messages import ToolCall
from langchain_core.utils.function_calling import convert_to_openai_tool

from .errors import InvalidArgumentError, InvalidOptionError

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"


def new_tool_call_id() -> str:
    """A fresh tool call id, ``call_<uuid>``."""
    return f"call_{uuid.uuid4().hex}"


def format_tool_call(name: str, arguments: Any) -> str:
    """A call written as the model writes it."""
    body = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
    return f"{TOOL_CALL_OPEN}\n{body}\n{TOOL_CALL_CLOSE}"


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


def convert_tool_call(call: ToolCall) -> dict[str, Any]:
    """A LangChain tool call -> the OpenAI/Hugging Face dict chat templates read (arguments as a dict)."""
    return {
        "id": call.get("id"),
        "type": "function",
        "function": {"name": call["name"], "arguments": call.get("args") or {}},
    }


__all__ = [
    "TOOL_CALL_CLOSE",
    "TOOL_CALL_OPEN",
    "convert_tool",
    "convert_tool_call",
    "format_tool_call",
    "new_tool_call_id",
    "normalize_tool_choice",
    "tool_names",
]
