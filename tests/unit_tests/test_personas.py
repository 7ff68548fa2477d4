"""Persona registry: loading, rendering, inheritance, precise errors, the sandbox, and composition."""

from __future__ import annotations

import warnings

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from langchain_persona_judge.personas.composition import compose, resolve_preference
from langchain_persona_judge.personas import (
    Persona,
    PersonaError,
    PersonaRegistry,
    UnknownPersonaError,
    load_registry,
)

PAPER = ["helpful", "harmless", "humor", "correct", "informative", "professional", "creative", "touching", "vivid"]
PSOUPS = ["elementary", "expert", "concise", "informative", "friendly", "unfriendly"]


def test_builtins_hold_the_paper_and_psoups_dimensions_with_published_wording():
    import json
    from pathlib import Path

    registry = PersonaRegistry.default()
    assert set(PAPER + PSOUPS) <= set(registry.names())
    published = json.loads((Path(__file__).parents[3] / "shared/reference/preferences.json").read_text()) \
        if (Path(__file__).parents[3] / "shared/reference/preferences.json").exists() else None
    if published is None:
        pytest.skip("../shared/reference/preferences.json is not beside this checkout")
    for name in ["helpful", "harmless", "humor", "correct", "creative", "touching", "vivid"]:
        assert registry.render(name) == published["persona_judge"][name]
    assert registry.render("professional") == published["persona_judge"]["professional"]
    psoups = published["psoups"]
    assert registry.render("elementary") == psoups["P1A"]
    assert registry.render("expert") == psoups["P1B"]
    assert registry.render("concise") == psoups["P2A"]
    assert registry.render("informative") == psoups["P2B"]
    assert registry.render("friendly") == psoups["P3A"]
    assert registry.render("unfriendly") == psoups["P3B"]


def test_round_trip(tmp_path):
    registry = load_registry("examples/personas.yaml")
    text = registry.to_yaml()
    again = PersonaRegistry.from_yaml_text(text)
    assert [p.model_dump() for p in again] == [p.model_dump() for p in registry]
    path = tmp_path / "out.yaml"
    path.write_text(text)
    assert PersonaRegistry.from_yaml(path).names() == registry.names()
    assert again.render("biologist", level="undergraduate") == registry.render("biologist", level="undergraduate")


def test_variables_inheritance_and_parent_text():
    registry = load_registry("examples/personas.yaml")
    assert registry.render("expert") == "Generate a response that only a PhD Student in that specific field could understand."
    assert registry.render("expert", field="biology").endswith("PhD Student in biology could understand.")
    # The child's variables are the parent's defaults; the child's description includes the parent's text.
    assert registry.render("biologist") == (
        "Generate a response that only a PhD Student in biology could understand. Use examples from graduate biology."
    )
    assert "undergraduate" in registry.render("biologist", level="undergraduate")
    assert registry.tags("biologist")[:1] == ["psoups"]
    assert Persona(name="x", description="for {{ who }}", variables={"who": "kids"}).render() == "for kids"


def test_a_template_variable_may_be_called_name(tmp_path):
    """``registry.render(persona, name=...)``: the persona is positional, so ``name`` is the template's (it was a
    TypeError, "got multiple values for argument 'name'")."""
    path = tmp_path / "named.yaml"
    path.write_text("personas:\n  - name: greeter\n    description: Address the reader as {{ name }}.\n"
                    "    variables: {name: friend}\n")
    registry = load_registry(path)
    assert registry.render("greeter") == "Address the reader as friend."
    assert registry.render("greeter", name="Ada") == "Address the reader as Ada."
    assert resolve_preference(("greeter", {"name": "Ada"}), registry).text == "Address the reader as Ada."


def test_folder_loading_and_merge_warns_on_override(tmp_path):
    (tmp_path / "a.yaml").write_text("personas:\n  - name: one\n    description: First.\n")
    (tmp_path / "b.yml").write_text("personas:\n  - name: one\n    description: Second.\n  - name: two\n    description: Two.\n")
    with pytest.warns(UserWarning, match="'one'.*overrides"):
        registry = PersonaRegistry.from_yaml(tmp_path)
    assert registry.render("one") == "Second." and len(registry) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PersonaRegistry.default().merge(PersonaRegistry([Persona(name="new", description="x")]))


def _load(text: str) -> PersonaRegistry:
    return PersonaRegistry.from_yaml_text(text, source="my.yaml")


