"""Templates with a deadline: slow or huge persona templates end in a PersonaError within 2 s and 256 MB.

Issue 27, item 5. Each probe passes the sandbox's older limits (source, range, loop iterations, sizes of the
values a template builds) and then either runs for minutes (slow loops, macros fanning out, ``in`` on large
containers in nested loops) or writes gigabytes (``tojson(indent=...)``, ``pprint``). The new limits end each:
the wall-clock deadline of a render, the work counted for ``in`` and the tests, the sizes of ``tojson`` and
``pprint`` estimated before they write, the sizes of list and dict literals.

The probes run in one subprocess under ``RLIMIT_AS`` (2 GiB), each with a 6 s alarm, measuring wall-clock time
(``time.perf_counter``), then, in a second pass, the peak of Python's allocations (``tracemalloc``), so a
regression shows as a failed test, not as a hung or swapped-out test run.
"""

from __future__ import annotations

import json
import os
import pprint
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from jinja2.exceptions import SecurityError
from jinja2.filters import do_tojson
from jinja2.nodes import EvalContext

from langchain_persona_judge.errors import PersonaError, PromptTemplateError
from langchain_persona_judge.personas import PersonaRegistry, render_preferences
from langchain_persona_judge.personas import parsing as registry_parsing
from langchain_persona_judge.personas.clock import shared_clock
from langchain_persona_judge.personas.sandbox import ENVIRONMENT, compile_template, render_template
from langchain_persona_judge.personas.sizes import json_size

SECONDS = 2.0
PEAK_BYTES = 256 * 1024**2
ADDRESS_SPACE = 2 * 1024**3
ALARM_SECONDS = 6

DEADLINE = r"it ran for more than 0\.5 s"
IN_WORK = r"its tests \(`in`, `==`\.\.\.\) looked through more than 10000000 items or characters"
IN_WORK_OR_DEADLINE = f"{IN_WORK}|{DEADLINE}"  # whichever comes first on this machine
BIG_LIST = "{% set big = range(1000)|list * 5 %}"  # 5000 items: within the limit of 10 000 characters or items
LOOPS_10K = ("{% for i in range(1000) %}{% for j in range(10) %}", "{% endfor %}{% endfor %}")


def _loop(body: str) -> str:
    return LOOPS_10K[0] + body + LOOPS_10K[1]


