"""``persona-judge personas``: list the persona registry, or render one persona.

    persona-judge personas [--registry FILE] [--tag TAG]
    persona-judge personas show NAME [--registry FILE] [--var KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import textwrap
from collections.abc import Sequence
from typing import IO

from ..errors import InvalidOptionError

EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="persona-judge personas",
        description="List the built-in personas (plus a registry file's), or render one with `show NAME`.",
        epilog="examples:\n  persona-judge personas\n  persona-judge personas --registry examples/personas.yaml\n"
        "  persona-judge personas show expert --var field=biology",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("action", nargs="?", choices=["list", "show"], default="list")
    parser.add_argument("name", nargs="?", help="the persona to render (with `show`)")
    parser.add_argument("--registry", metavar="FILE", help="a YAML registry file or folder, merged over the built-ins")
    parser.add_argument("--tag", help="list only personas with this tag")
    parser.add_argument(
        "--var", action="append", default=[], metavar="KEY=VALUE", help="a template variable for `show` (repeatable)"
    )
    return parser


def _variables(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InvalidOptionError(f"--var {pair!r} is not KEY=VALUE")
        out[key.strip()] = value
    return out


def run(argv: Sequence[str], stdout: IO[str] | None = None, stderr: IO[str] | None = None) -> int:
    from ..personas import PersonaError, load_registry

    stdout, stderr = stdout or sys.stdout, stderr or sys.stderr
    args = _parser().parse_args(list(argv))
    try:
        registry = load_registry(args.registry)
        if args.action == "show":
            if not args.name:
                raise InvalidOptionError("`show` needs a persona name, e.g. `persona-judge personas show expert`")
            persona = registry.get(args.name)
            variables = _variables(args.var)
            known = registry.variables_used(args.name)
            unknown = sorted(set(variables) - known)
            if unknown:
                raise InvalidOptionError(
                    f"persona {args.name!r} has no variable(s) {', '.join(unknown)}; its variables are "
                    f"{', '.join(sorted(known)) or 'none'}"
                )
            text = registry.render(args.name, **variables)
            print(text, file=stdout)
            details = [f"name: {persona.name}"]
            if persona.extends:
                details.append(f"extends: {persona.extends}")
            if persona.variables:
                details.append("variables: " + ", ".join(f"{k}={v!r}" for k, v in persona.variables.items()))
            if tags := registry.tags(args.name):
                details.append("tags: " + ", ".join(tags))
            if persona.source:
                details.append(f"defined in: {persona.source}")
            print("\n".join(f"  {d}" for d in details), file=stderr)
            return 0
        width = shutil.get_terminal_size((100, 20)).columns
        rows = [p for p in registry if not args.tag or args.tag in registry.tags(p.name)]
        name_w = max([len(p.name) for p in rows] + [4])
        for persona in rows:
            try:
                text = registry.render(persona.name)
            except PersonaError:
                text = persona.description or ""  # needs variables: show the template itself
            line = textwrap.shorten(text, width=max(30, width - name_w - 3), placeholder="…")
            print(f"{persona.name:<{name_w}}  {line}", file=stdout)
        print(f"{len(rows)} personas; use them with -p NAME, render one with `persona-judge personas show NAME`.",
              file=stderr)
        return 0
    except (PersonaError, ValueError) as exc:
        print(f"persona-judge personas: error: {exc}", file=stderr)
        return EXIT_USAGE
