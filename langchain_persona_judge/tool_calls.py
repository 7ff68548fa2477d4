"""Parsing tool calls out of the decoded text: whole (:func:`parse_tool_calls`) and as a stream
(:class:`ToolCallParser`, :func:`tool_call_chunks`). A block that is not a valid call of a bound tool becomes an
``InvalidToolCall`` saying why, never dropped. The call format is :mod:`.tools`'.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from typing import Any

from langchain_core.messages import AIMessageChunk, ToolCall
from langchain_core.messages.tool import InvalidToolCall, invalid_tool_call, tool_call, tool_call_chunk
from langchain_core.outputs import ChatGenerationChunk

from .output_spec import OutputSpec
from .tools import TOOL_CALL_CLOSE, TOOL_CALL_OPEN, new_tool_call_id, tool_names

_NAME = re.compile(r'"name"\s*:\s*"((?:[^"\\]|\\.)*)"')


class ToolCallParser:
    """Splits decoded text, fed piece by piece, into free text and parsed tool calls.

    ``feed`` returns what is decided so far: text outside ``<tool_call>`` blocks (whitespace around a block
    dropped, save one run between two texts; anything that may still be the start of a block held back), and
    each block once it closes, as a
    ``ToolCall`` or an ``InvalidToolCall`` (never dropped). ``finish`` flushes the rest; a block still open
    there was cut short (``max_tokens`` or a stop string) and is an invalid call.
    """

    def __init__(self, names: Iterable[str] | None = None) -> None:
        self.names = list(names) if names is not None else None
        self._buffer = ""
        self._in_call = False
        self._space = ""  # trailing whitespace held back: kept only if more text follows
        self._after_call = False
        self.calls = 0
        """Blocks parsed so far, valid or not."""

    def feed(self, text: str) -> list[str | ToolCall | InvalidToolCall]:
        self._buffer += text
        out: list[str | ToolCall | InvalidToolCall] = []
        while True:
            if self._in_call:
                end = self._buffer.find(TOOL_CALL_CLOSE)
                if end < 0:
                    return out
                out.append(self._parse(self._buffer[:end]))
                self._buffer = self._buffer[end + len(TOOL_CALL_CLOSE) :]
                self._in_call = False
                self._after_call = True
                continue
            start = self._buffer.find(TOOL_CALL_OPEN)
            if start >= 0:
                self._text(self._buffer[:start], out)  # its trailing whitespace waits: text may follow the call
                self._buffer = self._buffer[start + len(TOOL_CALL_OPEN) :]
                self._in_call = True
                continue
            keep = _partial_suffix(self._buffer, TOOL_CALL_OPEN)
            ready, self._buffer = self._buffer[: len(self._buffer) - keep], self._buffer[len(self._buffer) - keep :]
            self._text(ready, out)
            return out

    def finish(self, reason: str | None = None) -> list[str | ToolCall | InvalidToolCall]:
        out: list[str | ToolCall | InvalidToolCall] = []
        if self._in_call:
            self.calls += 1
            why = f" (finish_reason={reason!r})" if reason else ""
            out.append(
                invalid_tool_call(
                    name=_name_of(self._buffer), args=TOOL_CALL_OPEN + self._buffer, id=new_tool_call_id(),
                    error=f"The answer ended before this tool call was complete{why}; raise max_tokens.",
                )
            )
        else:
            self._text(self._buffer, out)
            if self._space and not self.calls:
                out.append(self._space)
        self._buffer, self._in_call, self._space, self._after_call = "", False, "", False
        return out

    def _text(self, text: str, out: list[Any]) -> None:
        if self._after_call:  # whitespace right after a block belongs to the call format, not the answer
            text = text.lstrip()
            self._after_call = not text
        body = text.rstrip()
        if body:
            out.append(self._space + body)
            self._space = ""
        self._space += text[len(body) :]

    def _parse(self, body: str) -> ToolCall | InvalidToolCall:
        self.calls += 1
        raw = f"{TOOL_CALL_OPEN}{body}{TOOL_CALL_CLOSE}"
        call_id = new_tool_call_id()

        def invalid(error: str, name: str | None = None) -> InvalidToolCall:
            return invalid_tool_call(name=name or _name_of(body), args=raw, id=call_id, error=error)

        try:
            data = json.loads(body)
        except json.JSONDecodeError as exc:
            return invalid(f"The tool call is not valid JSON: {exc}.")
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            return invalid('The tool call must be a JSON object with a "name" and "arguments".')
        name = data["name"]
        args = data.get("arguments", data.get("parameters", {}))
        if isinstance(args, str):  # some models write the arguments as a JSON string
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                pass
        if not isinstance(args, dict):
            return invalid(f"The arguments of {name!r} must be a JSON object.", name)
        if self.names is not None and name not in self.names:
            bound = ", ".join(repr(n) for n in self.names)
            return invalid(f"{name!r} is not a bound tool; the bound tools are {bound}.", name)
        return tool_call(name=name, args=args, id=call_id)


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag``."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:size]):
            return size
    return 0


def _name_of(body: str) -> str | None:
    match = _NAME.search(body)
    return match.group(1) if match else None


def parse_tool_calls(
    text: str, names: Iterable[str] | None = None
) -> tuple[str, list[ToolCall], list[InvalidToolCall]]:
    """(free text, tool calls, invalid tool calls) of a whole answer."""
    parser = ToolCallParser(names)
    pieces = parser.feed(text) + parser.finish()
    content = "".join(p for p in pieces if isinstance(p, str))
    calls = [p for p in pieces if isinstance(p, dict) and p.get("type") == "tool_call"]
    invalid = [p for p in pieces if isinstance(p, dict) and p.get("type") == "invalid_tool_call"]
    return content, calls, invalid  # type: ignore[return-value]


def tool_call_chunks(
    chunks: Iterator[ChatGenerationChunk], spec: OutputSpec | None, finish_reason: Any = None
) -> Iterator[ChatGenerationChunk]:
    """Text chunks -> chunks of free text and of whole tool calls (``tool_call_chunks``, one per call).

    Invalid calls come as chunks with ``invalid_tool_calls`` and the raw text of the call as their ``args``.
    ``finish_reason`` (a callable) says why decoding ended, for the message of a call cut short.
    """
    if spec is None or not spec.parses_tool_calls:
        yield from chunks
        return
    parser = ToolCallParser(tool_names(spec.tools))
    index = 0

    def emit(pieces: list[str | ToolCall | InvalidToolCall]) -> Iterator[ChatGenerationChunk]:
        nonlocal index
        for piece in pieces:
            if isinstance(piece, str):
                yield ChatGenerationChunk(message=AIMessageChunk(content=piece))
            elif piece.get("type") == "tool_call":
                args = json.dumps(piece["args"], ensure_ascii=False)
                chunk = tool_call_chunk(name=piece["name"], args=args, id=piece["id"], index=index)
                index += 1
                yield ChatGenerationChunk(message=AIMessageChunk(content="", tool_call_chunks=[chunk]))
            else:
                yield ChatGenerationChunk(message=AIMessageChunk(content="", invalid_tool_calls=[piece]))

    for chunk in chunks:
        yield from emit(parser.feed(chunk.text))
    yield from emit(parser.finish(finish_reason() if callable(finish_reason) else finish_reason))


__all__ = ["ToolCallParser", "parse_tool_calls", "tool_call_chunks"]
