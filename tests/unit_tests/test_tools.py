"""Tool calling, structured output and the styled-output tool, without the embedded weights.

Three kinds of stand-in: pure functions (tool conversion, tool_choice, the call parser, conversation
rendering); a *scripted engine* (``engine.stream`` replaced by one that emits the tokens of a given text), for
exact parsing and streaming of what a model writes; and a tiny *random* Llama with the embedded tokenizer,
whose rambling shows that the grammar alone makes forced calls and structured answers valid.
"""

from __future__ import annotations

import dataclasses

import json
import sys
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Annotated, Any

import pytest
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool
from pydantic import BaseModel, Field
from typing_extensions import TypedDict

from langchain_persona_judge import ChatPersonaJudge
from langchain_persona_judge import decoding as engine
from langchain_persona_judge.decoding import DecodingStats, Generation
from langchain_persona_judge.grammar import GRAMMAR_INSTALL, GrammarNotInstalledError
from langchain_persona_judge.styled_tool import REWRITE_INSTRUCTIONS, PersonaJudgeTool
from langchain_persona_judge.output_spec import FALLBACK_TOOLS_PROMPT, OutputSpec
from langchain_persona_judge.tool_calls import ToolCallParser, parse_tool_calls
from langchain_persona_judge.tool_rendering import render_conversation, template_supports_tools
from langchain_persona_judge.tools import convert_tool, normalize_tool_choice
from tests.helpers import tiny_llama
from tests.helpers.tokenizer import tiny_tokenizer
from tests.helpers.tools import PROMPTS as SWEEP_PROMPTS
from tests.helpers.tools import TOOLS as SWEEP_TOOLS
from tests.helpers.tools import check_forced_call

pytest.importorskip("xgrammar", reason=f"needs the grammar extra: {GRAMMAR_INSTALL}")

PREFERENCES = ["Answer in one short, formal sentence.", "Answer playfully, with a joke."]


class Calculator(BaseModel):
    """Compute a op b."""

    a: float
    b: float
    op: str = Field(json_schema_extra={"enum": ["+", "-", "*", "/"]})


class Joke(BaseModel):
    """Joke to tell user."""

    setup: str = Field(description="question to set up a joke")
    punchline: str = Field(description="answer to resolve the joke")


class JokeDict(TypedDict):
    """Joke to tell user."""

    setup: Annotated[str, ..., "question to set up a joke"]
    punchline: Annotated[str, ..., "answer to resolve the joke"]


@tool
def get_weather(location: str) -> str:
    """Get the weather at a location."""
    return "It's sunny."


@tool
def no_args() -> int:
    """Return five."""
    return 5


@pytest.fixture(scope="module")
def random_model(tokenizer: Any) -> Any:
    # 1024 positions: the tools' descriptions take about twice as many of the tiny tokenizer's tokens as SmolLM2's.
    return tiny_llama(seed=0, vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, context=1024)


def make(model: Any, tokenizer: Any, **params: Any) -> ChatPersonaJudge:
    return ChatPersonaJudge(
        hf_model=model, tokenizer=tokenizer, **{"preferences": PREFERENCES, "temperature": 0, "max_tokens": 40,
                                                **params}
    )


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch, tokenizer: Any) -> SimpleNamespace:
    """Replace the engine with one that 'writes' ``state.text`` (three tokens per iteration), whatever the
    prompts; ``state.runs`` records each run's prompts and options."""
    state = SimpleNamespace(text="", finish="stop", runs=[])

    class Scripted:
        def __init__(self, ids: list[int]) -> None:
            self.ids = ids
            self.generation = Generation([], None, DecodingStats())

        def chunks(self) -> Iterator[list[int]]:
            for start in range(0, len(self.ids), 3):
                piece = self.ids[start : start + 3]
                self.generation.token_ids.extend(piece)
                yield piece
            self.generation.finish_reason = state.finish

        def close(self) -> None:
            pass

    def fake_stream(model: Any, prompts: Any, **kwargs: Any) -> Scripted:
        options = dataclasses.asdict(kwargs["options"])
        if kwargs.get("constraint") is not None:  # what the call passed besides its options
            options["constraint"] = kwargs["constraint"]
        state.runs.append(SimpleNamespace(prompts=[tokenizer.decode(p) for p in prompts], options=options))
        return Scripted(tokenizer(state.text, add_special_tokens=False)["input_ids"])

    monkeypatch.setattr(engine, "stream", fake_stream)
    return state


