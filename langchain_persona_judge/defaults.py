"""Default values, in one place: the chat model's fields, the CLI's flags and the decoding engine read them here.

Two sets, because the engine and the chat model serve different callers:

* the engine (:func:`langchain_persona_judge.decoding.generate`) defaults to the paper's settings (λ = 4, always
  draft λ tokens) and plain temperature-1 sampling, so a caller who passes nothing gets the method as published;
* the chat model and the CLI default to what reads well on a small local model (temperature 0.7, nucleus
  0.95) and to the schedule that is fastest on the machine (``auto``).

Layer L0: imports nothing from the package.
"""

from __future__ import annotations

# -- shared by every entry point ----------------------------------------------------------------------

LOOKAHEAD = 4
"""λ: drafts per iteration (the paper's default)."""
MAX_NEW_TOKENS = 256
"""Most tokens of one answer."""

# -- the engine (decoding.DecodingOptions) ------------------------------------------------------------

ENGINE_TEMPERATURE = 1.0
"""The engine samples from the model's own distribution unless told otherwise."""
ENGINE_SCHEDULE = "auto"
"""The schedule that is fastest for the model (same law either way): lockstep where a few batch rows cost about
one row (a GPU, prepacked CPU weights) and for the batched rules (product, guidance), else the paper's
speculative schedule."""
ENGINE_DRAFT_CONFIDENCE = 0.0
"""The paper's iterations: always draft λ tokens."""

# -- the chat model and the CLI ---------------------------------------------------------------------------

TEMPERATURE = 0.7
"""Sampling temperature of the chat model and the CLI (0: greedy)."""
TOP_P = 0.95
"""Nucleus threshold of the chat model and the CLI."""
TOP_K: int | None = None
"""Top-k truncation of the chat model and the CLI (None: off)."""
SCHEDULE = "auto"
"""The chat model's schedule: lockstep where a few batch rows cost about one row, else speculative."""
SPECULATIVE_DRAFT_CONFIDENCE = 0.5
"""``draft_confidence=None`` resolves to this with the speculative schedule (it saves wasted drafter forwards)."""
LOCKSTEP_DRAFT_CONFIDENCE = 0.0
"""``draft_confidence=None`` resolves to this with the lockstep schedule (drafts cost nothing extra there)."""
COMPOSITION = "split"
"""How N preferences become personas: one each, roles rotating."""
PREFERENCE_LAYOUT = "system"
"""Where a preference goes: the persona's system turn."""

# -- environment variables -------------------------------------------------------------------------------

MODEL_ENV = "PERSONA_JUDGE_MODEL"
"""Read when ``model`` is not passed (a Hugging Face id, local folder or ``.gguf`` file)."""
DEVICE_ENV = "PERSONA_JUDGE_DEVICE"
"""Read when ``device`` is not passed."""
CACHE_ENV = "PERSONA_JUDGE_CACHE"
"""Where converted GGUF models are cached (default ``~/.cache/langchain-persona-judge``)."""
PREPACK_ENV = "PERSONA_JUDGE_PREPACK"
"""``0``/``1`` overrides whether fp32 CPU models get prepacked linear weights."""


def draft_confidence_for(schedule: str) -> float:
    """What ``draft_confidence=None`` means with ``schedule``."""
    return SPECULATIVE_DRAFT_CONFIDENCE if schedule == "speculative" else LOCKSTEP_DRAFT_CONFIDENCE
