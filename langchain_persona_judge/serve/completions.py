"""One chat completion: a request body → a runtime run, and the run's text → OpenAI's objects.

:func:`start_run` does what ``ChatPersonaJudge._start`` does for LangChain, from the body's fields: the
conversation (tools rendered into it), the decoding options (the option table's defaults for what the body
leaves out), a profile's weighted personas, the grammar of forced tool calls or a JSON response format. Every
check that can fail does so here, before a slot in the admission queue is taken.
"""

from __future__ import annotations

import functools
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from ..decoding import DecodingOptions, ModelBackend
from ..errors import GrammarError
from ..option_specs import BY_NAME
from ..output_spec import OutputSpec
from ..personas import PersonaRegistry
from ..profiles import PreferenceProfile
from ..runtime import PersonaSettings, RequestRun
from ..runtime import start_run as start_runtime_run
from ..tool_calls import ToolCallParser
from ..tool_rendering import render_conversation
from ..tools import tool_names
from .errors import ApiError
from .schema import ENGINE_OPTIONS
from .settings import ServeSettings

_ROLES = {"developer": "system"}


def conversation_of(messages: list[Any]) -> list[dict[str, Any]]:
    """The body's messages as the role/content dicts chat templates read (``developer`` is a system turn)."""
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        turn: dict[str, Any] = {"role": _ROLES.get(message.role, message.role), "content": message.text()}
        if message.name:
            turn["name"] = message.name
        if message.role == "assistant" and message.tool_calls:
            turn["tool_calls"] = [_call_of(call, f"messages[{i}].tool_calls[{j}]")
                                  for j, call in enumerate(message.tool_calls)]
        if message.role == "tool":
            if not message.tool_call_id:
                raise ApiError(400, f"messages[{i}].tool_call_id: a tool message needs the id of the call it answers.",
                               param=f"messages[{i}].tool_call_id", code="invalid_value")
            turn["tool_call_id"] = message.tool_call_id
        out.append(turn)
    if not any(m["content"].strip() or m["role"] == "tool" or m.get("tool_calls") for m in out):
        raise ApiError(400, "messages: every message is empty; send a question or other text to answer.",
                       param="messages", code="invalid_value")
    return out


def _call_of(call: Any, where: str) -> dict[str, Any]:
    try:
        arguments = json.loads(call.function.arguments or "{}")
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"{where}.function.arguments is not valid JSON ({exc}).",
                       param=f"{where}.function.arguments", code="invalid_value") from exc
    return {"id": call.id, "type": "function", "function": {"name": call.function.name, "arguments": arguments}}


def output_spec(body: Any) -> OutputSpec | None:
    """The tools, tool choice and response format of the body, as the LangChain adapter binds them."""
    response_format = None
    if body.response_format is not None and body.response_format.type != "text":
        if body.response_format.type == "json_schema":
            if body.response_format.json_schema is None:
                raise ApiError(400, "response_format.json_schema: required when type is 'json_schema'.",
                               param="response_format.json_schema", code="invalid_value")
            response_format = {"type": "json_schema",
                               "json_schema": {"schema": body.response_format.json_schema.schema_}}
        else:
            response_format = {"type": "json_object"}
    choice = body.tool_choice
    if choice is not None and not isinstance(choice, str):
        choice = choice.model_dump()
    tools = [t.model_dump(exclude_none=True) for t in body.tools or []]
    try:
        return OutputSpec.from_kwargs({"tools": tools or None, "tool_choice": choice,
                                       "parallel_tool_calls": body.parallel_tool_calls,
                                       "response_format": response_format})
    except (ValueError, TypeError) as exc:
        # OutputSpec's own check arrives wrapped in pydantic's ValidationError: keep its message only.
        errors = exc.errors() if isinstance(exc, ValidationError) else []
        message = str(errors[0]["msg"]).removeprefix("Value error, ") if errors else str(exc)
        param = "tool_choice" if "tool_choice" in message else "tools"
        raise ApiError(400, f"{param}: {message}", param=param, code="invalid_value") from exc



def decoding_options(body: Any) -> DecodingOptions:
    """The body's decoding options; what it leaves out takes the option table's default (as the chat model)."""
    values = {}
    for name, engine_name, default in ENGINE_OPTIONS:
        value = getattr(body, name)
        values[engine_name] = default if value is None else value
    if body.max_completion_tokens is not None:
        values["max_new_tokens"] = body.max_completion_tokens
    temperature = values["temperature"]
    values.update(do_sample=temperature > 0, temperature=temperature or 1.0)
    return DecodingOptions(**values)