# -- converting tools and tool_choice ------------------------------------------------------------------------


def test_every_kind_of_tool_converts_to_an_openai_tool() -> None:
    def lookup(city: str) -> str:
        """Look up a city."""
        return city

    schema = {"title": "Lookup", "description": "Look up.", "type": "object",
              "properties": {"q": {"type": "string"}}, "required": ["q"]}
    for item, name in [(get_weather, "get_weather"), (lookup, "lookup"), (Calculator, "Calculator"),
                       (JokeDict, "JokeDict"), (schema, "Lookup"), (no_args, "no_args")]:
        converted = convert_tool(item)
        assert converted["type"] == "function" and converted["function"]["name"] == name
        assert converted["function"]["parameters"]["type"] == "object"
    assert convert_tool(no_args)["function"]["parameters"]["properties"] == {}
    with pytest.raises(ValueError, match="Cannot use"):
        convert_tool(42)


@pytest.mark.parametrize(
    "choice, expected",
    [(None, None), ("auto", "auto"), ("any", "required"), ("required", "required"), ("none", "none"),
     (True, "required"), (False, "none"), ("get_weather", "get_weather"),
     ({"type": "function", "function": {"name": "get_weather"}}, "get_weather")],
)
def test_tool_choice_forms(choice: Any, expected: str | None) -> None:
    assert normalize_tool_choice(choice, ["get_weather", "no_args"]) == expected


def test_unknown_tool_choice_lists_the_bound_tools(random_model: Any, tokenizer: Any) -> None:
    with pytest.raises(ValueError, match=r"'magic' is not a bound tool; the bound tools are 'get_weather', 'no_args'"):
        make(random_model, tokenizer).bind_tools([get_weather, no_args], tool_choice="magic")
    with pytest.raises(ValueError, match="needs at least one tool"):
        make(random_model, tokenizer).bind_tools([], tool_choice="any")


# -- the call parser -----------------------------------------------------------------------------------------


CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"location": "Paris"}}\n</tool_call>'


@pytest.mark.parametrize(
    "text, expected",
    [(f"Let me look.\n{CALL}\nDone!", "Let me look.\nDone!"), (CALL, ""), (f"{CALL}\n{CALL}", "")],
)
def test_parser_gives_the_same_result_however_the_text_is_split(text: str, expected: str) -> None:
    whole = parse_tool_calls(text, ["get_weather"])
    for size in (1, 2, 5, 13):
        parser = ToolCallParser(["get_weather"])
        pieces = [p for i in range(0, len(text), size) for p in parser.feed(text[i : i + size])] + parser.finish()
        content = "".join(p for p in pieces if isinstance(p, str))
        calls = [p for p in pieces if isinstance(p, dict)]
        assert content == whole[0]
        assert [(c["name"], c["args"]) for c in calls] == [(c["name"], c["args"]) for c in whole[1]]
    content, calls, invalid = whole
    assert not invalid
    assert all(c["args"] == {"location": "Paris"} and c["id"].startswith("call_") for c in calls)
    assert len({c["id"] for c in calls}) == len(calls)
    assert content == expected


def test_parser_keeps_text_and_whitespace_away_from_calls() -> None:
    assert parse_tool_calls("Hello  there\n", [])[0] == "Hello  there\n"
    assert parse_tool_calls("a <tool_ca", [])[0] == "a <tool_ca"  # a partial tag at the end is just text
    content, calls, _ = parse_tool_calls(f"Sure.\n\n{CALL}\n\nAnd more.", ["get_weather"])
    assert content == "Sure.\n\nAnd more." and len(calls) == 1


@pytest.mark.parametrize(
    "body, error",
    [('{"name": "get_weather", "arguments": {"location": ', "not valid JSON"),
     ('["get_weather"]', 'a "name" and "arguments"'),
     ('{"name": "get_weather", "arguments": [1]}', "must be a JSON object"),
     ('{"name": "teleport", "arguments": {}}', "'teleport' is not a bound tool; the bound tools are 'get_weather'")],
)
def test_invalid_calls_are_reported_never_dropped(body: str, error: str) -> None:
    text = f"<tool_call>{body}</tool_call>"
    content, calls, invalid = parse_tool_calls(text, ["get_weather"])
    assert content == "" and calls == []
    assert len(invalid) == 1 and error in invalid[0]["error"]
    assert invalid[0]["args"] == text and invalid[0]["id"].startswith("call_")


