"""The per-token provenance of an answer: which persona's distribution each token follows, with its text.

``ChatPersonaJudge`` puts a trace in the final chunk's ``response_metadata["trace"]``: one entry per output
token, ``{"token_id", "drafter", "judge", "kind", "iteration"}``. ``judge`` is the index of the persona whose
distribution the token follows (the personas are the preferences in the order they were given, one each),
-1 for the weighted product of them all (``combine="product"``, kind ``combined``); ``kind`` says how it was
chosen: an ``accepted`` draft, a ``residual`` resample after a rejection, a ``bonus`` token from the judge.

:func:`provenance` adds each token's text (decoded with the model's own tokenizer, incrementally, so that a
character split over several byte-level tokens lands whole on the token that completes it) and counts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

REPLACEMENT = "\ufffd"
PRODUCT = -1


def token_texts(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """The text each token adds to the answer. Joined, they are the decoded answer (special tokens dropped);
    a token that only starts a multi-byte character adds "" and the token completing it adds the character."""
    ids = [int(i) for i in ids]
    out: list[str] = []
    prefix = read = 0  # decode ids[prefix:read] is what was already emitted, with a little context before it

    def decode(part: list[int]) -> str:
        return tokenizer.decode(part, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    for i in range(len(ids)):
        before = decode(ids[prefix:read])
        after = decode(ids[prefix:i + 1])
        if len(after) > len(before) and not after.endswith(REPLACEMENT):
            out.append(after[len(before):])
            prefix, read = read, i + 1
        else:
            out.append("")
    return out


def provenance(trace: Sequence[dict[str, Any]], tokenizer: Any, labels: Sequence[str]) -> dict[str, Any]:
    """``{"personas": labels, "trace": [entry + {"text"}], "tokens_by_persona": {label: n}, "kinds": {...}}``.

    ``labels[i]`` names persona ``i``; tokens of the weighted product are counted under "weighted product".
    """
    entries = [dict(e) for e in trace]
    texts = token_texts(tokenizer, [e["token_id"] for e in entries])
    by_persona: Counter[str] = Counter()
    for entry, text in zip(entries, texts, strict=True):
        entry["text"] = text
        judge = int(entry.get("judge", 0))
        by_persona[label_for(judge, labels)] += 1
    return {
        "personas": list(labels),
        "trace": entries,
        "tokens_by_persona": dict(by_persona),
        "kinds": dict(Counter(str(e.get("kind")) for e in entries)),
    }


def label_for(judge: int, labels: Sequence[str]) -> str:
    if judge == PRODUCT:
        return "weighted product"
    if 0 <= judge < len(labels):
        return labels[judge]
    return f"persona {judge}"


__all__ = ["label_for", "provenance", "token_texts"]
