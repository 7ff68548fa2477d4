"""The implicit reward of each basis persona, computed by the model itself, batched.

For a conversation ``x`` and a response ``y`` (its tokens, then the end-of-turn token when the response ended by
itself rather than at a token limit), persona ``j``'s implicit reward is

    φ_j(x, y) = mean_t [ log p(y_t | x, persona_j, y_<t) − log p(y_t | x, y_<t) ]

where persona ``j``'s copy of the conversation carries its preference text in the system turn, exactly as
decoding puts it (:func:`~langchain_persona_judge.personas.persona_messages`), and the plain copy carries none
(the reference that ``guidance`` and the weighted product read).

On a llama.cpp model the same rows are sequences of one llama.cpp context (:mod:`.llamacpp_reading`), so
learning runs on whichever backend serves the model, with one copy of it in memory; otherwise:

One response costs one batched pass: ``K + 1`` left-padded rows (the ``K`` basis personas and the plain
conversation), each the conversation's prompt and then the response's tokens; only the response positions'
logits are kept, ``chunk`` tokens at a time. The prompt rows are read once per conversation and their cache is
cut back after each response, so several responses to one question share that read. What differs between the
rows (each persona's system turn: the tokens before the part every row ends with) does not depend on the
question: its cache is kept from one question to the next, so a new question reads only its own tokens.

From the same logits :meth:`PersonaScorer.writing_statistics` takes what learning from a user's own writing
needs: the score and the Fisher information, at zero, of the log-linear model ``log p_w(v) = log p_0(v) +
Σ_j w_j (log p_j(v) − log p_0(v)) − log Z`` (the weighted product decoding uses), summed over the text's tokens.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from transformers import DynamicCache

from ..decoding.backends import NON_FINITE, ForwardSignature, ModelBackend, TransformersBackend
from ..errors import DecodingError, ProfileError
from ..personas import Layout, PersonaRegistry, persona_messages
from ..runtime import admission_queue, display_name, encode_chat, shared_model
from .basis import Basis, resolve_basis

Conversation = list[dict[str, Any]]
Prompt = str | Sequence[dict[str, Any]]
"""A question (the user's message), or a whole conversation of role/content dicts ending before the answer."""

CHUNK = 32
"""Response positions whose logits one forward keeps (bounds memory: rows × CHUNK × vocabulary floats)."""
_CACHED_PROMPTS = 64
_CACHED_FEATURES = 100_000


# -- the model a profile is tied to -------------------------------------------------------------------------


Backend = Literal["transformers", "llamacpp", "auto"]


@dataclass(frozen=True)
class ModelHandle:
    """A loaded model's handle (its backend: the transformers model or the llama.cpp one, its tokenizer and
    facts), and what loads it again."""

    backend: ModelBackend
    name: str | None
    """What loads it again (an HF id, folder or .gguf path); None for the embedded model or an in-memory one."""
    display: str
    """How it is named to people."""

    @property
    def model(self) -> Any:
        """The in-memory model: the transformers model, or the llama.cpp backend itself."""
        return self.backend.model if isinstance(self.backend, TransformersBackend) else self.backend

    @property
    def is_llamacpp(self) -> bool:
        return self.backend.kind == "llamacpp"

    @property
    def tokenizer(self) -> Any:
        return self.backend.tokenizer

    @property
    def fingerprint(self) -> str:
        return model_fingerprint(self.backend)


def _scoring_handle(backend: ModelBackend, name: str | None, display: str) -> ModelHandle:
    if not isinstance(backend, TransformersBackend) and backend.kind != "llamacpp":
        raise ProfileError(f"Profiles score answers on the transformers or the llama.cpp backend, not on "
                           f"{backend.kind!r}.")
    if backend.tokenizer is None:
        raise ProfileError("The model has no tokenizer; load it with load_model, or pass (model, tokenizer).")
    return ModelHandle(backend, name, display)


def resolve_model(model: Any = None, *, device: str | None = None, dtype: str | None = None,
                  backend: Backend = "transformers") -> ModelHandle:
    """The model handle of anything ``ChatPersonaJudge(model=...)`` takes (None: the embedded model; loaded on
    ``backend``), a handle from ``load_model`` (transformers or llama.cpp), an already loaded ``(model,
    tokenizer)`` pair, or a ``ChatPersonaJudge`` (on the backend it decodes with): its weights are shared, never
    loaded a second time."""
    if isinstance(model, ModelHandle):
        return model
    if model is None or isinstance(model, (str, os.PathLike)):
        name = None if model is None else str(model)
        return _scoring_handle(shared_model(name, device=device, dtype=dtype, backend=backend), name,
                               display_name(name))
    if isinstance(model, ModelBackend):
        return _scoring_handle(model, None, display_name(None, model))
    if isinstance(model, tuple) and len(model) == 2:
        loaded, tokenizer = model
        if isinstance(loaded, ModelBackend):
            raise ProfileError("model=(handle, tokenizer): pass the handle from load_model alone (it holds its "
                               "tokenizer), or a (transformers model, tokenizer) pair.")
        if not callable(getattr(tokenizer, "__call__", None)) or not hasattr(loaded, "config"):
            raise ProfileError("model=(model, tokenizer): pass a loaded transformers causal LM and its tokenizer.")
        return ModelHandle(TransformersBackend(loaded, tokenizer), None, display_name(None, loaded))
    if hasattr(model, "model_handle") and hasattr(model, "model_name"):  # a ChatPersonaJudge (duck-typed: layer L3)
        if model.hf_model is not None:
            return _scoring_handle(model.model_handle(), None, model.display_name)
        # The weights it decodes with, on its own backend (llama.cpp included): one copy in memory.
        name = model.model_name
        return _scoring_handle(model.model_handle(), name, display_name(name))
    raise ProfileError(
        f"model={type(model).__name__}: pass None (the embedded model), a Hugging Face id or path, a handle from "
        "load_model, a loaded (model, tokenizer) pair, or a ChatPersonaJudge."
    )


_fingerprints: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
_fingerprints_lock = threading.Lock()


def model_fingerprint(model: Any) -> str:
    """A digest of the model's architecture and the first rows of its input embeddings, rounded to bfloat16
    (so the same weights loaded in fp32 or bf16 agree, and any other model differs)."""
    if isinstance(model, TransformersBackend):
        model = model.model
    with _fingerprints_lock:
        known = _fingerprints.get(model)
    if known is not None:
        return known
    if hasattr(model, "fingerprint_parts"):  # a llama.cpp model: the same identity from its GGUF
        shape, rows = model.fingerprint_parts()
        rows = rows.to(torch.bfloat16).contiguous()
    else:
        config = model.config
        shape = {key: getattr(config, key, None) for key in (
            "model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
            "intermediate_size")}
        with torch.inference_mode():
            rows = model.get_input_embeddings().weight[:64].detach().to("cpu", torch.bfloat16).contiguous()
    digest = hashlib.sha256(json.dumps(shape, sort_keys=True).encode())
    digest.update(rows.view(torch.int16).numpy().tobytes())
    value = digest.hexdigest()[:16]
    with _fingerprints_lock:
        _fingerprints[model] = value
    return value


# -- the scorer -----------------------------------------------------------------------------------------------


@dataclass
class _Heads:
    """The rows' own beginnings (left-padded), read once: the cache a question's shared tokens continue."""

    heads: list[tuple[int, ...]]
    attention: torch.Tensor
    """(rows, width): 1 at each row's tokens, 0 at its left padding."""
    lengths: torch.Tensor
    """(rows,): tokens of each head."""
    cache: Any
    """The heads' cache, never extended itself: each read continues a copy."""
    last: torch.Tensor
    """(rows, 1, V): the logits at each head's last token (what the first response token is scored by when the
    rows share no tokens at the end)."""


def shared_ending(rows: Sequence[Sequence[int]]) -> int:
    """How many tokens every row ends with (the conversation after the system turn), leaving each row at least
    one token of its own."""
    limit = min(len(r) for r in rows) - 1
    count = 0
    while count < limit and len({r[len(r) - 1 - count] for r in rows}) == 1:
        count += 1
    return count


@dataclass
class WritingStatistics:
    """Sums over a text's tokens, at ``w = 0``, of the log-linear model's score and Fisher information."""

    score: np.ndarray
    """(K,): Σ_t [ℓ_j(y_t) − E_{p_0}[ℓ_j]], ℓ_j = log p_j − log p_0: how much persona j raises the text's
    likelihood beyond what it raises for text the plain model would write."""
    fisher: np.ndarray
    """(K, K): Σ_t Cov_{p_0}(ℓ_j, ℓ_k)."""
    tokens: int


class PersonaScorer:
    """φ(x, y) of a basis on one model, batched, with a cache of what it has scored.

    Args:
        model: anything :func:`resolve_model` takes (None: the embedded model, shared).
        basis: registry persona names, a :class:`~.basis.Basis`, or None for the built-in basis.
        registry: a registry (object or YAML path) over the built-ins, for the names.
        features: whole-answer features of the basis (e.g. ``("length",)``; :mod:`.features`).
        layout: where the persona's preference goes (as in decoding).
        chunk: response positions per forward.
    """

    def __init__(
        self,
        model: Any = None,
        basis: Basis | Sequence[str] | None = None,
        *,
        registry: PersonaRegistry | str | Path | None = None,
        features: Sequence[str] = (),
        layout: Layout = "system",
        chunk: int = CHUNK,
    ) -> None:
        if chunk < 1:
            raise ProfileError(f"chunk={chunk}: pass an integer >= 1.")
        self.handle = resolve_model(model)
        self.basis = resolve_basis(basis, registry, features)
        self.layout = layout
        self.chunk = chunk
        self.forwards = 0
        """Forward passes run so far (a cost counter)."""
        self.positions = 0
        """Token positions fed to the model so far (rows × tokens; a cost counter)."""
        self._lock = threading.Lock()
        self._reading = threading.Lock()
        """Held while the model reads: one read at a time uses (and may replace) the heads' cache."""
        self._heads: _Heads | None = None
        self._rows: OrderedDict[str, list[list[int]]] = OrderedDict()
        self._features: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        eos = self.handle.backend.eos_token_ids
        preferred = getattr(self.handle.tokenizer, "eos_token_id", None)
        self.end_of_turn: int | None = preferred if preferred in eos else (min(eos) if eos else None)
        """The token that ends an answer, scored after each response (None: the model has none)."""
        self._llama: Any = None
        if self.handle.is_llamacpp:  # the rows as sequences of one llama.cpp context (.llamacpp_reading)
            from .llamacpp_reading import LlamaCppReader

            self._llama = LlamaCppReader(self.handle.backend)

    @property
    def fingerprint(self) -> str:
        return self.handle.fingerprint

    # -- inputs ------------------------------------------------------------------------------------------

    @staticmethod
    def conversation(prompt: Prompt) -> Conversation:
        """The conversation a prompt stands for: a question becomes one user message."""
        if isinstance(prompt, str):
            if not prompt.strip():
                raise ProfileError("A prompt is empty; give the question (or conversation) the answer replies to.")
            return [{"role": "user", "content": prompt}]
        messages = [dict(m) for m in prompt] if isinstance(prompt, Sequence) else None
        if not messages or not all(isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                                   for m in messages):
            raise ProfileError(
                "A prompt is a question (str) or a conversation: a non-empty list of {'role', 'content'} dicts."
            )
        return messages

    def prompt_rows(self, prompt: Prompt) -> list[list[int]]:
        """The token ids of each basis persona's copy of the conversation, then of the plain copy."""
        conversation = self.conversation(prompt)
        key = json.dumps(conversation, sort_keys=True, ensure_ascii=False)
        with self._lock:
            rows = self._rows.get(key)
        if rows is not None:
            return rows
        tokenizer = self.handle.tokenizer
        rows = [
            encode_chat(tokenizer, persona_messages(conversation, [text], layout=self.layout)).tolist()
            for text in self.basis.texts
        ]
        rows.append(encode_chat(tokenizer, persona_messages(conversation, [], layout=self.layout)).tolist())
        with self._lock:
            self._rows[key] = rows
            while len(self._rows) > _CACHED_PROMPTS:
                self._rows.popitem(last=False)
        return rows

    def response_ids(self, response: str, complete: bool = True) -> list[int]:
        """A response's token ids (its text read literally: no special tokens), then the end-of-turn token unless
        the response was cut short (``complete=False``: an answer that ran into its token limit)."""
        if not isinstance(response, str) or not response.strip():
            raise ProfileError(f"A response is empty or not text ({response!r}); every answer needs some text.")
        ids = list(self.handle.tokenizer(response.strip(), add_special_tokens=False,
                                         split_special_tokens=True)["input_ids"])
        if complete and self.end_of_turn is not None:
            ids.append(self.end_of_turn)
        return ids

    # -- what callers ask for -----------------------------------------------------------------------------

    def features(
        self, prompt: Prompt, responses: Sequence[str], complete: bool | Sequence[bool] = True,
        cancelled: threading.Event | None = None,
    ) -> np.ndarray:
        """φ of each response to ``prompt``: shape (len(responses), K + F), the basis's whole-answer features
        after the personas' implicit rewards. Cached per (prompt, response, complete).

        ``complete``: whether each response ended by itself (its end-of-turn token is then scored: how much a
        persona wants the answer to stop there) or was cut short at a token limit (not scored). ``cancelled``:
        set from another thread, it stops the reading within one forward (or while it waits for the model) and
        the call raises :class:`~langchain_persona_judge.errors.ProfileError`; nothing is cached."""
        if isinstance(responses, str):
            raise ProfileError("responses is one string; pass a list of responses.")
        flags = [complete] * len(responses) if isinstance(complete, bool) else [bool(c) for c in complete]
        if len(flags) != len(responses):
            raise ProfileError("Pass one `complete` flag per response (or one for all).")
        items = list(zip(responses, flags))
        rows = self.prompt_rows(prompt)
        key = json.dumps(self.conversation(prompt), sort_keys=True, ensure_ascii=False)
        with self._lock:
            known = {item: self._features[(key, *item)] for item in items if (key, *item) in self._features}
        missing = list(dict.fromkeys(item for item in items if item not in known))
        if missing:
            ids = [self.response_ids(response, done) for response, done in missing]
            for item, (token_logps, _) in zip(missing, self._run(rows, ids, moments=False, cancelled=cancelled)):
                ratios = token_logps[:-1] - token_logps[-1:]
                known[item] = np.concatenate([ratios.mean(axis=1), self.basis.feature_values(item[0])])
            with self._lock:
                for item in missing:
                    self._features[(key, *item)] = known[item]
                while len(self._features) > _CACHED_FEATURES:
                    self._features.popitem(last=False)
        if not responses:
            return np.zeros((0, len(self.basis)))
        return np.stack([known[item] for item in items])

    def token_log_ratios(self, prompt: Prompt, response: str) -> np.ndarray:
        """(K, T): ``log p_j(y_t) − log p_0(y_t)`` at each of the response's tokens (end-of-turn included)."""
        [(token_logps, _)] = self._run(self.prompt_rows(prompt), [self.response_ids(response)], moments=False)
        return token_logps[:-1] - token_logps[-1:]

    def writing_statistics(self, prompt: Prompt, text: str) -> WritingStatistics:
        """The score and Fisher information sums of a text the user wrote in reply to ``prompt``."""
        ids = self.response_ids(text)
        [(_, moments)] = self._run(self.prompt_rows(prompt), [ids], moments=True)
        score, fisher = moments
        return WritingStatistics(score, fisher, len(ids))

    # -- the batched forward ------------------------------------------------------------------------------

    def _forward(self, ids: torch.Tensor, attention: torch.Tensor, positions: torch.Tensor, cache: Any,
                 keep: int, signature: ForwardSignature) -> torch.Tensor:
        model = self.handle.model
        device = model.device
        kwargs: dict[str, Any] = {"input_ids": ids.to(device), signature.cache_argument: cache, "use_cache": True,
                                  "attention_mask": attention.to(device)}
        if signature.takes_positions:
            kwargs["position_ids"] = positions.to(device)
        if signature.keeps_logits:
            kwargs["logits_to_keep"] = keep
        self.forwards += 1
        self.positions += ids.numel()
        # Not checked here: a NaN or an infinity anywhere in a row makes its log-softmax NaN, which the check of
        # the scored tokens' log-probabilities catches (``_continue``) at a fraction of a full isfinite pass.
        return model(**kwargs).logits[:, -keep:]

    @torch.inference_mode()
    def _run(
        self, rows: list[list[int]], responses: list[list[int]], *, moments: bool,
        cancelled: threading.Event | None = None,
    ) -> list[tuple[np.ndarray, tuple[np.ndarray, np.ndarray] | None]]:
        """For each response: (rows, T) log-probabilities of its tokens under each row, and (with ``moments``)
        the writing statistics' sums. The rows' prompt is read once; each response continues it. ``cancelled``
        is checked while waiting for the model and before every forward."""
        check = _checker(cancelled)
        model = self.handle.model
        limit = self.handle.backend.context_length
        width = max(len(r) for r in rows)
        longest = width + max(len(r) for r in responses)
        if limit is not None and longest > limit:
            raise ProfileError(
                f"A prompt and its response take {longest} tokens with the longest persona, but the model's context "
                f"holds {limit}; shorten the response or the conversation."
            )
        if self._llama is not None:
            k = len(rows) - 1
            with admission_queue(self.handle.backend).admit(cancelled=cancelled) as admitted, self._reading:
                check(admitted)
                before = (self._llama.stats.forward_calls, self._llama.stats.positions)
                try:
                    return self._llama.run(rows, responses, stats_for=(lambda: _Moments(k)) if moments else None,
                                           check=check)
                finally:
                    self.forwards += self._llama.stats.forward_calls - before[0]
                    self.positions += self._llama.stats.positions - before[1]
        signature = self.handle.backend.signature
        out = []
        with admission_queue(model).admit(cancelled=cancelled) as admitted, self._reading:
            check(admitted)
            first, cache, lengths, attention = self._read_prompt(rows, signature)
            for number, response in enumerate(responses):
                if number:
                    if getattr(cache, "is_croppable", True):
                        cache.crop(attention.shape[1] - cache.get_seq_length())  # negative: tokens to remove
                    else:  # a cache that cannot be cut back (sliding windows): read the prompt again
                        first, cache, lengths, attention = self._read_prompt(rows, signature)
                out.append(self._continue(first, response, lengths, attention, cache, signature, moments, check))
        return out

    def _read_prompt(self, rows: list[list[int]], signature: ForwardSignature
                     ) -> tuple[torch.Tensor, Any, torch.Tensor, torch.Tensor]:
        """Reads the prompt rows: the logits at their last token (rows, 1, V), their cache, lengths and attention
        mask. The rows' heads (all but the tokens every row ends with) come from the kept cache when they are the
        ones read before; then only the shared ending is read, once for all rows."""
        shared = shared_ending(rows)
        heads = [tuple(row[: len(row) - shared]) for row in rows]
        kept = self._heads
        if kept is None or kept.heads != heads:
            kept = self._read_heads(heads, signature)
            # A cache that cannot be cut back is read afresh for every response: keeping it saves nothing.
            self._heads = kept if getattr(kept.cache, "is_croppable", True) else None
        # The kept cache is continued on a copy; one read just for this prompt is continued as it is.
        cache = copy.deepcopy(kept.cache) if kept is self._heads else kept.cache
        if not shared:
            return kept.last, cache, kept.lengths, kept.attention
        n_rows = len(rows)
        ending = torch.tensor(rows[0][len(rows[0]) - shared:])
        attention = torch.cat([kept.attention, torch.ones(n_rows, shared, dtype=torch.long)], dim=1)
        positions = kept.lengths.view(-1, 1) + torch.arange(shared).view(1, -1)
        first = self._forward(ending.view(1, -1).expand(n_rows, -1), attention, positions, cache, 1, signature)
        return first, cache, kept.lengths + shared, attention

    def _read_heads(self, heads: list[tuple[int, ...]], signature: ForwardSignature) -> _Heads:
        model = self.handle.model
        n_rows = len(heads)
        width = max(len(h) for h in heads)
        ids = torch.zeros(n_rows, width, dtype=torch.long)
        attention = torch.zeros(n_rows, width, dtype=torch.long)
        for index, head in enumerate(heads):
            ids[index, width - len(head):] = torch.tensor(head)
            attention[index, width - len(head):] = 1
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=model.config)
        last = self._forward(ids, attention, positions, cache, 1, signature)
        return _Heads(heads, attention, attention.sum(-1), cache, last)

    def _continue(self, first: torch.Tensor, response: list[int], lengths: torch.Tensor,
                  prefix_attention: torch.Tensor, cache: Any, signature: ForwardSignature,
                  moments: bool, check: Any) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
        n_rows = prefix_attention.shape[0]
        target = torch.tensor(response)
        logps: list[torch.Tensor] = []
        stats = _Moments(n_rows - 1) if moments else None
        block = first  # (rows, 1, V): predicts response[0]
        start = 0  # the response index ``block``'s first column predicts
        while True:
            targets = target[start : start + block.shape[1]]
            logp = torch.log_softmax(block.float(), dim=-1)
            logps.append(logp.gather(2, targets.to(logp.device).view(1, -1, 1).expand(n_rows, -1, 1))[..., 0])
            if torch.isnan(logps[-1]).any():
                raise DecodingError(NON_FINITE)
            if stats is not None:
                stats.add(logp, logps[-1])
            fed = start + block.shape[1]  # response tokens scored so far; the cache holds all but the last
            if fed >= len(response):
                break
            stop = min(fed + self.chunk, len(response))
            check()
            # Feeding response[fed-1 : stop-1] gives the logits that score response[fed : stop].
            chunk = target[fed - 1 : stop - 1]
            attention = torch.cat([prefix_attention, torch.ones(n_rows, stop - 1, dtype=torch.long)], dim=1)
            positions = lengths.view(-1, 1) + torch.arange(fed - 1, stop - 1).view(1, -1)
            block = self._forward(chunk.view(1, -1).expand(n_rows, -1), attention, positions, cache, chunk.numel(),
                                  signature)
            start = fed
        token_logps = torch.cat(logps, dim=1).cpu().double().numpy()
        return token_logps, None if stats is None else stats.result()