def test_a_call_cut_short_is_invalid_with_the_reason() -> None:
    parser = ToolCallParser(["get_weather"])
    assert parser.feed('<tool_call>\n{"name": "get_weather", "arg') == []
    (cut,) = parser.finish("length")
    assert cut["type"] == "invalid_tool_call" and cut["name"] == "get_weather"
    assert "finish_reason='length'" in cut["error"] and "max_tokens" in cut["error"]


def test_lenient_forms_of_a_call_parse() -> None:
    _, calls, _ = parse_tool_calls('<tool_call>{"name": "f", "parameters": "{\\"x\\": 1}"}</tool_call>')
    assert calls[0]["name"] == "f" and calls[0]["args"] == {"x": 1}


# -- the grammar of each answer shape -------------------------------------------------------------------------


def test_output_spec_grammars() -> None:
    tools = [convert_tool(get_weather), convert_tool(no_args)]
    required = OutputSpec(tools=tools, tool_choice="required").grammar()
    assert required.value["format"]["type"] == "tags_with_separator"
    assert required.value["format"]["stop_after_first"] is True
    assert [t["begin"] for t in required.value["format"]["tags"]] == [
        '<tool_call>\n{"name": "get_weather", "arguments": ', '<tool_call>\n{"name": "no_args", "arguments": '
    ]
    named = OutputSpec(tools=tools, tool_choice="no_args", parallel_tool_calls=True).grammar()
    assert len(named.value["format"]["tags"]) == 1 and named.value["format"]["stop_after_first"] is False
    auto = OutputSpec(tools=tools).grammar()
    assert auto.value["format"]["type"] == "triggered_tags" and auto.value["format"]["triggers"] == ["<tool_call>"]
    assert OutputSpec(tools=tools, tool_choice="none").grammar() is None
    schema = Joke.model_json_schema()
    answer = OutputSpec(response_format={"type": "json_schema", "json_schema": {"schema": schema}}).grammar()
    assert answer.kind == "json_schema" and answer.value == schema
    assert OutputSpec(response_format={"type": "json_object"}).grammar().value == {"type": "object"}
    assert OutputSpec(response_format={"type": "json_object", "schema": schema}).grammar() == answer
    both = OutputSpec(tools=tools, response_format={"type": "json_object"}).grammar()
    assert both.value["format"]["type"] == "or"
    with pytest.raises(ValueError, match="without tools"):
        OutputSpec(tool_choice="required")
    with pytest.raises(ValueError, match="not supported"):
        OutputSpec(response_format={"type": "xml"})
    with pytest.raises(ValueError, match="optional schema"):
        OutputSpec(response_format={"type": "json_object", "schema": "Joke"})


# -- rendering conversations ------------------------------------------------------------------------------------

HISTORY = [
    HumanMessage("What is the weather in Paris?"),
    AIMessage("", tool_calls=[{"name": "get_weather", "args": {"location": "Paris"}, "id": "abc"}]),
    ToolMessage("It's sunny.", name="get_weather", tool_call_id="abc"),
    ToolMessage([{"type": "text", "text": "Missing unit."}], name="get_weather", tool_call_id="def", status="error"),
]


def test_fallback_rendering_for_a_template_without_tools(tokenizer: Any, random_model: Any) -> None:
    from langchain_persona_judge.chat_models import _convert_messages_to_dicts

    assert not template_supports_tools(tokenizer)
    spec = OutputSpec(tools=[convert_tool(get_weather)])
    messages, kwargs = render_conversation(tokenizer, _convert_messages_to_dicts(HISTORY), spec)
    assert kwargs == {}
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[0]["content"].startswith(FALLBACK_TOOLS_PROMPT.split("{tools}")[0])
    assert '"name": "get_weather"' in messages[0]["content"]
    assert messages[2]["content"] == CALL
    assert messages[3]["content"] == (
        '<tool_response name="get_weather" id="abc">\nIt\'s sunny.\n</tool_response>\n'
        '<tool_response name="get_weather" id="def" status="error">\nError: Missing unit.\n</tool_response>'
    )
    # The model reads it all: every persona's prompt carries the tools and the history.
    tokens = make(random_model, tokenizer).get_num_tokens_from_messages(HISTORY, tools=[get_weather])
    assert tokens > make(random_model, tokenizer).get_num_tokens_from_messages(HISTORY)