def _nest(levels: int, inner: str = "a") -> str:
    """``{% set a = [[...[a]...]] %}`` statements wrapping ``a`` in ``levels`` lists, 10 per statement."""
    return ("{% set a = " + "[" * 10 + inner + "]" * 10 + " %}") * (levels // 10)


# name -> (template of persona 'evil', the limit its message must name)
PROBES: dict[str, tuple[str, str]] = {
    # slow nested loops: 10 000 iterations (the loop limit), each sorting 5000 items
    "slow_nested_loops": (BIG_LIST + _loop("{% if big|sort|unique|list|length %}{% endif %}"), DEADLINE),
    # products of ranges: a million iterations asked for, the loop limit stops them
    "huge_range_product": (
        "{% for a in range(1000) %}{% for b in range(1000) %}{% for c in range(1000) %}{{ '' }}"
        "{% endfor %}{% endfor %}{% endfor %}",
        r"loops ran more than 10000 iterations",
    ),
    "range_product_in_filters": (
        _loop("{% if range(1000)|map('string')|select('in', range(1000)|map('string')|list)|list %}{% endif %}"),
        IN_WORK_OR_DEADLINE,
    ),
    # tojson of a nested value of 4950 numbers with a 9999-space indent: about 150 million characters
    "tojson_indent_nested": (
        "{% set a = range(330)|list %}{% set b = [a, a, a, a, a] %}{{ [b, b, b]|tojson(indent=9999)|length }}",
        r"\|tojson would write more than 10000 characters; pass a smaller indent or a smaller value",
    ),
    "tojson_indent_huge": ("{{ [1]|tojson(indent=10**9) }}", r"\|tojson would write more than 10000 characters"),
    # pprint of 4000 items nested 200 levels deep: pprint.pformat walks the whole value at every level
    "pprint_deep_value": (
        "{% set a = range(1000)|list * 4 %}" + _nest(200) + "{{ a|pprint|length }}",
        r"\|pprint of a value nested more than 100 levels deep",
    ),
    # pprint indents the items of a dict's value by the key's length: 5 keys of 1800 characters
    "pprint_long_keys": (
        "{% set k = 'k' * 1800 %}{% set v = range(400)|list %}{{ {k: {k: {k: {k: {k: v}}}}}|pprint|length }}",
        r"\|pprint would write more than 10000 characters",
    ),
    # string multiplication chains
    "string_multiplication_chain": ("{% set s = 'ab' * 50 %}{{ s * 50 * 50 * 50 * 50 }}", r"`\*` would repeat"),
    "list_literal_of_big_strings": (
        "{% set s = 'x' * 9000 %}{% set w = [s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s] %}{{ w|string|length }}",
        r"a list, tuple or dict written in the template holds more than 10000 characters or items",
    ),
    # macros: 2**22 calls within the call depth; and recursion past the call depth
    "macro_fan_out": (
        "{% macro m(f, n) %}{% if n %}{{ f(f, n - 1) }}{{ f(f, n - 1) }}{% endif %}{% endmacro %}{{ m(m, 22) }}",
        DEADLINE,
    ),
    "macro_deep_recursion": (
        "{% macro m(f, n) %}{% if n %}{{ f(f, n - 1) }}{% endif %}{% endmacro %}{{ m(m, 10000) }}",
        r"calls nested more than 24 deep",
    ),
    # `in` on large containers, in nested loops
    "in_operator_on_big_list": (BIG_LIST + _loop("{% if -1 in big %}{% endif %}"), IN_WORK_OR_DEADLINE),
    "in_test_on_big_string": ("{% set s = 'x' * 9999 %}" + _loop("{% if 'y' is in s %}{% endif %}"), IN_WORK),
    "select_in_big_list": (
        BIG_LIST + "{% for i in range(1000) %}{{ big|select('in', big)|list|length }}{% endfor %}",
        IN_WORK,
    ),
    "comparisons_of_big_lists": (
        BIG_LIST + "{% set other = range(1000)|list * 5 %}"
        + _loop("{% if big == other %}{% endif %}{% if big|select('eq', other)|first %}{% endif %}"),
        IN_WORK,
    ),
}


def _registry(name: str, template: str) -> str:
    """A registry whose persona 'evil' (line 4) has ``template``; a harmless persona before it."""
    return (
        "personas:\n  - name: fine\n    description: Be fine.\n"
        f"  - name: evil\n    description: {json.dumps(template)}\n"
    )


_RUNNER = r'''
import gc, json, resource, signal, sys, time, tracemalloc, traceback
resource.setrlimit(resource.RLIMIT_AS, ({address_space}, {address_space}))
from langchain_persona_judge.errors import PersonaError, PromptTemplateError
from langchain_persona_judge.personas import PersonaRegistry, render_preferences

class ProbeTimeout(BaseException):
    pass

def alarm(signum, frame):
    raise ProbeTimeout()

signal.signal(signal.SIGALRM, alarm)

def probe(name, text):
    start = time.perf_counter()
    signal.setitimer(signal.ITIMER_REAL, {alarm})
    try:
        registry = PersonaRegistry.from_yaml_text(text, f"{{name}}.yaml")
        registry.render("evil")
        outcome = ["no error", ""]
    except PersonaError as exc:
        outcome = ["PersonaError", str(exc)]
    except ProbeTimeout:
        outcome = ["still running after {alarm} s", ""]
    except BaseException as exc:
        outcome = ["raw " + type(exc).__name__, traceback.format_exc()[-2000:]]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    return outcome + [time.perf_counter() - start]

registries = json.loads(sys.stdin.read())
# Times first (tracemalloc slows Python several times over), then each probe again for its peak of memory.
results = {{name: probe(name, text) for name, text in registries.items()}}
tracemalloc.start()
for name, text in registries.items():
    gc.collect()  # what an earlier probe left in reference cycles (tracebacks) does not count here
    tracemalloc.reset_peak()
    probe(name, text)
    results[name].append(tracemalloc.get_traced_memory()[1])
print(json.dumps(results))
'''


@pytest.fixture(scope="module")
def probe_results() -> dict[str, list]:
    """Every probe, run in a subprocess limited to 2 GiB of address space, each under an alarm: once for its
    time, once for its peak of memory."""
    script = _RUNNER.format(address_space=ADDRESS_SPACE, alarm=ALARM_SECONDS)
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    registries = {name: _registry(name, template) for name, (template, _) in PROBES.items()}
    result = subprocess.run(
        [sys.executable, "-c", script], input=json.dumps(registries), capture_output=True, text=True,
        timeout=2 * len(PROBES) * ALARM_SECONDS + 60, cwd=root, env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", sorted(PROBES))
def test_a_slow_or_huge_template_ends_in_a_persona_error_within_2_s_and_256_mb(probe_results, name):
    kind, message, seconds, peak = probe_results[name]
    assert kind == "PersonaError", f"{name}: {kind}\n{message}"
    assert seconds < SECONDS, f"{name} took {seconds:.2f} s"
    assert peak < PEAK_BYTES, f"{name} allocated {peak / 1024**2:.0f} MB at its peak"
    # what went wrong (which persona, which limit) and how to fix it
    assert f"{name}.yaml:4: persona 'evil': template refused" in message, message
    assert re.search(PROBES[name][1], message), message
    assert "within the limits listed in langchain_persona_judge/personas/sandbox.py" in message, message


# -- |tojson's estimate is at least what it writes; |pprint writes what pformat writes, within the limit ----

VALUES = [
    [],
    {},
    "plain",
    "<script>&'quotes'\"</script>",
    "naïve ☃ 𝔸 \x00\t\n" * 3,
    [1, -2, 3.5, True, None, 10**30, -(10**30)],
    {"b": [1, 2, {"c": "d"}], "a": ("x", "y"), "": {}},
    {"k" * 200: {"k" * 200: list(range(50))}},
    "word " * 200,
    ["word " * 60, "x" * 300, {"long key " * 10: "long value " * 20}],
    [[[[[["deep"]]]]]] * 3,
    {1: "one", 2.5: "two", None: "none", False: "false"},
    {"s": {1, 2, 3}, "f": frozenset({"a"}), "b": b"bytes " * 40},
]


@pytest.mark.parametrize("value", VALUES, ids=range(len(VALUES)))
@pytest.mark.parametrize("indent", [None, 0, 2, 7, "--"])
def test_the_tojson_estimate_is_at_least_what_tojson_writes(value, indent):
    try:
        written = len(do_tojson(EvalContext(ENVIRONMENT), value, indent))
    except TypeError:  # not JSON (sets, bytes): tojson refuses it
        return
    assert json_size(value, indent, 10**9) >= written
    assert json_size(value, indent, written - 1) == written  # past the cap: cap + 1


@pytest.mark.parametrize("value", VALUES, ids=range(len(VALUES)))
def test_pprint_writes_what_pformat_writes_within_the_limit(value):
    template = compile_template("{{ value|pprint }}")
    expected = pprint.pformat(value)
    assert render_template(template, {"value": value}, limit=len(expected)) == expected
    with pytest.raises(SecurityError, match=rf"\|pprint would write more than {len(expected) - 1} characters"):
        render_template(template, {"value": value}, limit=len(expected) - 1)


@pytest.mark.parametrize("dump", ["tojson", "pprint"])
def test_tojson_and_pprint_refuse_a_value_nested_past_100_levels(dump):
    deep: list = ["x"]
    for _ in range(99):
        deep = [deep]  # 100 lists, "x" on level 100
    template = compile_template(f"{{{{ value|{dump}|length }}}}")
    assert render_template(template, {"value": deep}) == "203"  # 100 [ and 100 ], "x" between quotes
    with pytest.raises(SecurityError, match=rf"\|{dump} of a value nested more than 100 levels deep"):
        render_template(template, {"value": [deep]})


# -- the clocks: a persona's chain shares one; reading a registry has one too ---------------------------------


def test_a_persona_chain_renders_on_one_clock():
    registry = PersonaRegistry.from_yaml_text(
        "personas:\n  - name: a\n    description: '{{ 1 }} A'\n  - name: b\n    extends: a\n"
        "    description: '{{ parent }} B'\n"
    )
    with shared_clock(10.0) as clock:
        assert registry.render("b") == "1 A B"
    assert 0 < 10.0 - clock.left < 1.0  # both renders ran on this clock
    with shared_clock(0.0), pytest.raises(PersonaError, match=r"persona 'a': .*it ran for more than 0 s"):
        registry.render("b")


def test_a_slow_preference_template_ends_in_a_prompt_template_error_within_2_s():
    # 2**18 macro calls: about 3 s here without the deadline
    fan_out = "{% macro m(f, n) %}{% if n %}{{ f(f, n - 1) }}{{ f(f, n - 1) }}{% endif %}{% endmacro %}{{ m(m, 18) }}"
    start = time.perf_counter()
    with pytest.raises(PromptTemplateError, match=rf"{DEADLINE}.* It receives `system`"):
        render_preferences("system", ["Be kind."], "", fan_out)
    assert time.perf_counter() - start < SECONDS


def test_reading_a_registry_has_a_time_limit(monkeypatch):
    text = "personas:\n  - name: fine\n    description: Be fine.\n"
    assert PersonaRegistry.from_yaml_text(text).render("fine") == "Be fine."
    monkeypatch.setattr(registry_parsing, "MAX_LOAD_SECONDS", -1.0)
    with pytest.raises(PersonaError, match=r"team\.yaml:2: persona 'fine': reading the registry took more than"):
        PersonaRegistry.from_yaml_text(text, "team.yaml")
