"""Grammar-constrained decoding: JSON schemas and tool-call formats as engine ``TokenConstraint``s.

A :class:`Grammar` is a hashable description (a JSON schema, or an xgrammar *structural tag* for tool calls)
that needs no grammar library to build; :func:`constraint_for` compiles it for a tokenizer (compiled grammars
are cached per tokenizer, vocabulary size and stop tokens) and returns a fresh :class:`GrammarConstraint`,
which the engine applies identically to the drafter's and the judge's distribution at every position, so
Persona-judge's exactness carries over to the constrained distribution.

The grammar engine is `xgrammar <https://github.com/mlc-ai/xgrammar>`_ (an optional dependency:
``pip install 'langchain-persona-judge[grammar]'``), imported only when a grammar is compiled.

Why xgrammar rather than llguidance (both maintained, both used by vLLM and SGLang; compared with the SmolLM2
tokenizer walking a JSON answer, ``python -m benchmarks.constrained --sections engines``; figures:
``benchmarks/README.md``):

* token masks: xgrammar's cost several times less per position (it precomputes the context-independent part
  of each mask at compile time; llguidance computes them on the fly, the first one slowest). Persona-judge asks
  for λ + 1 masks per iteration, and on a GPU a small model's forward is short, so the difference matters there;
* structural tags (free text *or* ``<tool_call>`` blocks constrained to each tool's schema; exactly one call;
  calls separated by a newline) are a first-class, declarative xgrammar format, the one vLLM and SGLang use for
  ``tool_choice``; llguidance expresses them as hand-written Lark grammars with lazy lexemes;
* rollback of rejected drafts is unlimited and cheap in both; compiling a schema is quick in both.

Against xgrammar: on Linux x86-64 it depends on ``triton`` (a large install), where llguidance has no
dependencies at all (a small one). The adapter below is one small class, should that trade-off change.
"""

from __future__ import annotations

import json
import threading
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from types import ModuleType
from typing import Any, Literal

import numpy as np
import torch

from .errors import DecodingError, GrammarError, GrammarNotInstalledError

GRAMMAR_INSTALL = "pip install 'langchain-persona-judge[grammar]'"

GrammarKind = Literal["json_schema", "structural_tag"]


def require_xgrammar() -> ModuleType:
    """Import xgrammar, or explain how to install it."""
    try:
        import xgrammar
    except ImportError as exc:
        raise GrammarNotInstalledError(
            "Constrained decoding (tool_choice='any' or a tool name, with_structured_output, JSON mode) needs the "
            f"xgrammar grammar engine; install it with `{GRAMMAR_INSTALL}`."
        ) from exc
    return xgrammar


def grammar_available() -> bool:
    """Whether the grammar engine can be imported (without raising)."""
    try:
        require_xgrammar()
    except GrammarNotInstalledError:
        return False
    return True


@dataclass(frozen=True)
class Grammar:
    """What a constrained answer must match: a JSON schema, or an xgrammar structural tag.

    ``source`` is the JSON text; keys keep their order (a schema's property order is the order the answer
    writes them in), so equal grammars built the same way hash equally and share compiled forms.
    """

    kind: GrammarKind
    source: str

    @classmethod
    def json_schema(cls, schema: dict[str, Any] | bool) -> Grammar:
        """The answer is one JSON value that validates against ``schema``."""
        return cls("json_schema", json.dumps(schema, ensure_ascii=False))

    @classmethod
    def json_object(cls) -> Grammar:
        """The answer is any JSON object (JSON mode)."""
        return cls.json_schema({"type": "object"})

    @classmethod
    def structural_tag(cls, fmt: dict[str, Any]) -> Grammar:
        """An xgrammar structural tag, given as its ``format`` dict (plain JSON: no import needed to build it)."""
        return cls("structural_tag", json.dumps({"type": "structural_tag", "format": fmt}, ensure_ascii=False))

    @cached_property
    def value(self) -> Any:
        """The parsed JSON."""
        return json.loads(self.source)