def _checker(cancelled: threading.Event | None) -> Any:
    """``check(admitted=True)``: raises ProfileError when ``cancelled`` is set (or the admission queue gave up
    waiting for it)."""

    def check(admitted: bool = True) -> None:
        if not admitted or (cancelled is not None and cancelled.is_set()):
            raise ProfileError("Scoring the answers was cancelled (PreferenceLearner.cancel); nothing was kept.")

    return check


class _Moments:
    """Running sums of the writing statistics over blocks of positions."""

    def __init__(self, k: int) -> None:
        self.score = torch.zeros(k, dtype=torch.float64)
        self.fisher = torch.zeros(k, k, dtype=torch.float64)

    def add(self, logp: torch.Tensor, token_logp: torch.Tensor) -> None:
        """``logp``: (K+1, c, V) log-probabilities (the plain row last); ``token_logp``: (K+1, c) of the tokens."""
        ratio = logp[:-1] - logp[-1:]  # (K, c, V): ℓ_j at every candidate token
        p0 = logp[-1].exp()  # (c, V)
        mean = torch.einsum("kcv,cv->kc", ratio, p0)  # E_{p0}[ℓ_j] per position
        observed = token_logp[:-1] - token_logp[-1:]  # (K, c)
        self.score += (observed - mean).sum(dim=1).double().cpu()
        second = torch.einsum("kcv,lcv,cv->kl", ratio, ratio, p0)
        self.fisher += (second - torch.einsum("kc,lc->kl", mean, mean)).double().cpu()

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        return self.score.numpy(), self.fisher.numpy()


__all__ = [
    "CHUNK",
    "Conversation",
    "ModelHandle",
    "PersonaScorer",
    "Prompt",
    "WritingStatistics",
    "model_fingerprint",
    "resolve_model",
    "shared_ending",
]
