"""A conversation with tools as the tokenizer's chat template should see it.

A template with ``tools`` support gets the offered tools as ``tools=`` and the tool turns as they are; for one
without, tool calls are written into the assistant turns in the call format of :mod:`.tools` and tool results
become user turns in ``<tool_response>`` tags. Either way the :class:`~.output_spec.OutputSpec`'s system text
(the fallback tools prompt, a JSON schema) joins the conversation after the user's own system turns.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from jinja2 import TemplateSyntaxError, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .output_spec import OutputSpec
from .tools import format_tool_call

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


__all__ = ["render_conversation", "template_supports_tools"]
