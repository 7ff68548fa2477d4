"""Hostile persona registries and preference templates (a security review's probes, each kept as a test).

Registries are shared between people, so a registry file and a preference template are untrusted input. Each
probe must fail within a second, with memory bounded, as a PersonaError (registry) or PromptTemplateError
(preference template) naming the file, the line and the persona; and no field may read a file.

The probes run in one subprocess under ``RLIMIT_AS`` (2 GiB) and a timeout, so a regression shows as a failed
test, not as a hung or swapped-out test run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from langchain_persona_judge.errors import PersonaError, PromptTemplateError
from langchain_persona_judge.personas import (
    PersonaRegistry,
    compose,
    load_registry,
    persona_messages,
    render_preferences,
    resolve_preference,
)
from langchain_persona_judge.personas import parsing as registry_parsing

SECONDS = 1.0
MEMORY = 2 * 1024**3


def _yaml_string(text: str) -> str:
    return json.dumps(text)  # a JSON string is a YAML double-quoted scalar


def _evil(description: str, **fields: str) -> str:
    """A registry whose persona 'evil' (line 4) has ``description``; a harmless persona before it."""
    extra = "".join(f"    {key}: {value}\n" for key, value in fields.items())
    return (
        "personas:\n  - name: fine\n    description: Be fine.\n"
        f"  - name: evil\n    description: {_yaml_string(description)}\n{extra}"
    )


def _chain(depth: int, description: str = "{{ parent }}{{ parent }}") -> str:
    lines = ["personas:", "  - name: p0", "    description: ab"]
    for i in range(1, depth):
        lines += [f"  - name: p{i}", f"    extends: p{i - 1}", f"    description: {_yaml_string(description)}"]
    return "\n".join(lines) + "\n"


HEAVY = "".join(f"{{{{ a{j}|upper ~ b{j} }}}}" for j in range(50))  # 1030 characters, 100 expressions
NESTED_LOOPS = "".join(f"{{% for {v} in range(1000) %}}" for v in "abc") + "{% endfor %}" * 3

# name -> registry text; every one must fail loading or rendering with a PersonaError naming file, line, persona.
REGISTRY_PROBES: dict[str, str] = {
    # 1. unbounded template work (at load: constant folding; at render: operators, filters, loops, globals)
    "power_folded_at_load": _evil("{{ (10**(10**8)) > 0 }}"),
    "string_repeat": _evil("{{ 'x' * 10**9 }}"),
    "percent_width": _evil("{{ '%999999999d' % 1 }}"),
    "center_width": _evil("{{ 'x'|center(999999999) }}"),
    "nested_range_loops": _evil(NESTED_LOOPS),
    "lipsum": _evil("{{ lipsum(10**5) }}"),
    "range_too_long": _evil("{{ range(10**7)|list|length }}"),
    "integer_squaring": _evil("{% set a = 10**1000 %}" + "{% set a = a * a %}" * 30 + "{{ a > 0 }}"),
    "concat_doubling": _evil("{% set a = 'x' * 100 %}" + "{% set a = a ~ a %}" * 40 + "{{ a|length }}"),
    "plus_doubling": _evil("{% set a = 'x' * 100 %}" + "{% set a = a + a %}" * 40 + "{{ a|length }}"),
    "block_set_doubling": _evil(
        "{% set a = 'x' * 5000 %}" + "{% set a %}{{ a }}{{ a }}{% endset %}" * 30 + "{{ a|length }}"
    ),
    "filter_block_flood": _evil(
        "{% set a = 'x' * 9000 %}{% filter upper %}{% for i in range(1000) %}{{ a }}{% endfor %}{% endfilter %}"
    ),
    "output_flood": _evil("{% for i in range(1000) %}{{ 'x' * 9000 }}{% endfor %}"),
    "str_ljust": _evil("{{ 'x'.ljust(10**9) }}"),
    "str_format_width": _evil("{{ '{:>999999999}'.format(1) }}"),
    "markup_format_width": _evil("{{ ('{:>999999999}'|safe).format(1) }}"),
    "str_replace_blowup": _evil("{{ ('x' * 9000).replace('', 'y' * 9000) }}"),
    "str_join_blowup": _evil("{{ ('y' * 9000).join('x' * 9000) }}"),
    "str_expandtabs": _evil("{{ ('\\t' * 9000).expandtabs(9000) }}"),
    "int_to_bytes": _evil("{{ (1).to_bytes(10**9, 'big') }}"),
    "filter_replace": _evil("{{ ('x' * 9000)|replace('', 'y' * 9000) }}"),
    "filter_join": _evil("{{ ('x' * 9000)|list|join('y' * 9000) }}"),
    "filter_map_center": _evil("{{ ('x' * 9000)|map('center', 9000)|list|length }}"),
    "filter_indent": _evil("{{ ('\\n' * 9000)|indent('y' * 9000) }}"),
    "filter_wordwrap": _evil("{{ ('x' * 9000)|wordwrap(1, wrapstring='y' * 9000) }}"),
    "filter_format": _evil("{{ '%999999999d'|format(1) }}"),
    "filter_batch": _evil("{{ [1]|batch(10**9, 'x')|list }}"),
    "filter_slice": _evil("{{ [1]|slice(10**9)|list }}"),
    "filter_round": _evil("{{ 5|round(-10**7) }}"),
    "filter_sum_of_lists": _evil("{{ ([[1] * 100] * 50)|sum(start=[]) }}"),
    "rendered_too_long": _evil("{{ 'x' * 6000 }}{{ 'y' * 6000 }}"),
    "source_too_long": _evil("x" * 10_001),
    # 2. errors that escaped as raw exceptions (TypeError, RecursionError, SyntaxError, ValueError)
    "include": _evil("{% include 'secret.txt' %}"),
    "extends_tag": _evil("{% extends 'base.txt' %}"),
    "import_tag": _evil("{% import 'macros.txt' as m %}{{ m }}"),
    "from_import_tag": _evil("{% from 'macros.txt' import m %}{{ m() }}"),
    "block_tag": _evil("{% block b %}x{% endblock %}"),
    "macro_calling_itself": _evil("{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}"),
    "macro_recursing_through_argument": _evil("{% macro m(f) %}{{ f(f) }}{% endmacro %}{{ m(m) }}"),
    "recursive_loop": _evil("{% for x in [1] recursive %}{{ loop([1]) }}{% endfor %}"),
    "deep_parentheses": _evil("{{ " + "(" * 3000 + "1" + ")" * 3000 + " }}"),
    "deep_unary": _evil("{{ " + "-" * 3000 + "1 }}"),
    "deep_lists": _evil("{{ " + "[" * 200 + "1" + "]" * 200 + " }}"),
    "nested_for_blocks": _evil("{% for a in [1] %}" * 25 + "x" + "{% endfor %}" * 25),
    "digits_literal": _evil("{{ " + "9" * 5000 + " }}"),
    "digits_variable": _evil("{{ n }}", variables="{n: " + "9" * 5000 + "}"),
    "big_int_from_text": _evil("{{ ('9' * 4300)|int * ('9' * 4300)|int }}"),
    "system_include": _evil("Be evil.", system=_yaml_string("{% include 'x' %}")),
    "system_repeat_at_render": _evil("Be evil.", system=_yaml_string("{{ system * 10**6 }}")),
    # 3. `extends` blow-up
    "extends_doubling_22_deep": _chain(22),
    "extends_doubling_within_depth": _chain(16),
    "extends_chain_800": _chain(800, "more"),
    # YAML itself
    "yaml_deep_nesting": "personas:\n  - name: evil\n    description: x\n    tags: " + "[" * 5000 + "]" * 5000 + "\n",
    "yaml_billion_laughs": "personas:\n  - name: evil\n    description: x\n"
    + "    variables: {a: &a [x, x, x, x, x, x, x, x, x]}\n"
    + "".join(f"    tags{i}: &l{i} [" + ", ".join([f"*l{i - 1}" if i else "*a"] * 9) + "]\n" for i in range(9)),
    "too_many_personas": "personas:\n" + "".join(f"  - name: p{i}\n    description: x\n" for i in range(1001)),
    # Parsing Jinja costs about 10 µs a character: a registry's templates hold at most 50 000 characters.
    "heavy_templates_then_refused": "personas:\n"
    + "".join(f"  - name: p{i}\n    description: {_yaml_string(HEAVY + str(i))}\n" for i in range(47))
    + "  - name: evil\n    description: \"{% include 'x' %}\"\n",
    "heavy_templates_past_the_allowance": "personas:\n"
    + "".join(f"  - name: p{i}\n    description: {_yaml_string(HEAVY + str(i))}\n" for i in range(200)),
}

# name -> (template, system); each must fail as a PromptTemplateError naming the template and its line.
TEMPLATE_PROBES: dict[str, tuple[str, str]] = {
    "power": ("{{ (10**(10**8)) > 0 }}", ""),
    "string_repeat": ("{{ 'x' * 10**9 }}", ""),
    "percent_width": ("{{ '%999999999d' % 1 }}", ""),
    "center_width": ("{{ 'x'|center(999999999) }}", ""),
    "nested_range_loops": (NESTED_LOOPS, ""),
    "lipsum": ("{{ lipsum(10**5) }}", ""),
    "include": ("{% include 'x' %}", ""),
    "macro_calling_itself": ("{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}", ""),
    "deep_parentheses": ("{{ " + "(" * 3000 + "1" + ")" * 3000 + " }}", ""),
    "digits_literal": ("{{ " + "9" * 5000 + " }}", ""),
    "system_flood": ("{% for i in range(1000) %}{{ system }}{% endfor %}", "s" * 50_000),
    "system_doubling": ("{{ system * 3 }}", "s" * 50_000),
}

_RUNNER = r'''
import json, resource, sys, time, traceback
resource.setrlimit(resource.RLIMIT_AS, ({memory}, {memory}))
from pathlib import Path
from langchain_persona_judge.errors import PersonaError, PromptTemplateError
from langchain_persona_judge.personas import PersonaRegistry, render_preferences

folder = Path(sys.argv[1])
registries, templates = json.loads(Path(sys.argv[2]).read_text())
results = {{}}
for name, text in registries.items():
    path = folder / f"{{name}}.yaml"
    path.write_text(text)
    start = time.perf_counter()
    try:
        registry = PersonaRegistry.from_yaml(path)
        for persona in registry.names():
            registry.render(persona)
            if registry.system_template(persona):
                render_preferences("system", ["x"], "s", registry.system_template(persona))
        outcome = ["no error", ""]
    except (PersonaError, PromptTemplateError) as exc:
        outcome = [type(exc).__name__, str(exc)]
    except BaseException as exc:
        outcome = ["raw " + type(exc).__name__, traceback.format_exc()[-2000:]]
    results["registry:" + name] = outcome + [time.perf_counter() - start]
for name, (template, system) in templates.items():
    start = time.perf_counter()
    try:
        render_preferences("system", ["Be kind."], system, template)
        outcome = ["no error", ""]
    except PromptTemplateError as exc:
        outcome = [type(exc).__name__, str(exc)]
    except BaseException as exc:
        outcome = ["raw " + type(exc).__name__, traceback.format_exc()[-2000:]]
    results["template:" + name] = outcome + [time.perf_counter() - start]
print(json.dumps(results))
'''


@pytest.fixture(scope="module")
def probe_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list]:
    """Every probe, run once in a subprocess limited to 2 GiB of address space, with a timeout."""
    folder = tmp_path_factory.mktemp("hostile")
    probes = folder / "probes.json"
    probes.write_text(json.dumps([REGISTRY_PROBES, TEMPLATE_PROBES]))
    script = _RUNNER.format(memory=MEMORY)
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    result = subprocess.run(
        [sys.executable, "-c", script, str(folder), str(probes)],
        capture_output=True, text=True, timeout=120, cwd=root, env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", sorted(REGISTRY_PROBES))
def test_a_hostile_registry_fails_fast_with_a_persona_error_naming_file_line_and_persona(probe_results, name):
    kind, message, seconds = probe_results["registry:" + name]
    assert kind in ("PersonaError", "PromptTemplateError"), message
    assert seconds < SECONDS, f"{name} took {seconds:.2f} s"
    assert f"{name}.yaml:" in message  # the file, and a line
    assert "persona '" in message, message
    if kind == "PromptTemplateError":  # a persona's `system:` template: the persona's line in the registry
        assert f"{name}.yaml:4: persona 'evil' `system`" in message, message


@pytest.mark.parametrize("name", sorted(TEMPLATE_PROBES))
def test_a_hostile_preference_template_fails_fast_with_a_prompt_template_error(probe_results, name):
    kind, message, seconds = probe_results["template:" + name]
    assert kind == "PromptTemplateError", message
    assert seconds < SECONDS, f"{name} took {seconds:.2f} s"
    assert "<inline preference template> (its line 1)" in message, message


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{% for p in preferences %}{{ loop.index }}. {{ p|capitalize }} {% endfor %}", "1. Be kind. 2. Be brief."),
        ("{{ '%s and %s'|format(*preferences) }} / {{ '{} - {}'.format(*preferences) }}",
         "Be kind. and Be brief. / Be kind. - Be brief."),
        ("{{ preferences|join(', ') }}|{{ preferences|map('upper')|join }}", "Be kind., Be brief.|BE KIND.BE BRIEF."),
        ("{% macro item(p) %}* {{ p }} {{ caller() }}{% endmacro %}{% call item('x') %}!{% endcall %}", "* x !"),
        ("{% set x %}{{ system }}{{ system }}{% endset %}{{ x ~ '-' ~ 'ab' * 3 ~ (2 ** 10) ~ range(3)|list|sum }}",
         "SS-ababab10243"),
        ("{{ 1.2345|round(2) }} [{{ 'x'|center(5) }}] {{ system|indent(2, true) }} {{ ['a', 'b']|batch(1)|list }}",
         "1.23 [  x  ]   S [['a'], ['b']]"),
    ],
)
def test_ordinary_templates_still_render(template, expected):
    assert render_preferences("system", ["Be kind.", "Be brief."], "S", template) == expected


def test_a_long_system_message_goes_through_the_builtin_templates():
    system = "You are an agent. " * 5_000  # 90 000 characters: the limit grows with the inputs
    assert render_preferences("system", ["Be kind."], system).endswith("agent. \nBe kind.")


def test_messages_name_the_persona_and_the_template_line(tmp_path):
    path = tmp_path / "team.yaml"
    path.write_text(_evil("line one\n{{ 'x' * 10**9 }}"))
    registry = PersonaRegistry.from_yaml(path)
    with pytest.raises(PersonaError, match=rf"{path}:4: persona 'evil': template refused on its line 2: .*`\*`"):
        registry.render("evil")
    path.write_text(_evil("{% include 'x' %}"))
    refused = rf"{path}:4: persona 'evil': template refused on its line 1: `{{% include %}}`"
    with pytest.raises(PersonaError, match=refused):
        PersonaRegistry.from_yaml(path)
    path.write_text(_evil("{{ n }}", variables="{n: " + "9" * 5000 + "}"))
    with pytest.raises(PersonaError, match=rf"{path}:6: invalid YAML: cannot read the value .*\(in persona 'evil'\)"):
        PersonaRegistry.from_yaml(path)


def test_a_file_that_is_not_utf8_or_too_big_is_a_persona_error(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"personas:\n  - name: caf\xe9\n    description: x\n")
    with pytest.raises(PersonaError, match=rf"{path}:2: the registry is not UTF-8"):
        PersonaRegistry.from_yaml(path)
    path = tmp_path / "big.yaml"
    path.write_text("personas: []\n" + "#" * registry_parsing.MAX_REGISTRY_BYTES)
    with pytest.raises(PersonaError, match=rf"{path}: the registry holds more than 1000000 bytes"):
        PersonaRegistry.from_yaml(path)


def test_a_folder_shares_one_allowance(tmp_path):
    for f in range(10):
        (tmp_path / f"team{f}.yaml").write_text(
            "personas:\n" + "".join(f"  - name: f{f}p{i}\n    description: x\n" for i in range(150))
        )
    start = time.perf_counter()
    with pytest.raises(PersonaError, match=rf"{tmp_path / 'team6.yaml'}:\d+: persona 'f6p100' is one too many"):
        load_registry(tmp_path)
    assert time.perf_counter() - start < SECONDS


# -- 3. `extends`: depth, rendered length, linear validation, a cache by path, mtime and size ------------------


def test_extends_depth_and_doubling_are_capped():
    with pytest.raises(PersonaError, match=r"persona 'p16' extends a chain of more than 16 personas"):
        PersonaRegistry.from_yaml_text(_chain(22), "deep.yaml")
    registry = PersonaRegistry.from_yaml_text(_chain(16), "deep.yaml")
    assert len(registry.render("p10")) == 2 * 2**10
    with pytest.raises(PersonaError, match=r"deep\.yaml:\d+: persona 'p13': .*longer than 10000 characters"):
        registry.render("p15")


def test_validation_is_linear_in_the_number_of_personas():
    # 1000 personas in chains 16 deep: the old validation walked every chain from every persona.
    lines = ["personas:"]
    for i in range(1000):
        lines += [f"  - name: p{i}", "    description: x"] + ([f"    extends: p{i - 1}"] if i % 16 else [])
    start = time.perf_counter()
    registry = PersonaRegistry.from_yaml_text("\n".join(lines) + "\n")
    registry.validate(missing_ok=False)
    assert time.perf_counter() - start < SECONDS
    assert registry.variables_used("p999") == set()


def test_a_registry_path_is_cached_until_its_file_changes(tmp_path):
    path = tmp_path / "team.yaml"
    path.write_text("personas:\n  - name: mine\n    description: First.\n")
    first = load_registry(path)
    assert load_registry(str(path)) is first  # not read again
    path.write_text("personas:\n  - name: mine\n    description: Second, longer.\n")
    second = load_registry(path)
    assert second is not first and second.render("mine") == "Second, longer."
    # Same size, new modification time: read again.
    path.write_text("personas:\n  - name: mine\n    description: Third, longer.\n")
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert load_registry(path).render("mine") == "Third, longer."


def test_a_registry_folder_is_cached_over_all_its_files(tmp_path):
    (tmp_path / "a.yaml").write_text("personas:\n  - name: one\n    description: One.\n")
    first = load_registry(tmp_path)
    assert load_registry(tmp_path) is first
    (tmp_path / "b.yaml").write_text("personas:\n  - name: two\n    description: Two.\n")
    second = load_registry(tmp_path)
    assert second is not first and second.render("two") == "Two."
    (tmp_path / "a.yaml").write_text("personas:\n  - name: one\n    description: Uno, changed.\n")
    assert load_registry(tmp_path).render("one") == "Uno, changed."


# -- 4. no field reads a file -----------------------------------------------------------------------------------


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "secret.txt"
    path.write_text("TOP-SECRET-TOKEN")
    return path


def test_no_registry_field_reads_a_file(tmp_path, secret):
    text = (
        "personas:\n"
        f"  - name: reader\n    description: {_yaml_string(str(secret))}\n    system: {_yaml_string(str(secret))}\n"
        f"  - name: relative\n    description: secret.txt\n    system: secret.txt\n"
    )
    (tmp_path / "team.yaml").write_text(text)
    old = Path.cwd()
    os.chdir(tmp_path)  # a relative path would resolve here
    try:
        registry = load_registry(tmp_path / "team.yaml")
        for name in ("reader", "relative"):
            prompts = compose([resolve_preference(name, registry)])
            messages = persona_messages(
                [{"role": "user", "content": "hi"}], prompts[0].preferences, template=prompts[0].system_template
            )
            rendered = json.dumps(messages)
            assert "TOP-SECRET-TOKEN" not in rendered
            # The field is template text: the system turn is that text, as written.
            assert messages[0]["content"] in (str(secret), "secret.txt")
    finally:
        os.chdir(old)


def test_a_preference_template_string_is_text_and_a_path_is_a_file_read_again_when_changed(tmp_path, secret):
    assert render_preferences("system", ["x"], template=str(secret)) == str(secret)
    template = tmp_path / "turn.jinja"
    template.write_text("A: {{ preferences|join(', ') }}")
    assert render_preferences("system", ["x", "y"], template=template) == "A: x, y"
    template.write_text("B: {{ preferences|join(' / ') }}")
    stat = template.stat()
    os.utime(template, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert render_preferences("system", ["x", "y"], template=template) == "B: x / y"
    with pytest.raises(PromptTemplateError, match="does not exist"):
        render_preferences("system", ["x"], template=tmp_path / "nope.jinja")
    template.write_text("{% include 'secret.txt' %}")
    with pytest.raises(PromptTemplateError, match=rf"{template} \(its line 1\) failed: .*include"):
        render_preferences("system", ["x"], template=Path(str(template)))


def test_the_chat_model_field_keeps_a_str_as_text_and_a_path_as_a_file(tmp_path):
    from langchain_persona_judge.chat_models import ChatPersonaJudge

    path = tmp_path / "turn.jinja"
    as_text = ChatPersonaJudge(preference_template=str(path))
    as_file = ChatPersonaJudge(preference_template=path)
    assert type(as_text.preference_template) is str
    assert isinstance(as_file.preference_template, Path)


def test_the_builtin_and_example_registries_still_load():
    assert len(PersonaRegistry.default()) >= 15
    registry = load_registry("examples/personas.yaml")
    assert registry.render("biologist").endswith("Use examples from graduate biology.")
    assert render_preferences("system", [registry.render("pirate")]).startswith("You are a helpful AI assistant.")
    assert render_preferences("user_turn", ["a", "b"]) == "a\nb"
