"""`persona-judge personas`: listing and rendering the registry from the command line (no model needed)."""

from __future__ import annotations

from langchain_persona_judge.cli import main


def test_lists_the_builtins(capsys):
    assert main(["personas"]) == 0
    out = capsys.readouterr().out
    names = [line.split()[0] for line in out.splitlines()]
    assert {"elementary", "expert", "concise", "friendly", "humor", "helpful"} <= set(names)


def test_lists_a_registry_file_merged_over_builtins_and_filters_by_tag(capsys):
    assert main(["personas", "--registry", "examples/personas.yaml", "--tag", "expertise"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert "biologist" in names and "expert" in names and "pirate" not in names


def test_show_renders_with_variables(capsys):
    assert main(["personas", "show", "expert", "--var", "field=geology"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == "Generate a response that only a PhD Student in geology could understand."
    assert "name: expert" in captured.err


def test_show_unknown_persona_is_a_one_line_error(capsys):
    assert main(["personas", "show", "elementry"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Did you mean 'elementary'?" in err[0]


def test_bad_registry_and_bad_var_are_one_line_errors(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("personas:\n  - name: a\n    description: x: y\n")
    assert main(["personas", "--registry", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{bad}:3: invalid YAML" in err[0]
    assert main(["personas", "show", "expert", "--var", "novalue"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
