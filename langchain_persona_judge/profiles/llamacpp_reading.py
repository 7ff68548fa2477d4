"""φ on the llama.cpp backend: the ``K + 1`` rows of a question as ``K + 1`` sequences of one llama.cpp context.

What :class:`~.scoring.PersonaScorer` reads through transformers' batched forward (left-padded rows, a cache cut
back after each response), it reads here through llama.cpp's ``llama_decode``: every row is its own sequence id
with its own positions (no padding), and every response position of every row asks for its logits. A block of
response positions is one decode of ``rows × block`` tokens, ordered position-major, so its logits reshape to
``(rows, block, vocabulary)`` and the log-probabilities of the response tokens (and the writing statistics) come
out exactly as on transformers, block by block (``rows × block × vocabulary`` floats at a time).

The context is kept from one question to the next: each sequence keeps the tokens it shares with the next
question's row (a persona's system turn), and only the rest is read. After each response the sequences are cut
back to the question (``llama_memory_seq_rm``), so the responses to one question share its read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..decoding import DecodingStats
from ..decoding.backends.base import common_prefix

BLOCK_TOKENS = 256
"""Tokens (rows × response positions) of one decode: its logits take ``BLOCK_TOKENS × vocabulary`` floats."""


class LlamaCppReader:
    """The log-probabilities of responses after each of ``rows``, on a llama.cpp model; one context, kept."""

    def __init__(self, backend: Any, block_tokens: int = BLOCK_TOKENS) -> None:
        self.backend = backend
        self.block_tokens = block_tokens
        self.stats = DecodingStats()
        """Decodes and positions fed (forward_calls, positions): the scorer's cost counters read them."""
        self._context: Any = None
        self._capacity = 0
        self._cached: list[list[int]] = []

    def close(self) -> None:
        if self._context is not None:
            self._context.close()
            self._context = None
        self._cached = []

    def _ensure(self, rows: list[list[int]], longest: int) -> None:
        """A context with one sequence per row, each with room for the longest row plus the longest response.

        Not unified: each sequence has its own part of the cache, and its tokens attend to that part alone (in a
        unified cache every token's attention spans every sequence's cells, masked: 21 rows of ~200 tokens made
        scoring four times slower than transformers)."""
        needed = max(len(r) for r in rows) + longest + 1
        if self._context is not None and len(self._cached) == len(rows) and needed <= self._capacity:
            return
        self.close()
        per_sequence = -(-max(needed + needed // 4, 256) // 256) * 256  # room to grow, rebuilt only when outgrown
        self._context = self.backend.context(len(rows), per_sequence * len(rows), unified=False)
        self._capacity = per_sequence
        self._cached = [[] for _ in rows]

    def _read_rows(self, rows: list[list[int]]) -> torch.Tensor:
        """Reads what each sequence does not hold yet of its row (at least the last token); (rows, 1, V)
        logits at each row's last token."""
        context = self._context
        items = []
        for seq, row in enumerate(rows):
            keep = min(common_prefix(self._cached[seq], row), len(row) - 1)
            if keep < len(self._cached[seq]):
                context.crop(seq, keep)
            items += [(row[pos], pos, seq, pos == len(row) - 1) for pos in range(keep, len(row))]
            self._cached[seq] = list(row)
        return context.decode(items, self.stats).view(len(rows), 1, -1)

    def run(
        self,
        rows: list[list[int]],
        responses: list[list[int]],
        stats_for: Callable[[], Any] | None = None,
        check: Callable[[], None] = lambda: None,
    ) -> list[tuple[np.ndarray, Any]]:
        """For each response: (rows, T) log-probabilities of its tokens under each row, and what ``stats_for()``
        collected (its ``add(logp, token_logp)`` is called on every block; None: nothing). ``check()`` is called
        before every decode after the first (it raises to stop: the context is then read afresh next time)."""
        self._ensure(rows, max(len(r) for r in responses))
        try:
            first = self._read_rows(rows)
            out = []
            for number, response in enumerate(responses):
                if number:  # the previous response's positions leave every sequence
                    for seq, row in enumerate(rows):
                        self._context.crop(seq, len(row))
                out.append(self._continue(rows, first, response, stats_for, check))
            for seq, row in enumerate(rows):
                self._context.crop(seq, len(row))
            return out
        except BaseException:
            self.close()  # a failed decode leaves the sequences in an unknown state: start afresh next time
            raise

    def _continue(self, rows: list[list[int]], first: torch.Tensor, response: list[int],
                  stats_for: Callable[[], Any] | None, check: Callable[[], None]) -> tuple[np.ndarray, Any]:
        n_rows = len(rows)
        target = torch.tensor(response)
        stats = stats_for() if stats_for is not None else None
        block = max(1, self.block_tokens // n_rows)
        logps = []
        start, logits = 0, first  # logits (rows, c, V) score response[start : start + c]
        while True:
            targets = target[start : start + logits.shape[1]]
            logp = torch.log_softmax(logits.float(), dim=-1)
            token_logp = logp.gather(2, targets.view(1, -1, 1).expand(n_rows, -1, 1))[..., 0]
            logps.append(token_logp)
            if stats is not None:
                stats.add(logp, token_logp)
            fed = start + logits.shape[1]
            if fed >= len(response):
                break
            stop = min(fed + block, len(response))
            check()
            # Feeding response[t - 1] at position len(row) + t - 1 gives the logits that score response[t].
            items = [(response[t - 1], len(row) + t - 1, seq, True)
                     for t in range(fed, stop) for seq, row in enumerate(rows)]
            logits = self._context.decode(items, self.stats).view(stop - fed, n_rows, -1).transpose(0, 1)
            start = fed
        token_logps = torch.cat(logps, dim=1).double().numpy()
        return token_logps, None if stats is None else stats.result()


__all__ = ["BLOCK_TOKENS", "LlamaCppReader"]