def test_native_rendering_passes_tools_to_the_template(tokenizer: Any) -> None:
    from langchain_persona_judge.chat_models import _convert_messages_to_dicts

    native = tiny_tokenizer()  # a fresh copy: its template is replaced below
    native.chat_template = (
        "{% if tools %}TOOLS:{% for t in tools %}{{ t.function.name }};{% endfor %}\n{% endif %}"
        "{% for m in messages %}{{ m.role }}: {{ m.content }}"
        "{% for c in m.tool_calls or [] %}[call {{ c.function.name }} {{ c.function.arguments | tojson }}]{% endfor %}"
        "\n{% endfor %}assistant:"
    )
    assert template_supports_tools(native)
    spec = OutputSpec(tools=[convert_tool(get_weather)], tool_choice="get_weather")
    messages, kwargs = render_conversation(native, _convert_messages_to_dicts(HISTORY), spec)
    assert [t["function"]["name"] for t in kwargs["tools"]] == ["get_weather"]
    assert messages[1]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": {"location": "Paris"}}
    assert messages[3]["role"] == "tool" and messages[3]["content"] == "Error: Missing unit."
    rendered = native.apply_chat_template(messages, tools=kwargs["tools"], tokenize=False)
    assert rendered.startswith("TOOLS:get_weather;") and '[call get_weather {"location": "Paris"}]' in rendered


# -- the chat model: parsing and streaming what the model writes ------------------------------------------------


def test_auto_mode_text_and_a_call(scripted: SimpleNamespace, random_model: Any, tokenizer: Any) -> None:
    scripted.text = f"Let me check the weather.\n{CALL}"
    llm = make(random_model, tokenizer).bind_tools([get_weather])
    result = llm.invoke("Weather in Paris?")
    assert result.content == "Let me check the weather."
    assert [(c["name"], c["args"]) for c in result.tool_calls] == [("get_weather", {"location": "Paris"})]
    assert result.tool_calls[0]["id"].startswith("call_") and result.invalid_tool_calls == []
    assert any(b["type"] == "tool_call" for b in result.content_blocks)
    # Streamed: text chunks, then one tool_call_chunk holding the whole call.
    chunks = list(llm.stream("Weather in Paris?"))
    calls = [c for c in chunks if c.tool_call_chunks]
    assert len(calls) == 1 and calls[0].tool_call_chunks[0]["args"] == '{"location": "Paris"}'
    full = sum(chunks[1:], chunks[0])
    assert full.content == "Let me check the weather." and full.tool_calls[0]["args"] == {"location": "Paris"}
    # The tools reached the model (fallback prompt), and "auto" is constrained too when xgrammar is there.
    run = scripted.runs[0]
    assert all("You can call these tools" in p and '"get_weather"' in p for p in run.prompts)
    assert run.options["constraint"] is not None


def test_invalid_and_truncated_calls_reach_the_message(scripted: SimpleNamespace, random_model: Any,
                                                       tokenizer: Any) -> None:
    scripted.text = '<tool_call>{"name": "teleport", "arguments": {}}</tool_call><tool_call>{"name": "get_wea'
    scripted.finish = "length"
    llm = make(random_model, tokenizer).bind_tools([get_weather], tool_choice="none")
    assert llm.invoke("hi").content == scripted.text  # "none": no parsing, the text is the answer
    llm = make(random_model, tokenizer).bind_tools([get_weather])
    result = llm.invoke("hi")
    assert result.tool_calls == [] and result.content == ""
    unknown, cut = result.invalid_tool_calls
    assert "not a bound tool" in unknown["error"] and unknown["name"] == "teleport"
    assert "finish_reason='length'" in cut["error"] and cut["args"].endswith('"get_wea') and cut["name"] is None
    streamed = [c for c in llm.stream("hi") if c.invalid_tool_calls]
    assert [c.invalid_tool_calls[0]["name"] for c in streamed] == ["teleport", None]


