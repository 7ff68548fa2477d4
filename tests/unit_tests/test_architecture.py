"""The package's shape: the layer contract, no import cycles, the public surface and the error hierarchy."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

import langchain_persona_judge as pkg
from langchain_persona_judge import errors

ROOT = Path(__file__).resolve().parents[2]

PUBLIC = [
    "ChatPersonaJudge",
    "ContextLengthError",
    "DecodingError",
    "DecodingOptions",
    "DecodingStats",
    "Generation",
    "GrammarError",
    "GrammarNotInstalledError",
    "InvalidArgumentError",
    "InvalidInputError",
    "InvalidOptionError",
    "ModelLoadError",
    "OutOfMemoryError",
    "Persona",
    "PersonaError",
    "PersonaJudgeError",
    "PersonaJudgeLLM",
    "PersonaJudgeTool",
    "PersonaRegistry",
    "PreferenceLearner",
    "PreferenceProfile",
    "ProfileError",
    "PromptTemplateError",
    "QueueFullError",
    "RequestTimeoutError",
    "RequestTooLargeError",
    "TokenConstraint",
    "TraceEntry",
    "UnknownPersonaError",
    "display_name",
    "generate",
    "learn_from_texts",
    "learn_profile",
    "load_model",
    "load_registry",
    "persona_chat_prompt",
    "prepack_linear_weights",
    "profile_from_description",
    "release_model",
    "shared_model",
    "stream",
    "unpack_linear_weights",
]


def test_the_public_names_are_pinned_and_all_import() -> None:
    assert pkg.__all__ == PUBLIC
    for name in PUBLIC:
        assert getattr(pkg, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        pkg.nope  # noqa: B018


# Each public error, the built-ins it has always subclassed (so `except ValueError:` callers keep working).
BUILTINS = {
    "DecodingError": (RuntimeError,),
    "PersonaError": (ValueError,),
    "UnknownPersonaError": (ValueError, KeyError),
    "PromptTemplateError": (ValueError,),
    "GrammarNotInstalledError": (ImportError,),
    "GrammarError": (ValueError,),
    "InvalidOptionError": (ValueError,),
    "ModelLoadError": (RuntimeError,),
    "QueueFullError": (RuntimeError,),
    "RequestTimeoutError": (RuntimeError, TimeoutError),
    "ContextLengthError": (RuntimeError, ValueError),
    "OutOfMemoryError": (RuntimeError, MemoryError),
    "ProfileError": (ValueError,),
    "InvalidOptionError": (ValueError,),
    "InvalidArgumentError": (TypeError,),
    "InvalidInputError": (ValueError,),
    "RequestTooLargeError": (ValueError,),
}


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_every_error_has_one_root_and_keeps_its_builtins(name: str) -> None:
    error = getattr(errors, name)
    assert issubclass(error, errors.PersonaJudgeError)
    assert all(issubclass(error, builtin) for builtin in BUILTINS[name])
    assert getattr(pkg, name) is error


def test_every_exception_class_in_the_package_is_a_public_error() -> None:
    """No module defines an exception of its own outside errors.py (the CLI's usage error and the server's HTTP
    error, the L4 forms errors take for a person or a client, aside)."""
    graph = grimp.build_graph("langchain_persona_judge")
    offenders = []
    for module in sorted(graph.modules):
        path = ROOT / (module.replace(".", "/") + ".py")
        if not path.is_file():
            path = ROOT / module.replace(".", "/") / "__init__.py"
        if module in ("langchain_persona_judge.errors", "langchain_persona_judge.cli.ask",
                      "langchain_persona_judge.serve.errors"):
            continue
        for line in path.read_text().splitlines():
            if line.startswith("class ") and ("Error(" in line or "Exception)" in line):
                offenders.append(f"{module}: {line}")
    assert offenders == []
    assert set(errors.__all__) <= set(PUBLIC)


BARE_BUILTINS = {"ValueError", "TypeError", "RuntimeError", "KeyError"}
def _bare_raises(source: str) -> list[str]:
    """Each ``raise ValueError(...)`` (or TypeError, RuntimeError, KeyError) of the built-in itself in ``source``.

    ``raise``, ``raise exc`` of a caught exception and ``raise SomeError(...) from exc`` of a package error pass.
    """
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Raise) and node.exc is not None:
            exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            if isinstance(exc, ast.Name) and exc.id in BARE_BUILTINS:
                found.append(f"line {node.lineno}: raise {exc.id}")
    return found


def test_every_deliberate_raise_is_a_package_error() -> None:
    """The README promises that every error the package raises on purpose derives from PersonaJudgeError."""
    package = ROOT / "langchain_persona_judge"
    offenders = []
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package).as_posix()
        offenders += [f"{relative} {where}" for where in _bare_raises(path.read_text())]
    assert offenders == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("def f(x):\n    if x:\n        raise ValueError(f'bad {x}')\n", ["line 3: raise ValueError"]),
        ("raise TypeError\n", ["line 1: raise TypeError"]),
        ("try:\n    pass\nexcept KeyError as exc:\n    raise RuntimeError('no') from exc\n",
         ["line 4: raise RuntimeError"]),
        ("try:\n    pass\nexcept ValueError as exc:\n    raise\n", []),
        ("try:\n    pass\nexcept ValueError as exc:\n    raise exc\n", []),
        ("raise InvalidOptionError('bad')\n", []),
    ],
)
def test_a_bare_raise_would_be_found(source: str, expected: list[str]) -> None:
    assert _bare_raises(source) == expected


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return found


def test_no_import_cycles() -> None:
    graph = grimp.build_graph("langchain_persona_judge", exclude_type_checking_imports=True)
    assert _cycles(graph) == []


def test_a_cycle_would_be_found() -> None:
    graph = grimp.build_graph("langchain_persona_judge", exclude_type_checking_imports=True)
    graph.add_import(importer="langchain_persona_judge.errors", imported="langchain_persona_judge.chat_models")
    assert _cycles(graph)


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert lint, "import-linter is not installed (it is in the dev extra)"
    return subprocess.run([lint, "--no-cache"], cwd=root, capture_output=True, text=True, timeout=120)


def test_the_layer_contract_holds() -> None:
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("decoding/options.py", "import langchain_core.messages", "Only the LangChain adapters import LangChain"),
        ("decoding/options.py", "from ..personas import registry", "Layers import only downward"),
        ("runtime/models.py", "from .. import chat_models", "Layers import only downward"),
    ],
)
def test_the_layer_contract_can_fail(tmp_path: Path, module: str, line: str, contract: str) -> None:
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "langchain_persona_judge", copy / "langchain_persona_judge")
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    target = copy / "langchain_persona_judge" / module
    target.write_text(target.read_text() + f"\n{line}\n")
    result = subprocess.run(
        [shutil.which("lint-imports", path=str(Path(sys.executable).parent)), "--no-cache"],
        cwd=copy, capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(copy), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode != 0
    assert f"{contract}" in result.stdout and "BROKEN" in result.stdout


def _test_module_imports(source: str) -> list[str]:
    """The ``tests.unit_tests``/``tests.integration_tests`` modules that ``source`` imports."""
    found = []
    for node in ast.walk(ast.parse(source)):
        names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        names += [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
        found += [n for n in names if n.startswith(("tests.unit_tests", "tests.integration_tests"))]
    return found


def test_no_test_module_imports_another() -> None:
    """Shared test code lives in tests/helpers or in fixtures: a test module imported by another runs its
    module-level set-up twice and ties the two files together."""
    offenders = {
        path.relative_to(ROOT).as_posix(): imported
        for path in sorted((ROOT / "tests").rglob("*.py"))
        if (imported := _test_module_imports(path.read_text()))
    }
    assert offenders == {}
    assert _test_module_imports("from tests.integration_tests.test_chat_app import LiveServer\n")