# JSON is written with fixed separators (", " and ": ", as json.dumps): no whitespace runs for a small model to
# get lost in, and the grammar's forced text (keys, separators) is known ahead, so the budget guard's closing
# path tokenizes naturally.
_JSON_STYLE: dict[str, Any] = {"any_whitespace": False, "strict_mode": True}


def _fixed_whitespace(xgr: ModuleType, node: Any) -> Any:
    """A structural tag with each JSON-schema part replaced by its fixed-whitespace grammar (structural tags'
    own JSON formats allow any whitespace)."""
    if isinstance(node, list):
        return [_fixed_whitespace(xgr, item) for item in node]
    if not isinstance(node, dict):
        return node
    if node.get("type") == "json_schema" and "json_schema" in node:
        schema = json.dumps(node["json_schema"], ensure_ascii=False)
        return {"type": "grammar", "grammar": str(xgr.Grammar.from_json_schema(schema, **_JSON_STYLE))}
    return {key: _fixed_whitespace(xgr, value) for key, value in node.items()}


class _Compiler:
    """One xgrammar compiler per (tokenizer, vocabulary size, stop tokens); it caches compiled grammars."""

    def __init__(self, xgr: ModuleType, tokenizer: Any, vocab_size: int, stop_ids: tuple[int, ...]) -> None:
        self.info = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=list(stop_ids)
        )
        # One thread: these machines are small and shared, and a schema compiles in milliseconds anyway.
        self.compiler = xgr.GrammarCompiler(self.info, max_threads=1, cache_enabled=True)
        self.stop_ids = stop_ids
        self.vocab_size = vocab_size
        self.tokenizer = weakref.ref(tokenizer)  # a strong reference would keep the weak-keyed cache entry alive
        self.xgr = xgr
        self.lock = threading.Lock()

    def compile(self, grammar: Grammar) -> Any:
        with self.lock:
            try:
                if grammar.kind == "json_schema":
                    return self.compiler.compile_json_schema(grammar.source, **_JSON_STYLE)
                tag = _fixed_whitespace(self.xgr, grammar.value)
                return self.compiler.compile_structural_tag(json.dumps(tag, ensure_ascii=False))
            except (RuntimeError, ValueError) as exc:
                raise GrammarError(f"The grammar engine cannot compile this {grammar.kind}: {exc}") from exc

    @cached_property
    def token_classes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per token id: how many closing characters it is made of (``"``, ``}``, ``]``; 0 if it has others),
        whether it is a bare separator (``,`` or ``:``), and its length in bytes (huge for empty/special ones)."""
        vocab = self.info.decoded_vocab
        closers = np.zeros(self.vocab_size, dtype=np.int32)
        separator = np.zeros(self.vocab_size, dtype=bool)
        length = np.full(self.vocab_size, 1 << 20, dtype=np.int32)
        special = set(self.info.special_token_ids)
        for token_id, raw in enumerate(vocab[: self.vocab_size]):
            if not raw or token_id in special:
                continue
            length[token_id] = len(raw)
            body = raw.strip()
            if body and not body.strip(b'"}]'):
                closers[token_id] = len(body)
            elif body in (b",", b":"):
                separator[token_id] = True
        return closers, separator, length


# Tokenizers are weakly keyed so a discarded tokenizer frees its compiler (tokenizer info holds the whole vocab).
_COMPILERS: weakref.WeakKeyDictionary[Any, dict[tuple[int, tuple[int, ...]], _Compiler]] = weakref.WeakKeyDictionary()
_COMPILERS_LOCK = threading.Lock()


def _compiler(tokenizer: Any, vocab_size: int, stop_ids: tuple[int, ...]) -> _Compiler:
    xgr = require_xgrammar()
    key = (vocab_size, stop_ids)
    with _COMPILERS_LOCK:
        per_tokenizer = _COMPILERS.setdefault(tokenizer, {})
        if key not in per_tokenizer:
            per_tokenizer[key] = _Compiler(xgr, tokenizer, vocab_size, stop_ids)
        return per_tokenizer[key]


def compile_grammar(tokenizer: Any, grammar: Grammar, *, vocab_size: int, stop_token_ids: Iterable[int]) -> Any:
    """The xgrammar ``CompiledGrammar`` of ``grammar`` for this tokenizer (cached)."""
    return _compiler(tokenizer, vocab_size, tuple(sorted(set(stop_token_ids)))).compile(grammar)


class GrammarConstraint:
    """A :class:`~langchain_persona_judge.decoding.TokenConstraint` that follows one compiled grammar.

    ``allowed()`` is the grammar's mask for the next token (once the grammar is complete, the stop tokens
    are allowed too: only them when nothing may follow); ``advance`` consumes a token; ``rollback`` undoes
    rejected drafts.

    Budget guard: with ``budget`` (the most tokens the answer may have), the constraint keeps the answer
    completable. Near the end of the budget it works out a short way to finish the grammar from the current
    state (the grammar's forced text, then closing quotes and brackets, separators, else the shortest allowed
    token) and, once the tokens left are no more than that path plus ``margin``, allows only the path's next
    token. So a model that rambles inside a JSON string still ends with a complete document instead of one cut
    off by ``max_tokens``. Drafter and judge get the same (single-token) mask, so decoding stays exact with
    respect to the restricted distribution. The guard assumes one free token lengthens the closing path by at
    most ``margin`` tokens (true of flat schemas and tool calls; a token that opens an optional nested object
    with many required fields can exceed it), and it needs a budget of at least the shortest document.
    """

    # Only look for the closing path when this few tokens (beyond the margin) are left: it costs a few masks.
    WATCH = 48
    MAX_PATH = 256

    def __init__(self, compiled: Any, compiler: _Compiler, *, budget: int | None = None, margin: int = 8) -> None:
        xgr = require_xgrammar()
        self.matcher = xgr.GrammarMatcher(compiled)
        self.compiler = compiler
        self.vocab_size = compiler.vocab_size
        self.budget = budget
        self._bitmask = xgr.allocate_token_bitmask(1, self.vocab_size)
        self.steps = 0
        """Tokens consumed and not rolled back."""
        self.forced = 0
        """Positions at which the budget guard allowed a single token (over the whole run)."""
        self.margin = margin
        """Slack for one free token that lengthens the closing path (opening a string, an optional key...)."""

    def _mask_np(self) -> np.ndarray:
        self.matcher.fill_next_token_bitmask(self._bitmask)
        # 32 tokens per int32 word, least significant bit first; numpy unpacks it in one pass.
        bits = np.unpackbits(self._bitmask.numpy().view(np.uint8), bitorder="little")[: self.vocab_size]
        return bits.astype(bool)

    def allowed(self) -> torch.Tensor:
        mask = self._mask_np()
        if self.budget is not None:
            left = self.budget - self.steps  # positions left, this one included
            if left <= self.margin + self.WATCH:
                path = self._closing_path()
                if path and left <= len(path) + self.margin:
                    self.forced += 1
                    mask = np.zeros_like(mask)
                    mask[path[0]] = True
        return torch.from_numpy(mask)

    def advance(self, token_id: int) -> None:
        if not self.matcher.accept_token(int(token_id)):
            # The engine only ever samples allowed tokens, so this is a bug, not a user error.
            raise DecodingError(f"token {token_id} does not continue the grammar at step {self.steps}")
        self.steps += 1

    def rollback(self, count: int) -> None:
        if count:
            self.matcher.rollback(count)
            self.steps -= count

    def shortest_answer(self) -> int | None:
        """Tokens in the shortest answer the grammar allows from here (None if none was found)."""
        path = self._closing_path()
        return None if path is None else len(path)

    @property
    def is_terminated(self) -> bool:
        """Whether the grammar is complete and a stop token was consumed."""
        return bool(self.matcher.is_terminated())

    def _closing_token(
        self, mask: np.ndarray, closers: np.ndarray, separator: np.ndarray, length: np.ndarray
    ) -> int:
        """The next token of the closing path: among the allowed quotes, brackets and separators, one that
        completes the grammar, else the one that leaves the fewest choices after it (so a ``"`` that ends a
        string beats a ``}`` written inside it), shorter first; else the shortest allowed token."""
        candidates = np.flatnonzero(mask & ((closers > 0) | separator))
        best: tuple[int, int] | None = None
        choice = -1
        for token_id in candidates.tolist():
            if not self.matcher.accept_token(token_id):
                continue
            try:
                if self.matcher.is_completed():
                    return token_id
                score = (int(self._mask_np().sum()), int(length[token_id]))
            finally:
                self.matcher.rollback(1)
            if best is None or score < best:
                best, choice = score, token_id
        if choice >= 0:
            return choice
        # No quote, bracket or separator fits (a number, a literal...): among the shortest allowed tokens, one
        # after which the value may end ("0" rather than "-").
        shortest = np.flatnonzero(mask)[np.argsort(np.where(mask, length, 1 << 30)[mask], kind="stable")][:16]
        for token_id in shortest.tolist():
            if not self.matcher.accept_token(token_id):
                continue
            try:
                ends = self.matcher.is_completed() or bool((self._mask_np() & ((closers > 0) | separator)).any())
            finally:
                self.matcher.rollback(1)
            if ends:
                return token_id
        return int(shortest[0])

    def _closing_path(self) -> list[int] | None:
        """Tokens that complete the grammar from here ([] if it may end now; None if none was found)."""
        closers, separator, length = self.compiler.token_classes
        tokenizer = self.compiler.tokenizer()
        path: list[int] = []
        try:
            while not self.matcher.is_completed():
                if len(path) >= self.MAX_PATH:
                    return None
                forced = self.matcher.find_jump_forward_string()
                if forced and tokenizer is not None:
                    ids = tokenizer(forced, add_special_tokens=False)["input_ids"]
                    taken = 0
                    for token_id in ids:
                        if not self.matcher.accept_token(int(token_id)):
                            break
                        path.append(int(token_id))
                        taken += 1
                    if taken:
                        continue
                mask = self._mask_np()
                if not mask.any():
                    return None
                token_id = self._closing_token(mask, closers, separator, length)
                if not self.matcher.accept_token(token_id):
                    return None
                path.append(token_id)
        finally:
            if path:
                self.matcher.rollback(len(path))
        return path


def constraint_for(
    tokenizer: Any,
    grammar: Grammar,
    *,
    vocab_size: int,
    stop_token_ids: Iterable[int],
    budget: int | None = None,
) -> GrammarConstraint:
    """A fresh constraint for one decode of ``grammar`` with a model's ``tokenizer``.

    ``vocab_size``: the model's logits' width (the mask size, often past the tokenizer's vocabulary);
    ``stop_token_ids``: the ids that end its answers (the model handle's EOS ids); ``budget``: the answer's token
    budget, which the constraint then keeps the grammar completable within.
    """
    stops = tuple(sorted({int(t) for t in stop_token_ids}))
    if not stops:
        raise GrammarError(
            "The model has no EOS token (generation_config.eos_token_id), so a constrained answer could never end; "
            "set model.generation_config.eos_token_id."
        )
    compiler = _compiler(tokenizer, int(vocab_size), stops)
    return GrammarConstraint(compiler.compile(grammar), compiler, budget=budget)


__all__ = [
    "GRAMMAR_INSTALL",
    "Grammar",
    "GrammarConstraint",
    "GrammarError",
    "GrammarNotInstalledError",
    "compile_grammar",
    "constraint_for",
    "grammar_available",
    "require_xgrammar",
]
