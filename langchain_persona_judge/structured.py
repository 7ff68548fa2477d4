"""``with_structured_output`` for ChatPersonaJudge: the binding, the output parser, and ``include_raw``.

Methods (all grammar-constrained, so the JSON always parses and, for a schema, validates):

* ``json_schema`` (default): the answer is one JSON value constrained to the schema; the schema is also shown
  to the model in a system turn, so that it knows what the fields mean;
* ``function_calling``: the schema becomes a tool that the model is forced to call;
* ``json_mode``: binds ``response_format={"type": "json_object", "schema": ...}`` (OpenAI's JSON mode plus
  the schema), so the answer is a JSON object constrained to the schema, which the prompt shows as in
  ``json_schema``. ``response_format={"type": "json_object"}`` bound directly, with no schema, still allows
  any JSON object.

``strict`` is accepted for API compatibility: the grammar always enforces the schema, with no properties
beyond those it declares.
"""

from __future__ import annotations

from operator import itemgetter
from typing import Any, Literal

from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
from langchain_core.output_parsers.base import OutputParserLike
from langchain_core.output_parsers.openai_tools import JsonOutputKeyToolsParser, PydanticToolsParser
from langchain_core.runnables import Runnable, RunnableMap, RunnablePassthrough
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass

from .errors import InvalidArgumentError, InvalidOptionError

StructuredMethod = Literal["json_schema", "function_calling", "json_mode"]
METHODS: tuple[str, ...] = ("json_schema", "function_calling", "json_mode")


def structured_output(
    llm: BaseChatModel,
    schema: dict[str, Any] | type,
    *,
    method: str = "json_schema",
    include_raw: bool = False,
    strict: bool | None = None,
    **kwargs: Any,
) -> Runnable[LanguageModelInput, Any]:
    """The runnable behind ``ChatPersonaJudge.with_structured_output``."""
    if kwargs:
        raise InvalidArgumentError(f"Unknown argument(s) {sorted(kwargs)} for with_structured_output.")
    if method not in METHODS:
        raise InvalidOptionError(f"method={method!r} is not supported; use one of {list(METHODS)}.")
    if schema is None:
        raise InvalidOptionError("with_structured_output needs a schema: a pydantic class, a TypedDict or a JSON schema.")
    is_pydantic = isinstance(schema, type) and is_basemodel_subclass(schema)
    trace = {"ls_structured_output_format": {"kwargs": {"method": method, "strict": strict}, "schema": schema}}
    parser: OutputParserLike
    if method == "function_calling":
        name = convert_to_openai_tool(schema)["function"]["name"]
        bound = llm.bind_tools([schema], tool_choice=name, parallel_tool_calls=False, **trace)
        parser = (
            PydanticToolsParser(tools=[schema], first_tool_only=True)  # type: ignore[list-item]
            if is_pydantic
            else JsonOutputKeyToolsParser(key_name=name, first_tool_only=True)
        )
    else:
        json_schema = convert_to_json_schema(schema)
        if method == "json_schema":
            response_format: dict[str, Any] = {
                "type": "json_schema",
                "json_schema": {"name": json_schema.get("title", "output"), "schema": json_schema, "strict": strict},
            }
        else:  # json_mode: constrained to the schema too (a bare JSON object lets a small model drop keys)
            response_format = {"type": "json_object", "schema": json_schema}
        bound = llm.bind(response_format=response_format, **trace)
        parser = (
            PydanticOutputParser(pydantic_object=schema)  # type: ignore[arg-type]
            if is_pydantic
            else JsonOutputParser()
        )
    if not include_raw:
        return bound | parser
    # {"raw": the AIMessage, "parsed": the object or None, "parsing_error": the exception or None}
    parsed = RunnablePassthrough.assign(parsed=itemgetter("raw") | parser, parsing_error=lambda _: None)
    failed = RunnablePassthrough.assign(parsed=lambda _: None)
    return RunnableMap(raw=bound) | parsed.with_fallbacks([failed], exception_key="parsing_error")


__all__ = ["METHODS", "StructuredMethod", "structured_output"]
