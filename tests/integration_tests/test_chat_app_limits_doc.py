"""The chat app README's limits (its Configuration table, and the figures its prose quotes) match the code.

Every row's default is compared with what ``Settings.from_env()`` gives in an environment without the variable
(and with the server's own defaults for PORT, HOST and LOG_LEVEL); every variable the code reads has a row and a
line in settings.py's docstring; the dataclass defaults equal the environment's (but for the sign-up limit, off
in ``Settings()`` on purpose). A default changed on one side only fails here.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

from examples.chat_app import settings
from langchain_persona_judge.serve import connections
from examples.chat_app.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "examples" / "chat_app"
README = APP / "README.md"

FIELDS = {  # variable -> the Settings field it sets
    "CHAT_MAX_BODY_BYTES": "max_body_bytes",
    "CHAT_MAX_MESSAGE_CHARS": "max_message_chars",
    "CHAT_MAX_MESSAGE_TOKENS": "max_message_tokens",
    "CHAT_MAX_CONVERSATIONS": "max_conversations",
    "CHAT_MAX_MESSAGES": "max_messages",
    "CHAT_HEADER_TIMEOUT": "header_timeout",
    "CHAT_MAX_CONNECTIONS": "max_connections",
    "CHAT_SIGNUPS_PER_MINUTE": "signups_per_minute",
    "CHAT_MAX_IN_FLIGHT": "max_in_flight",
    "CHAT_MAX_USERS": "max_users",
    "CHAT_ACCOUNT_IDLE_DAYS": "account_idle_days",
    "CHAT_DOCS": "docs",
    "CHAT_MAX_TOKENS": "max_tokens",
    "CHAT_MAX_TOKENS_CAP": "max_tokens_cap",
    "CHAT_TEMPERATURE": "temperature",
    "CHAT_REPETITION_PENALTY": "repetition_penalty",
    "CHAT_HISTORY": "history",
    "CHAT_REQUEST_TIMEOUT": "request_timeout",
    "MAX_CONCURRENT": "max_concurrent",
    "MAX_QUEUE": "max_queue",
    "CHAT_PRELOAD": "preload",
    "CHAT_PROFILE_MAX_TOKENS": "profile_max_tokens",
    "CHAT_PROFILE_EVERY": "profile_every",
}
SERVER_DEFAULTS = {"PORT": settings.DEFAULT_PORT, "HOST": settings.DEFAULT_HOST,
                   "LOG_LEVEL": settings.DEFAULT_LOG_LEVEL}
NOT_SET = {"CHAT_DATABASE_URL": ("database_url", None), "CHAT_ALLOWED_HOSTS": ("allowed_hosts", ()),
           "CHAT_MODEL": ("model", None), "CHAT_MODEL_URL": ("model_url", None),
           "CHAT_MODEL_API_KEY": ("model_api_key", None)}
"""Rows whose default is a word (unset, none, embedded): the field's value when the variable is not set."""
SPECIAL = {"CHAT_DB", "CHAT_TORCH_THREADS"}  # checked on their own below
DELIBERATELY_DIFFERENT = {"signups_per_minute"}  # Settings(): off, so that tests can sign up freely
OTHER_VARIABLES = {"PERSONA_JUDGE_MODEL", "XDG_DATA_HOME"}  # read by the code, documented with CHAT_MODEL / CHAT_DB


def _table() -> dict[str, tuple[str, str]]:
    """The Configuration table: variable -> (default, meaning), as written."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, tuple[str, str]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        match = re.fullmatch(r"`([A-Z_]+)`", cells[0]) if len(cells) >= 3 else None
        if match:
            assert match.group(1) not in rows, f"{match.group(1)} has two rows"
            rows[match.group(1)] = (cells[1], " | ".join(cells[2:]))
    assert len(rows) > 20, "the README's Configuration table was not found"
    return rows


def _read_by_code() -> set[str]:
    """Every environment variable settings.py and server.py read."""
    names: set[str] = set()
    for module in ("settings.py", "server.py"):
        source = (APP / module).read_text(encoding="utf-8")
        names |= set(re.findall(r"""env_(?:int|float|flag)\(\s*"([A-Z_]+)\"""", source))
        names |= set(re.findall(r"""os\.environ(?:\.get\(|\[)\s*"([A-Z_]+)\"""", source))
    return names