def _option(body: Any, name: str) -> Any:
    value = getattr(body, name)
    return BY_NAME[name].default if value is None else value


def _check_budget(body: Any, model: ModelBackend, longest_prompt: int) -> None:
    """``max_tokens`` asked for explicitly must fit in the context after the longest persona's prompt."""
    asked = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    limit = model.context_length
    if asked is None or limit is None or longest_prompt + asked <= limit:
        return
    param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    raise ApiError(
        400,
        f"{param}={asked} does not fit: the model's context is {limit} tokens and the prompt takes {longest_prompt} "
        f"of them; lower {param} to at most {max(limit - longest_prompt, 0)} or shorten the messages.",
        param=param, code="context_length_exceeded",
    )


def preference_specs(preferences: list[Any] | None, registry: PersonaRegistry | None = None) -> list[Any]:
    """The body's ``preferences`` as the runtime takes them: free texts and persona names as they are, and each
    ``[name, {variables}]`` as a ``(name, variables)`` pair, checked against the registry (the persona exists, it
    has every variable given, each value is a string or a number): a 400 naming ``preferences[i]`` otherwise."""
    registry = registry or _builtin_registry()
    out: list[Any] = []
    for i, spec in enumerate(preferences or []):
        where = f"preferences[{i}]"
        if isinstance(spec, str):
            out.append(spec)
            continue
        if not (isinstance(spec, list) and len(spec) == 2 and isinstance(spec[0], str) and isinstance(spec[1], dict)):
            raise ApiError(400, f"{where}: a preference is a string (free text or a persona name) or a [name, "
                                f"{{variables}}] pair, e.g. [\"expert\", {{\"field\": \"biology\"}}]; got {spec!r:.80}.",
                           param=where, code="invalid_value")
        name, variables = spec
        if name not in registry:
            raise ApiError(400, f"{where}: {name!r} is no persona of the registry; name a registry persona with "
                                "template variables (persona-judge personas lists them).", param=where,
                           code="invalid_value")
        known = registry.variables_used(name)
        unknown = sorted(set(variables) - known)
        if unknown:
            raise ApiError(400, f"{where}: the persona {name!r} has no variable {unknown[0]!r}; its variables are "
                                f"{sorted(known)}.", param=where, code="invalid_value")
        for key, value in variables.items():
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                raise ApiError(400, f"{where}: the variable {key!r} is a {type(value).__name__}; give a string or "
                                    "a number.", param=where, code="invalid_value")
        out.append((name, dict(variables)))
    return out


@functools.lru_cache(maxsize=1)
def _builtin_registry() -> PersonaRegistry:
    return PersonaRegistry.default()


def start_run(
    body: Any, model: ModelBackend, model_name: str, settings: ServeSettings, cancelled: threading.Event,
    user: str | None = None,
) -> tuple[RequestRun, OutputSpec | None]:
    """Build the request of ``body`` and the run that decodes it (nothing decoded yet); ``user`` is the key the
    model's admission queue serves round-robin (the API key's, or the body's ``user``; None: anonymous)."""
    preferences = preference_specs(body.preferences)
    output = output_spec(body)
    conversation, template_kwargs = render_conversation(model.tokenizer, conversation_of(body.messages), output)
    profile = None
    if body.profile is not None:
        if body.weights is not None:
            raise ApiError(400, "weights: pass weights or a profile, not both (a profile sets the personas' weights).",
                           param="weights", code="invalid_value")
        profile = PreferenceProfile.from_dict(body.profile, source="profile")
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    try:
        run = start_runtime_run(
            model, conversation, options=decoding_options(body),
            personas=PersonaSettings(
                preferences=preferences, composition=_option(body, "composition"),
                layout=_option(body, "preference_layout"), negative_preference=body.negative_preference,
            ),
            model_name=model_name, profile=profile, profile_decoding=_option(body, "profile_decoding"),
            best_of=_option(body, "best_of"), stop=stop, truncation=_option(body, "truncation"),
            template_kwargs=template_kwargs, output=None if output is None else output.output_grammar(), timeout=settings.timeout,
            cancelled=cancelled, max_concurrency=settings.max_concurrency, max_queue=settings.max_queue, user=user,
        )
    except GrammarError as exc:  # a schema the grammar engine cannot compile: the tools' or the response format's
        param = "tools" if output is not None and output.mode != "none" else "response_format"
        raise ApiError(400, f"{param}: {exc}".strip(), param=param, code="invalid_value") from exc
    _check_budget(body, model, max(len(p) for p in run.request.prompts))
    return run, output