@pytest.mark.parametrize(
    "text, pattern",
    [
        ("personas:\n  - name: a\n    description: x: y\n", r"my\.yaml:3: invalid YAML: mapping values are not allowed here"),
        ("personas:\n  - name: a\n    description: [unclosed\n", r"my\.yaml:\d+: invalid YAML"),
        ("personas:\n  - name: a\n    description: x\n  - name: a\n    description: y\n",
         r"my\.yaml:4: persona 'a' is defined twice in this file \(first on line 2\)"),
        ("personas:\n  - name: a\n    extends: b\n  - name: b\n    extends: a\n",
         r"my\.yaml:2: persona 'a' has cyclic `extends`: a -> b -> a"),
        ("personas:\n  - name: a\n    description: \"{{ x \"\n", r"my\.yaml:2: persona 'a': template syntax error"),
        ("personas:\n  - name: a\n    description: \"   \"\n", r"my\.yaml:2: persona 'a': `description` is empty"),
        ("personas:\n  - name: a\n    description: ok\n    tags: nope\n", r"persona 'a': `tags` Input should be a valid list"),
        ("personas:\n  - name: a\n    description: ok\n    variables: [1]\n", r"`variables` Input should be a valid dictionary"),
        ("personas:\n  - name: a\n    descripton: hi\n", r"`descripton` is not a persona field"),
        ("personas:\n  - name: 2 words\n    description: hi\n", r"must start with a letter"),
        ("personas:\n  - name: a\n", r"my\.yaml:2: persona 'a' has no description"),
        ("personas:\n  - just text\n", r"my\.yaml:2: persona entry #1 is a str"),
        ("people: []\n", r"a persona registry is a mapping with a `personas:` list"),
        ("personas: []\nextra: 1\n", r"unknown top-level key"),
    ],
)
def test_malformed_registries_fail_precisely(text, pattern):
    with pytest.raises(PersonaError, match=pattern):
        _load(text)


def test_unknown_persona_suggests_close_matches():
    with pytest.raises(UnknownPersonaError, match=r"Unknown persona 'elementry'\. Did you mean 'elementary'\?"):
        PersonaRegistry.default().get("elementry")
    with pytest.raises(PersonaError, match="Unknown persona 'humour'.*'humor'"):
        resolve_preference("humour", PersonaRegistry.default())


def test_missing_variable_and_missing_parent():
    registry = _load("personas:\n  - name: a\n    description: for {{ who }}\n  - name: b\n    extends: zz\n")
    with pytest.raises(PersonaError, match=r"persona 'a' needs the variable\(s\) who: pass them, e.g. \('a', \{'who': \.\.\.\}\)"):
        registry.render("a")
    assert registry.render("a", who="kids") == "for kids"
    with pytest.raises(PersonaError, match="persona 'b' extends 'zz', which is not defined"):
        registry.render("b")
    with pytest.raises(PersonaError, match="extends 'zz', which is not defined"):
        load_registry(registry)


def test_missing_registry_file(tmp_path):
    with pytest.raises(PersonaError, match="persona registry file not found"):
        PersonaRegistry.from_yaml(tmp_path / "nope.yaml")
    with pytest.raises(PersonaError, match="holds no .yaml"):
        PersonaRegistry.from_yaml(tmp_path)


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ items.append(1) }}",
        "{{ mapping.update({'a': 1}) }}",
        "{{ (1).__class__.__base__ }}",
    ],
)
def test_sandbox_refuses_escapes_and_writes(template):
    persona = Persona(name="evil", description=template, variables={})
    registry = PersonaRegistry([persona])
    with pytest.raises(PersonaError):
        registry.render("evil", items=[1, 2], mapping={"x": 1}, cycler=object())


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_text_raises_only_registry_errors(text):
    try:
        registry = PersonaRegistry.from_yaml_text(text)
    except PersonaError:
        return
    for name in registry.names():
        try:
            registry.render(name)
        except PersonaError:
            pass


_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20))
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)
_entries = st.dictionaries(
    st.sampled_from(["name", "description", "variables", "extends", "tags", "system", "other"]), _values, max_size=5
)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(_entries, max_size=4))
def test_arbitrary_structures_raise_only_registry_errors(entries):
    text = yaml.safe_dump({"personas": entries})
    try:
        registry = PersonaRegistry.from_yaml_text(text)
    except PersonaError:
        return
    for name in registry.names():
        try:
            registry.render(name)
        except PersonaError:
            pass


# -- composition ---------------------------------------------------------------------------------


def test_preference_specs_resolve():
    registry = load_registry("examples/personas.yaml")
    assert resolve_preference("pirate", registry).text.startswith("Answer in the voice of a cheerful pirate")
    assert resolve_preference(("expert", {"field": "biology"}), registry).text.endswith("biology could understand.")
    free = resolve_preference("Use short sentences.", registry)
    assert free.text == "Use short sentences." and free.name is None
    custom = resolve_preference(Persona(name="humor", description="Tell jokes."), registry)
    assert custom.text == "Tell jokes."  # an explicit object wins over the built-in of the same name
    with pytest.raises(PersonaError, match=r"\(name, \{variables\}\) pair"):
        resolve_preference(("expert", "biology"), registry)
    with pytest.raises(PersonaError, match="empty"):
        resolve_preference("  ", registry)


def test_composition_strategies_produce_the_promised_prompts():
    registry = PersonaRegistry.default()
    prefs = [resolve_preference(s, registry) for s in ["elementary", "humor", "concise"]]
    split = compose(prefs, "split")
    assert [p.preferences for p in split] == [[x.text] for x in prefs]
    pair = compose(prefs, "pair")
    assert [p.names for p in pair] == [["elementary", "humor"], ["concise"]]
    everything = compose(prefs, "all")
    assert len(everything) == 1 and everything[0].preferences == [x.text for x in prefs]
    assert compose([], "split")[0].preferences == []
    with pytest.raises(ValueError, match="composition='mix' is unknown"):
        compose(prefs, "mix")