def test_history_with_calls_renders_for_the_model(scripted: SimpleNamespace, random_model: Any,
                                                  tokenizer: Any) -> None:
    scripted.text = "It is sunny in Paris."
    result = make(random_model, tokenizer).bind_tools([get_weather]).invoke(HISTORY)
    assert result.content == "It is sunny in Paris."
    prompt = scripted.runs[0].prompts[0]
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"location": "Paris"}}\n</tool_call>' in prompt
    assert 'status="error">\nError: Missing unit.' in prompt


# -- the chat model under the grammar, with a random model -------------------------------------------------------


@pytest.mark.parametrize("choice", ["any", "Calculator"])
def test_forced_calls_from_a_random_model_always_validate(random_model: Any, tokenizer: Any, choice: str) -> None:
    # 64 tokens: the shortest Calculator call is 39 of the tiny tokenizer's tokens.
    llm = make(random_model, tokenizer, temperature=1.0, top_p=None, max_tokens=64).bind_tools(
        [Calculator, get_weather], tool_choice=choice
    )
    for seed in range(3):
        result = llm.invoke("Compute 2 + 2.", seed=seed)
        assert len(result.tool_calls) == 1 and result.invalid_tool_calls == [] and result.content == ""
        call = result.tool_calls[0]
        assert call["id"].startswith("call_")
        if choice == "Calculator" or call["name"] == "Calculator":
            Calculator.model_validate(call["args"])
        else:
            assert call["name"] == "get_weather" and isinstance(call["args"]["location"], str)
    full = None
    for chunk in llm.stream("Compute 2 + 2.", seed=7):
        full = chunk if full is None else full + chunk
    assert isinstance(full, AIMessageChunk) and len(full.tool_calls) == 1 and full.tool_calls[0]["id"]


def test_forced_calls_on_every_prompt_of_the_sweep_validate(tokenizer: Any) -> None:
    """The embedded-model test's three tools (floats and an enum; an enum with a default; an args_schema model) on
    every prompt of its sweep, sampled with a seed per prompt, each invoked and streamed: one valid call of one of
    them, and the stream one tool_call_chunk with the same call (same seed, same tokens).
    ``tests/integration_tests/test_tools.py`` decodes one prompt per tool shape on the embedded model."""
    # 2048 positions: the three tools' descriptions are ~900 of the tiny tokenizer's tokens per persona.
    model = tiny_llama(seed=1, vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, context=2048)
    bound = make(model, tokenizer, temperature=1.0, top_p=None, max_tokens=96).bind_tools(
        list(SWEEP_TOOLS.values()), tool_choice="any")
    names = []
    for seed, prompt in enumerate(SWEEP_PROMPTS):
        message = bound.invoke(prompt, seed=seed)
        names.append(check_forced_call(message))
        chunks = list(bound.stream(prompt, seed=seed))
        assert sum(len(c.tool_call_chunks) for c in chunks) == 1
        full = chunks[0]
        for chunk in chunks[1:]:
            full += chunk
        assert [(c["name"], c["args"]) for c in full.tool_calls] == [
            (c["name"], c["args"]) for c in message.tool_calls]
    assert len(set(names)) == len(SWEEP_TOOLS), names  # the grammar lets the model pick any of the tools


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
@pytest.mark.parametrize("schema", [Joke, JokeDict, Joke.model_json_schema()], ids=["pydantic", "typeddict", "json"])
def test_structured_output_from_a_random_model_always_validates(
    random_model: Any, tokenizer: Any, schema: Any, method: str
) -> None:
    budget = 48 if method == "function_calling" else 30  # the call's tags and name take 23 tokens more
    structured = make(random_model, tokenizer, temperature=1.0, top_p=None, max_tokens=budget).with_structured_output(
        schema, method=method
    )
    result = structured.invoke("Tell me a joke.", seed=1)
    joke = result if isinstance(result, Joke) else Joke.model_validate(result)
    assert isinstance(joke.setup, str)
    last = None
    for last in structured.stream("Tell me a joke.", seed=2):
        assert isinstance(last, Joke) if schema is Joke else isinstance(last, dict)
    assert last is not None and Joke.model_validate(dict(last) if not isinstance(last, Joke) else last.model_dump())