# -- the run's text -> OpenAI deltas ------------------------------------------------------------------------------


class Deltas:
    """Pieces of decoded text → OpenAI deltas: ``{"content": ...}`` and, with tools, one ``{"tool_calls": [...]}``
    per whole call (parsed as the LangChain adapter parses them; a call that does not parse stays text)."""

    def __init__(self, output: OutputSpec | None) -> None:
        parses = output is not None and output.parses_tool_calls
        self._parser = ToolCallParser(tool_names(output.tools)) if parses and output is not None else None
        self.calls = 0

    def feed(self, text: str) -> list[dict[str, Any]]:
        if self._parser is None:
            return [{"content": text}] if text else []
        return self._convert(self._parser.feed(text))

    def finish(self, reason: str | None) -> list[dict[str, Any]]:
        return [] if self._parser is None else self._convert(self._parser.finish(reason))

    def _convert(self, pieces: list[Any]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for piece in pieces:
            if isinstance(piece, str):
                out.append({"content": piece})
            elif piece.get("type") == "tool_call":
                call = {"index": self.calls, "id": piece["id"], "type": "function",
                        "function": {"name": piece["name"], "arguments": json.dumps(piece["args"], ensure_ascii=False)}}
                self.calls += 1
                out.append({"tool_calls": [call]})
            else:  # an invalid call: its raw text, so nothing the model wrote is lost
                out.append({"content": str(piece.get("args") or "")})
        return out


@dataclass
class Finished:
    """The last event of a run: the run (its usage and statistics) and how many tool calls it made."""

    run: RequestRun
    tool_calls: int

    @property
    def finish_reason(self) -> str:
        return "tool_calls" if self.tool_calls else self.run.finish_reason


def events(run: RequestRun, output: OutputSpec | None) -> Iterator[dict[str, Any] | Finished]:
    """The run's deltas as they are decided, then :class:`Finished`."""
    deltas = Deltas(output)
    pieces = run.text()
    try:
        for piece in pieces:
            yield from deltas.feed(piece)
    finally:
        pieces.close()
    yield from deltas.finish(run.finish_reason)
    yield Finished(run, deltas.calls)


def usage(run: RequestRun) -> dict[str, int]:
    prompt = run.request.input_tokens
    return {"prompt_tokens": prompt, "completion_tokens": run.used, "total_tokens": prompt + run.used}


def persona_judge(run: RequestRun, settings: ServeSettings) -> dict[str, Any]:
    """What decided the answer: the rule, the personas, the backend, the decode's statistics, the replica."""
    meta = run.metadata()
    stats = meta["persona_judge"]
    plain = stats["personas"] == 1 and run.request.reference is None
    out = {
        "rule": "plain" if plain else stats["combine"],
        "personas": meta["persona_prompts"],
        "preferences": meta["preferences"],
        "composition": meta["composition"],
        "backend": meta["backend"],
        "statistics": stats,
        "replica": settings.replica,
    }
    if run.request.profile is not None:
        out["profile"] = run.request.profile
    return out


def new_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def completion(cid: str, created: int, model: str, items: list[Any], settings: ServeSettings) -> dict[str, Any]:
    """The ``chat.completion`` object of a finished run (``items``: every delta, then :class:`Finished`)."""
    done: Finished = items[-1]
    run = done.run
    content = "".join(d.get("content", "") for d in items[:-1])
    calls = [c for d in items[:-1] for c in d.get("tool_calls", [])]
    message: dict[str, Any] = {"role": "assistant", "content": content if content or not calls else None,
                               "refusal": None}
    if calls:
        message["tool_calls"] = calls
    return {
        "id": cid, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": done.finish_reason}],
        "usage": usage(run), "system_fingerprint": None, "persona_judge": persona_judge(run, settings),
    }


def chunk(cid: str, created: int, model: str, delta: dict[str, Any] | None, reason: str | None = None,
          **extra: Any) -> dict[str, Any]:
    """One ``chat.completion.chunk`` (``delta`` None: the usage chunk, with empty ``choices``)."""
    choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}]
    return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": None, "choices": choices, **extra}


def now() -> int:
    return int(time.time())


__all__ = [
    "Deltas",
    "Finished",
    "chunk",
    "completion",
    "conversation_of",
    "decoding_options",
    "events",
    "new_id",
    "now",
    "output_spec",
    "persona_judge",
    "preference_specs",
    "start_run",
    "usage",
]
