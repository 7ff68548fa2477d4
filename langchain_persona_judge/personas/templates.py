"""Preference templates, and a persona's copy of a conversation with its preferences in place.

Messages here are plain dicts (``{"role": ..., "content": ...}``), as transformers chat templates take them;
the LangChain adapter converts its messages to this form. Encoding them with the model's chat template is the
runtime's job (:mod:`langchain_persona_judge.runtime.chat_template`). No LangChain, no torch.

A preference template is untrusted input: a ``str`` is always the template text itself (never a file path); a
file is read only where a :class:`pathlib.Path` is passed, and read again when it changes. It renders in the
hardened sandbox of :mod:`.sandbox`; its output may be :data:`~.guards.MAX_TEXT` characters longer than its
inputs (``system`` and the preferences). Every failure raises
:class:`~langchain_persona_judge.errors.PromptTemplateError` naming the template (file, or the persona and its
registry line) and the template line.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from ..errors import PromptTemplateError
from .guards import MAX_TEXT
from .sandbox import MAX_SOURCE, compile_template, describe_error, input_size, render_template, template_line

Message = dict[str, Any]
Layout = Literal["system", "user_turn"]
PreferenceTemplate = str | Path
"""Template text (a ``str``, never a path), or a ``pathlib.Path`` to a template file."""

TEMPLATE_FILES: dict[str, str] = {"system": "preference_system.jinja", "user_turn": "preference_user_turn.jinja"}


@lru_cache(maxsize=2)
def _builtin_source(layout: Layout) -> tuple[str, str]:
    name = TEMPLATE_FILES[layout]
    return resources.files("langchain_persona_judge.prompts").joinpath(name).read_text("utf-8"), name


_files: dict[str, tuple[tuple[int, int, int], str]] = {}  # resolved path -> (mtime_ns, size, inode), text
_files_lock = threading.Lock()


def _file_source(path: Path) -> tuple[str, str]:
    """The text of a template file, read again only when its modification time, size or inode change."""
    path = path.expanduser()
    try:
        resolved = path.resolve()
        st = os.stat(resolved)
    except OSError:
        raise PromptTemplateError(f"Preference template file {path} does not exist; check the path.") from None
    if not path.is_file():
        raise PromptTemplateError(f"Preference template file {path} is not a file; check the path.")
    key = str(resolved)
    signature = (st.st_mtime_ns, st.st_size, st.st_ino)
    with _files_lock:
        cached = _files.get(key)
    if cached is not None and cached[0] == signature:
        return cached[1], str(path)
    if st.st_size > 4 * MAX_SOURCE:  # UTF-8 takes at most 4 bytes a character
        raise PromptTemplateError(
            f"Preference template {path}: the file holds {st.st_size} bytes; a template is at most {MAX_SOURCE} "
            "characters."
        )
    try:
        text = resolved.read_bytes()[: 4 * MAX_SOURCE + 1].decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PromptTemplateError(f"Preference template {path}: cannot read it as UTF-8 text ({exc}).") from exc
    with _files_lock:
        _files[key] = (signature, text)
    return text, str(path)


def _template_source(layout: Layout, template: PreferenceTemplate | None) -> tuple[str, str]:
    """(source, where) of the template: the built-in one for the layout, a file (a ``Path``), or text."""
    if template is None:
        return _builtin_source(layout)
    if isinstance(template, Path):
        return _file_source(template)
    if isinstance(template, str):
        return template, getattr(template, "origin", None) or "<inline preference template>"
    raise PromptTemplateError(
        f"A preference template is template text (a str) or a pathlib.Path to a file, not {type(template).__name__}."
    )


def render_preferences(
    layout: Layout, preferences: Sequence[str], system: str = "", template: PreferenceTemplate | None = None
) -> str:
    """Render the text that carries ``preferences`` (a system turn or a user turn, by ``layout``)."""
    source, where = _template_source(layout, template)
    preferences = list(preferences)
    try:
        compiled = compile_template(source)
        text = render_template(
            compiled, {"system": system, "preferences": preferences}, MAX_TEXT + input_size(system, preferences)
        )
    except Exception as exc:  # whatever a hostile template raises is a PromptTemplateError
        line = template_line(exc)
        at = f" (its line {line})" if line else ""
        raise PromptTemplateError(
            f"Preference template {where}{at} failed: {describe_error(exc)}. It receives `system` (text) and "
            "`preferences` (a list of texts)."
        ) from exc
    return text.strip()


def persona_messages(
    messages: Sequence[Message],
    preferences: Sequence[str],
    *,
    layout: Layout = "system",
    template: PreferenceTemplate | None = None,
) -> list[Message]:
    """One persona's copy of the conversation, with its ``preferences`` placed by ``layout``.

    ``system``: the preferences join the system turn (the user's own system messages come first in it).
    ``user_turn``: the paper's code layout, the preferences as a user turn before the conversation.
    With no preferences the conversation is returned unchanged. ``template``: template text (a ``str``), a
    ``pathlib.Path`` to a template file, or None for the built-in one.
    """
    if not preferences:
        return [dict(m) for m in messages]
    if layout == "user_turn":
        first = next((i for i, m in enumerate(messages) if m["role"] != "system"), len(messages))
        turn = {"role": "user", "content": render_preferences(layout, preferences, template=template)}
        return [dict(m) for m in messages[:first]] + [turn] + [dict(m) for m in messages[first:]]
    if layout != "system":
        raise PromptTemplateError(f"preference_layout={layout!r} is unknown; use 'system' or 'user_turn'.")
    system = "\n\n".join(str(m["content"]) for m in messages if m["role"] == "system")
    rest = [dict(m) for m in messages if m["role"] != "system"]
    return [{"role": "system", "content": render_preferences(layout, preferences, system, template)}, *rest]


def reference_messages(
    messages: Sequence[Message],
    negative: str | None = None,
    *,
    layout: Layout = "system",
    template: PreferenceTemplate | None = None,
) -> list[Message]:
    """The conversation that guidance measures each persona against: the personas' own frame, with the
    ``negative`` preference (or none) where theirs would be.

    In the ``system`` layout the system turn is rendered by the same template as the personas' (so with no
    system message of the user's it opens "You are a helpful AI assistant." like theirs, not with the chat
    template's own default), and only the preference differs.
    """
    if layout == "system":
        system = "\n\n".join(str(m["content"]) for m in messages if m["role"] == "system")
        rest = [dict(m) for m in messages if m["role"] != "system"]
        content = render_preferences(layout, [negative] if negative else [], system, template)
        return [{"role": "system", "content": content}, *rest]
    return persona_messages(messages, [negative] if negative else [], layout=layout, template=template)