def test_structured_output_include_raw_and_json_mode(random_model: Any, tokenizer: Any, scripted: SimpleNamespace
                                                     ) -> None:
    scripted.text = '{"setup": "Why?", "punchline": "Because."}'
    llm = make(random_model, tokenizer)
    out = llm.with_structured_output(Joke, include_raw=True).invoke("joke")
    assert out["parsed"] == Joke(setup="Why?", punchline="Because.") and out["parsing_error"] is None
    assert isinstance(out["raw"], AIMessage)
    # The schema reaches the model as a system turn, and the grammar as the constraint.
    run = scripted.runs[0]
    assert "Reply with only a JSON object that matches this JSON schema" in run.prompts[0]
    assert run.options["constraint"] is not None and run.options["eos_token_id"] == [tokenizer.eos_token_id]
    assert llm.with_structured_output(Joke, method="json_mode").invoke("joke") == Joke(setup="Why?",
                                                                                       punchline="Because.")
    scripted.text = '{"setup": "Why?"}'
    bad = llm.with_structured_output(Joke, include_raw=True).invoke("joke")
    assert bad["parsed"] is None and "punchline" in str(bad["parsing_error"])


@pytest.mark.parametrize("schema", [Joke, Joke.model_json_schema()], ids=["pydantic", "json"])
def test_json_mode_with_a_schema_constrains_the_answer_to_it(random_model: Any, tokenizer: Any,
                                                             scripted: SimpleNamespace, schema: Any) -> None:
    # JSON mode binds the schema with the json_object format: the prompt shows it and the grammar enforces it,
    # so no required key can be left out (with any object allowed, SmolLM2 wrote only "setup").
    scripted.text = '{"setup": "Why?", "punchline": "Because."}'
    llm = make(random_model, tokenizer)
    structured = llm.with_structured_output(schema, method="json_mode")
    response_format = structured.first.kwargs["response_format"]
    assert response_format["type"] == "json_object" and response_format["schema"]["required"] == ["setup", "punchline"]
    expected = {"setup": "Why?", "punchline": "Because."}
    assert structured.invoke("joke") == (Joke(**expected) if schema is Joke else expected)
    run = scripted.runs[-1]
    assert "Reply with only a JSON object that matches this JSON schema" in run.prompts[0]
    assert '"punchline": {"description": "answer to resolve the joke"' in run.prompts[0]
    close = tokenizer.convert_tokens_to_ids("}")
    setup_only = tokenizer('{"setup": "Why?"', add_special_tokens=False)["input_ids"]
    constraint = run.options["constraint"]
    for token in setup_only:
        constraint.advance(token)
    assert not constraint.allowed()[close]
    with pytest.raises(RuntimeError, match="does not continue the grammar"):
        constraint.advance(close)
    # response_format={"type": "json_object"} bound without a schema still allows any object.
    llm.bind(response_format={"type": "json_object"}).invoke("joke")
    run = scripted.runs[-1]
    assert "Reply with only a JSON object." in run.prompts[0] and "schema" not in run.prompts[0]
    any_object = run.options["constraint"]
    for token in setup_only:
        any_object.advance(token)
    assert any_object.allowed()[close]


def test_a_budget_too_small_for_any_valid_answer_fails_before_decoding(random_model: Any, tokenizer: Any) -> None:
    llm = make(random_model, tokenizer, max_tokens=20)
    with pytest.raises(ValueError, match=r"max_tokens=20 cannot hold even the shortest answer this tool call allows"):
        llm.bind_tools([Calculator], tool_choice="any").invoke("2 + 2?")
    with pytest.raises(ValueError, match=r"shortest answer this schema allows \(\d+ tokens\); raise max_tokens"):
        llm.with_structured_output(Calculator).invoke("2 + 2?", max_tokens=5)


def test_with_structured_output_rejects_bad_arguments(random_model: Any, tokenizer: Any) -> None:
    llm = make(random_model, tokenizer)
    with pytest.raises(ValueError, match="method='xml' is not supported"):
        llm.with_structured_output(Joke, method="xml")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Unknown argument"):
        llm.with_structured_output(Joke, temperature=3)