@pytest.fixture
def from_env(monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name in [*_table(), *OTHER_VARIABLES]:
        monkeypatch.delenv(name, raising=False)
    return Settings.from_env()


def _number(cell: str) -> float:
    match = re.fullmatch(r"`(-?[0-9][0-9_.]*)`", cell)
    assert match, f"a default that is not one number: {cell!r}"
    return float(match.group(1))


def test_every_variable_the_code_reads_has_a_row_and_a_docstring_line() -> None:
    rows = _table()
    read = _read_by_code() - OTHER_VARIABLES
    assert read - rows.keys() == set(), "variables read by the code without a row in README's Configuration table"
    assert rows.keys() - read == set(), "rows in README's Configuration table for variables the code never reads"
    docstring = settings.__doc__ or ""
    missing = {name for name in read if not re.search(rf"^    {name}\b", docstring, re.M)}
    assert missing == set(), "variables without a line in settings.py's docstring"
    assert rows.keys() <= {*FIELDS, *SERVER_DEFAULTS, *NOT_SET, *SPECIAL}, "a new row: add it to FIELDS here"


def test_each_rows_default_is_the_codes(from_env: Settings) -> None:
    rows = _table()
    for name, field in FIELDS.items():
        value = getattr(from_env, field)
        documented = _number(rows[name][0])
        assert float(value) == documented, f"{name}: README says {rows[name][0]}, the code's default is {value!r}"
    for name, value in SERVER_DEFAULTS.items():
        assert rows[name][0] == f"`{value}`", f"{name}: README says {rows[name][0]}, the server's default is {value!r}"
    for name, (field, value) in NOT_SET.items():
        assert getattr(from_env, field) == value
    assert str(from_env.db_path).endswith(f"{settings.default_db_path().parent.name}/chat.db")
    assert rows["CHAT_DB"][0].startswith("`$XDG_DATA_HOME/langchain-persona-judge/chat.db`")
    assert rows["CHAT_TORCH_THREADS"][0] == "cores / `MAX_CONCURRENT`"
    assert from_env.torch_threads == max(1, (os.cpu_count() or 1) // from_env.max_concurrent)


def test_the_dataclass_defaults_are_the_environments(from_env: Settings) -> None:
    plain = Settings()
    for field in FIELDS.values():
        if field not in DELIBERATELY_DIFFERENT:
            assert getattr(plain, field) == getattr(from_env, field), f"Settings().{field} != the environment default"


@pytest.mark.parametrize(("row", "quoted"), [
    ("CHAT_SIGNUPS_PER_MINUTE", f"after a burst of {settings.SIGNUP_BURST}"),
    ("CHAT_HEADER_TIMEOUT", f"idle keep-alive connections close after {settings.KEEP_ALIVE_S} s"),
    ("CHAT_MAX_CONNECTIONS", f"the open-files limit less {connections.FD_RESERVE}"),
    ("CHAT_MAX_CONNECTIONS", f"`limit_concurrency` is this + {connections.TASK_SLACK}"),
    ("CHAT_ACCOUNT_IDLE_DAYS", "at most hourly" if settings.SWEEP_EVERY_S == 3600 else "(SWEEP_EVERY_S changed)"),
    ("CHAT_ACCOUNT_IDLE_DAYS", "a use is recorded at most hourly" if settings.TOUCH_EVERY_S == 3600 else "(changed)"),
])
def test_the_figures_a_row_quotes_are_the_codes(row: str, quoted: str) -> None:
    assert quoted in _table()[row][1]


def _import_limits() -> list[Any]:
    from langchain_persona_judge.profiles import files

    return [f"over {files.MAX_WEIGHT:g} in magnitude", f"nested more than {files.MAX_NESTING} deep",
            f"a file over {files.MAX_FILE_BYTES // 1024} KB", f"within {settings.HEALTH_TIMEOUT_S:g} s",
            f"`Retry-After: {settings.RETRY_AFTER_S}`", f"a description over {settings.PREFERENCE_CHARS} characters"]


@pytest.mark.parametrize("quoted", _import_limits())
def test_the_limits_the_api_section_quotes_are_the_codes(quoted: str) -> None:
    assert quoted in README.read_text(encoding="utf-8")
