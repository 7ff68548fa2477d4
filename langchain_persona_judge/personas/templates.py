"""Preference templates, and a persona's copy of a conversation with its preferences in place.

Messages here are plain dicts (``{"role": ..., "content": ...}``), as transformers chat templates take them;
the LangChain adapter converts its messages to this form. Encoding them with the model's chat template is the
runtime's job (:mod:`langchain_persona_judge.runtime.chat_template`). No LangChain, no torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ..errors import PromptTemplateError

Message = dict[str, Any]
Layout = Literal["system", "user_turn"]

TEMPLATE_FILES: dict[str, str] = {"system": "preference_system.jinja", "user_turn": "preference_user_turn.jinja"}

_ENV = ImmutableSandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=False, autoescape=False)


@lru_cache(maxsize=32)
def _template_source(layout: Layout, template: str | None) -> tuple[str, str]:
    """(source, where) of the template: a custom file or text, or the built-in one for the layout."""
    if template is None:
        name = TEMPLATE_FILES[layout]
        return resources.files("langchain_persona_judge.prompts").joinpath(name).read_text("utf-8"), name
    if "{{" not in template and "{%" not in template:  # no Jinja syntax: a file path
        path = Path(template).expanduser()
        if not path.is_file():
            raise PromptTemplateError(f"Preference template file {path} does not exist; check the path.")
        return path.read_text("utf-8"), str(path)
    return template, "<inline preference template>"


def render_preferences(layout: Layout, preferences: Sequence[str], system: str = "", template: str | None = None) -> str:
    """Render the text that carries ``preferences`` (a system turn or a user turn, by ``layout``)."""
    source, where = _template_source(layout, template)
    try:
        return _ENV.from_string(source).render(system=system, preferences=list(preferences)).strip()
    except TemplateError as exc:
        raise PromptTemplateError(
            f"Preference template {where} failed to render: {exc}. It receives `system` (text) and "
            "`preferences` (a list of texts)."
        ) from exc


def persona_messages(
    messages: Sequence[Message],
    preferences: Sequence[str],
    *,
    layout: Layout = "system",
    template: str | None = None,
) -> list[Message]:
    """One persona's copy of the conversation, with its ``preferences`` placed by ``layout``.

    ``system``: the preferences join the system turn (the user's own system messages come first in it).
    ``user_turn``: the paper's code layout, the preferences as a user turn before the conversation.
    With no preferences the conversation is returned unchanged.
    """
    if not preferences:
        return [dict(m) for m in messages]
    if layout == "user_turn":
        first = next((i for i, m in enumerate(messages) if m["role"] != "system"), len(messages))
        turn = {"role": "user", "content": render_preferences(layout, preferences, template=template)}
        return [dict(m) for m in messages[:first]] + [turn] + [dict(m) for m in messages[first:]]
    if layout != "system":
        raise ValueError(f"preference_layout={layout!r} is unknown; use 'system' or 'user_turn'.")
    system = "\n\n".join(str(m["content"]) for m in messages if m["role"] == "system")
    rest = [dict(m) for m in messages if m["role"] != "system"]
    return [{"role": "system", "content": render_preferences(layout, preferences, system, template)}, *rest]