def test_without_xgrammar_forced_shapes_fail_clearly_and_auto_still_works(
    monkeypatch: pytest.MonkeyPatch, scripted: SimpleNamespace, random_model: Any, tokenizer: Any
) -> None:
    monkeypatch.setitem(sys.modules, "xgrammar", None)
    llm = make(random_model, tokenizer)
    with pytest.raises(GrammarNotInstalledError, match=r"pip install 'langchain-persona-judge\[grammar\]'"):
        llm.bind_tools([get_weather], tool_choice="any").invoke("hi")
    with pytest.raises(GrammarNotInstalledError):
        llm.with_structured_output(Joke).invoke("hi")
    scripted.text = CALL
    result = llm.bind_tools([get_weather]).invoke("hi")  # auto: unconstrained, parsed leniently
    assert result.tool_calls[0]["args"] == {"location": "Paris"}
    assert "constraint" not in scripted.runs[-1].options


def test_unknown_per_call_options_still_fail(random_model: Any, tokenizer: Any) -> None:
    with pytest.raises(TypeError, match="'tools', 'tool_choice', 'parallel_tool_calls', 'response_format'"):
        make(random_model, tokenizer).invoke("hi", toolz=[])


# -- the styled-output tool --------------------------------------------------------------------------------------


def test_styled_tool_rewrites_with_its_personas(scripted: SimpleNamespace, random_model: Any, tokenizer: Any
                                                ) -> None:
    scripted.text = "  Meeting moved, folks: Thursday, 3 pm!  "
    styled = make(random_model, tokenizer).as_styled_tool(["concise", "Be cheerful."])
    assert isinstance(styled, PersonaJudgeTool) and styled.name == "styled_writer"
    assert "Rewrites the given text in this style: concise; Be cheerful." in styled.description
    assert styled.invoke({"text": "The meeting moved to 3 pm on Thursday."}) == "Meeting moved, folks: Thursday, 3 pm!"
    prompt = scripted.runs[-1].prompts
    assert len(prompt) == 2 and all(REWRITE_INSTRUCTIONS in p and "The meeting moved" in p for p in prompt)
    # Callers may pick registry personas per call when allowed: the schema lists only personas that exist.
    choosing = make(random_model, tokenizer).as_styled_tool(["concise", "humor"], choose_personas=True)
    choosing.invoke({"text": "hello", "preferences": ["professional"]})
    assert len(scripted.runs[-1].prompts) == 1
    names = convert_tool(choosing)["function"]["parameters"]["properties"]["preferences"]["anyOf"][0]["items"]["enum"]
    from langchain_persona_judge import load_registry

    # Registry names only ("pirate" is none; the built-ins now include a "formal" basis persona).
    assert {"professional", "humor", "expert"} <= set(names) <= set(load_registry(None).names())
    assert "pirate" not in names
    assert "preferences" not in convert_tool(styled)["function"]["parameters"]["properties"]
    # "answer" mode answers the request instead of rewriting it.
    answering = make(random_model, tokenizer).as_styled_tool(mode="answer", name="answerer")
    assert answering.invoke("What is rain?") == "Meeting moved, folks: Thursday, 3 pm!"
    assert REWRITE_INSTRUCTIONS not in scripted.runs[-1].prompts[0]
    # Any agent can bind it as a tool: its schema is the request text (and optional personas).
    schema = convert_tool(styled)["function"]
    assert schema["name"] == "styled_writer" and schema["parameters"]["required"] == ["text"]


async def test_styled_tool_async(scripted: SimpleNamespace, random_model: Any, tokenizer: Any) -> None:
    scripted.text = "Rewritten."
    styled = make(random_model, tokenizer).as_styled_tool(["concise"])
    assert await styled.ainvoke({"text": "Please rewrite this."}) == "Rewritten."
    message = await styled.ainvoke({"type": "tool_call", "id": "call_1", "name": "styled_writer",
                                    "args": {"text": "Please rewrite this."}})
    assert isinstance(message, ToolMessage) and message.content == "Rewritten." and message.tool_call_id == "call_1"


def test_system_messages_and_tools_share_the_system_turn(scripted: SimpleNamespace, random_model: Any,
                                                         tokenizer: Any) -> None:
    scripted.text = "ok"
    make(random_model, tokenizer, preferences=[]).bind_tools([get_weather]).invoke(
        [SystemMessage("You are terse."), HumanMessage("hi")]
    )
    (prompt,) = scripted.runs[0].prompts
    assert prompt.index("You are terse.") < prompt.index("You can call these tools") < prompt.index("hi")
    assert json.dumps(convert_tool(get_weather), ensure_ascii=False) in prompt
