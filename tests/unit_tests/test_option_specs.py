"""Every surface of an option agrees with its one declaration (``option_specs.OPTIONS``).

The surfaces: the engine's ``DecodingOptions``, ``ChatPersonaJudge``'s fields, the CLI's flags, a request body
built by ``http_fields()`` and the chat app's request model. Each test fails when a surface lacks a declared
option, holds an option the table does not declare, restates a different default, or accepts or refuses other
values than the declaration (values probed on both sides of every bound, every choice, None).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import math
import pkgutil
import typing
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError, create_model

from langchain_persona_judge import ChatPersonaJudge, DecodingOptions, InvalidOptionError, chat_models
from langchain_persona_judge.cli import ask, build_parser
from langchain_persona_judge.decoding import COMBINE_RULES, SCHEDULES
from langchain_persona_judge.option_specs import BY_NAME, OPTIONS, OptionSpec, http_fields, options_for
from langchain_persona_judge.personas import Layout, Strategy

ROOT = Path(__file__).resolve().parents[2]

# The documented defaults, written out here (not read from the code under test): the paper's λ = 4 and plain
# temperature-1 sampling for the engine; temperature 0.7 and nucleus 0.95 for the chat model and the CLI.
ENGINE_DEFAULTS = {
    "max_new_tokens": 256, "lookahead": 4, "do_sample": True, "temperature": 1.0, "top_k": None, "top_p": None,
    "seed": None, "draft_confidence": 0.0, "schedule": "auto", "combine": "judge", "weights": None, "guidance": 1.0,
    "repetition_penalty": None, "no_repeat_ngram_size": None, "eos_token_id": None,
}
CHAT_DEFAULTS = {
    "max_tokens": 256, "lookahead": 4, "temperature": 0.7, "top_k": None, "top_p": 0.95, "seed": None,
    "draft_confidence": None, "schedule": "auto", "combine": "judge", "weights": None, "guidance": None,
    "repetition_penalty": None, "no_repeat_ngram_size": None, "composition": "split", "preference_layout": "system",
    "negative_preference": None, "truncation": "error", "timeout": None,
}
# ChatPersonaJudge's fields that are not decoding/request options (the model, its loading, LangChain plumbing).
# A new option belongs in option_specs.OPTIONS, not here.
CHAT_OTHER_FIELDS = {
    "model_name", "preferences", "registry", "preference_template", "profile", "stop", "device", "dtype", "backend",
    "streaming", "return_trace", "max_concurrency", "max_queue", "hf_model", "tokenizer", "executor",
}
# The CLI's arguments that are not declared options.
CLI_OTHER_DESTS = {
    "help", "version", "question", "system", "preferences", "registry", "profile", "model", "device", "dtype",
    "backend", "compare", "json", "stats", "quiet",
}
# The chat app's own defaults (its Settings), chosen for a 135M model in a browser: they differ from the
# library's on purpose. Any other restated default must equal the declaration.
APP_OWN_DEFAULTS = {"max_tokens": 160, "repetition_penalty": 1.2}


def _probes(spec: OptionSpec) -> list[Any]:
    """Values on both sides of every bound, every choice and one that is not, None, the default."""
    if spec.choices:
        return [*spec.choices, "nope", None]
    if spec.sequence:
        return [[0.6, -0.4], [1], [], [1.0, math.inf], [math.nan], None]
    if spec.type is str:
        return ["Be rude.", None]
    values: list[Any] = [spec.default, spec.default_for("engine"), None]
    for bounds in (spec.bounds, spec.bounds_for("engine")):
        for edge in (bounds.ge, bounds.gt, bounds.le, bounds.lt):
            if edge is not None:
                step = 1 if spec.type is int else 0.5
                values += [edge - step, edge, edge + step]
    if spec.type is float:
        values += [math.inf, -math.inf, math.nan, 0.0, 1.0, 2.5]
    if spec.type is int:
        values += [0, 1, 3]
        values = [v for v in values if v is None or float(v).is_integer()]
        values = [None if v is None else int(v) for v in values]
    return values


def _cases(surface: str) -> list[tuple[OptionSpec, Any]]:
    return [(spec, value) for spec in options_for(surface) for value in _probes(spec)]  # type: ignore[arg-type]


def _id(case: Any) -> str:
    return case.name if isinstance(case, OptionSpec) else repr(case)


def _accepts(build: Any) -> bool:
    try:
        build()
    except (ValidationError, InvalidOptionError, ask.UsageError, SystemExit):
        return False
    return True


# -- the table itself ---------------------------------------------------------------------------------------


def test_the_declared_choices_are_the_ones_the_layers_implement() -> None:
    assert set(BY_NAME["schedule"].choices) == {*SCHEDULES, "auto"}
    assert set(BY_NAME["combine"].choices) == set(COMBINE_RULES)
    assert set(BY_NAME["composition"].choices) == set(typing.get_args(Strategy))
    assert set(BY_NAME["preference_layout"].choices) == set(typing.get_args(Layout))


def test_every_option_has_a_help_line_and_a_surface() -> None:
    for spec in OPTIONS:
        assert spec.help and "\n" not in spec.help, spec.name
        assert spec.surfaces, spec.name
        assert spec.is_valid(spec.default) and spec.is_valid(spec.default_for("engine"), "engine"), spec.name


# -- the engine -----------------------------------------------------------------------------------------------


def test_decoding_options_hold_exactly_the_declared_engine_options() -> None:
    fields = {f.name: f.default for f in DecodingOptions.__dataclass_fields__.values()}
    assert fields == {spec.field_name: spec.default_for("engine") for spec in options_for("engine")}
    assert {k: fields[k] for k in ENGINE_DEFAULTS} == ENGINE_DEFAULTS


@pytest.mark.parametrize(("spec", "value"), _cases("engine"), ids=_id)
def test_decoding_options_check_each_option_as_declared(spec: OptionSpec, value: Any) -> None:
    others = {"combine": "product"} if spec.name == "weights" else {}  # weights belong to the product rule
    accepted = _accepts(lambda: DecodingOptions(**{spec.field_name: value, **others}))
    assert accepted == spec.is_valid(value, "engine")


def test_a_refused_engine_option_names_itself_and_the_fix() -> None:
    with pytest.raises(InvalidOptionError, match=r"^lookahead=0 is invalid: pass an integer >= 1"):
        DecodingOptions(lookahead=0)
    with pytest.raises(ValueError, match=r"top_p=1\.5 is invalid: pass a number in \(0, 1\]"):
        DecodingOptions(top_p=1.5)


# -- the chat model --------------------------------------------------------------------------------------------


def test_chat_model_fields_are_the_declared_options_and_nothing_else() -> None:
    options = {spec.name for spec in options_for("chat")}
    # the fields its class body declares (private attributes are no fields)
    own = {name for name in vars(ChatPersonaJudge)["__annotations__"] if not name.startswith("_")}
    assert own & options == set(), "the chat model restates a declared option"
    assert own == CHAT_OTHER_FIELDS, "declare a new option in option_specs.OPTIONS"
    assert options <= set(ChatPersonaJudge.model_fields)
    for spec in options_for("chat"):
        info = ChatPersonaJudge.model_fields[spec.name]
        assert info.default == spec.default and info.description == spec.help, spec.name
    llm = ChatPersonaJudge()
    assert {k: getattr(llm, k) for k in CHAT_DEFAULTS} == CHAT_DEFAULTS
    assert {spec.name for spec in options_for("chat") if spec.per_call} <= set(chat_models._CALL_OVERRIDES)


@pytest.mark.parametrize(("spec", "value"), _cases("chat"), ids=_id)
def test_chat_model_checks_each_option_as_declared(spec: OptionSpec, value: Any) -> None:
    assert _accepts(lambda: ChatPersonaJudge(**{spec.name: value})) == spec.is_valid(value, "chat")


@pytest.mark.parametrize("spec", [s for s in options_for("chat") if "engine" in s.surfaces], ids=_id)
def test_the_chat_model_passes_each_engine_option_on(spec: OptionSpec) -> None:
    value = next(v for v in _probes(spec) if v != spec.default and v not in (0, None) and spec.is_valid(v, "engine"))
    others = {"combine": "product"} if spec.name == "weights" else {}
    options = ChatPersonaJudge(**{spec.name: value, **others}).decoding_options()
    assert getattr(options, spec.field_name) == (tuple(value) if spec.sequence else value)


def test_the_chat_model_gives_the_engine_every_engine_option() -> None:
    llm = ChatPersonaJudge(lookahead=3, top_k=5, seed=7, combine="product", weights=[0.6, 0.4], max_tokens=9)
    options = llm.decoding_options()
    assert (options.lookahead, options.top_k, options.seed, options.weights) == (3, 5, 7, (0.6, 0.4))
    assert (options.max_new_tokens, options.temperature, options.top_p, options.do_sample) == (9, 0.7, 0.95, True)
    assert ChatPersonaJudge(temperature=0).decoding_options().do_sample is False


# -- the CLI ------------------------------------------------------------------------------------------------------


def _cli_actions() -> dict[str, argparse.Action]:
    return {action.dest: action for action in build_parser()._actions}


def test_cli_flags_are_the_declared_options_and_nothing_else() -> None:
    actions = _cli_actions()
    options = {spec.name for spec in options_for("cli")}
    assert set(actions) - options == CLI_OTHER_DESTS, "declare a new option in option_specs.OPTIONS"
    for spec in options_for("cli"):
        action = actions[spec.name]
        assert action.default == spec.default, spec.name
        assert tuple(action.option_strings) == spec.cli_flags(), spec.name
        assert tuple(action.choices or ()) == spec.choices, spec.name
    args = build_parser().parse_args(["q"])
    assert {k: getattr(args, k) for k in CHAT_DEFAULTS if k in options} == {
        k: v for k, v in CHAT_DEFAULTS.items() if k in options
    }


def _cli(spec: OptionSpec, value: Any) -> None:
    flag = spec.cli_flags()[-1]
    argv = ["q"] + ([flag, str(value)] if not spec.sequence else [a for v in value for a in (flag, str(v))])
    args = build_parser().parse_args(argv + (["--combine", "product"] if spec.sequence else []))
    ask._validate(args)


@pytest.mark.parametrize(
    ("spec", "value"), [(s, v) for s, v in _cases("cli") if v is not None and v != []], ids=_id
)
def test_cli_checks_each_option_as_declared(spec: OptionSpec, value: Any) -> None:
    assert _accepts(lambda: _cli(spec, value)) == spec.is_valid(value, "chat")


def test_cli_builds_the_chat_model_with_every_cli_option() -> None:
    args = build_parser().parse_args(["q", "--lookahead", "2", "--layout", "user_turn", "--no-repeat-ngram", "3",
                                      "--negative", "Be rude.", "--guidance", "2"])
    llm = ask._make_llm(args, ["a", "b"])
    assert (llm.lookahead, llm.preference_layout, llm.no_repeat_ngram_size) == (2, "user_turn", 3)
    assert (llm.negative_preference, llm.guidance) == ("Be rude.", 2.0)
    baseline = ask._make_llm(args, ["a", "b"], "all", rule=False)
    assert (baseline.negative_preference, baseline.guidance, baseline.composition) == (None, None, "all")


# -- a request body (the HTTP server's) ------------------------------------------------------------------------------


def _body() -> type[BaseModel]:
    return create_model("Body", **http_fields())  # type: ignore[call-overload]


def test_http_fields_are_the_declared_http_options_all_optional() -> None:
    fields = _body().model_fields
    assert set(fields) == {spec.name for spec in options_for("http")}
    assert "timeout" not in fields and "do_sample" not in fields
    assert all(info.default is None for info in fields.values())
    assert fields["temperature"].description == BY_NAME["temperature"].help
    assert _body()(temperature=0.2, schedule="lockstep").model_dump(exclude_none=True) == {
        "temperature": 0.2, "schedule": "lockstep"
    }


@pytest.mark.parametrize(("spec", "value"), _cases("http"), ids=_id)
def test_http_fields_check_each_option_as_declared(spec: OptionSpec, value: Any) -> None:
    assert _accepts(lambda: _body()(**{spec.name: value})) == (value is None or spec.is_valid(value, "chat"))


# -- the chat app (examples/chat_app) ----------------------------------------------------------------------------


def _app_class(name: str) -> type:
    """A class of the chat app, wherever in its package it lives."""
    if importlib.util.find_spec("fastapi") is None:
        pytest.fail("the chat app needs fastapi, from the project's `app` extra: .venv/bin/pip install -e '.[dev,app]'")
    names = ["examples.chat_app.server"] + [
        f"examples.chat_app.{m.name}" for m in pkgutil.iter_modules([str(ROOT / "examples" / "chat_app")])
    ]
    for module_name in names:
        module = importlib.import_module(module_name)
        if isinstance(getattr(module, name, None), type):
            return getattr(module, name)
    raise AssertionError(f"the chat app has no class {name}")


def test_the_chat_app_request_takes_declared_options_unset_by_default() -> None:
    message_in = _app_class("MessageIn")
    shared = set(message_in.model_fields) & set(BY_NAME)
    assert shared, "the chat app's request takes no declared option: has MessageIn moved?"
    for name in shared:
        assert "http" in BY_NAME[name].surfaces, name
        assert message_in.model_fields[name].default is None, f"MessageIn.{name} restates a default"
        for value in _probes(BY_NAME[name]):
            body = {"content": "hi", name: value}
            if value is not None and _accepts(lambda: message_in(**body)):  # noqa: B023
                assert BY_NAME[name].is_valid(value), f"MessageIn.{name} accepts {value!r}"


def test_the_chat_app_settings_restate_no_other_default() -> None:
    settings = _app_class("Settings")
    fields = settings.__dataclass_fields__
    shared = set(fields) & set(BY_NAME)
    assert shared
    for name in shared:
        expected = APP_OWN_DEFAULTS.get(name, BY_NAME[name].default)
        assert fields[name].default == expected, f"the chat app's Settings.{name} restates another default"
