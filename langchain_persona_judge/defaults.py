"""What ``draft_confidence=None`` and ``guidance=None`` resolve to, and the names of the environment variables the
package reads.

The options' defaults (the chat model's, the CLI's and the engine's) are declared with the options themselves, in
:mod:`langchain_persona_judge.option_specs`.

Layer L0: imports nothing from the package.
"""

from __future__ import annotations

# -- what draft_confidence=None means -------------------------------------------------------------------

SPECULATIVE_DRAFT_CONFIDENCE = 0.5
"""``draft_confidence=None`` resolves to this with the speculative schedule (it saves wasted drafter forwards)."""
LOCKSTEP_DRAFT_CONFIDENCE = 0.0
"""``draft_confidence=None`` resolves to this with the lockstep schedule (drafts cost nothing extra there)."""

# -- what guidance=None means ------------------------------------------------------------------------------

STATED_GUIDANCE = 1.0
"""``guidance=None`` with stated preferences (or a profile's best-of-N candidates): the personas themselves."""
PROFILE_GUIDANCE = 4.0
"""``guidance=None`` when a learned profile decodes as its weighted product: γ = 4 (the KL-regularised optimum of
the learned reward at a quarter of the regularisation). After 10 choices it beat the plain answer 0.80 and the
preference written in the prompt 0.68 (``benchmarks/results/learning_fresh.json``; chosen there after seeing those
figures) and was confirmed on new users and answers: 0.75 against the plain answer, 0.65 against the written
preference (``benchmarks/results/learning_confirm.json``)."""


def guidance_for(profile: bool, profile_decoding: str = "product") -> float:
    """What ``guidance=None`` means: :data:`PROFILE_GUIDANCE` for a learned profile's product, else 1."""
    return PROFILE_GUIDANCE if profile and profile_decoding == "product" else STATED_GUIDANCE


# -- environment variables -------------------------------------------------------------------------------

MODEL_ENV = "PERSONA_JUDGE_MODEL"
"""Read when ``model`` is not passed (a Hugging Face id, local folder or ``.gguf`` file)."""
DEVICE_ENV = "PERSONA_JUDGE_DEVICE"
"""Read when ``device`` is not passed."""
CACHE_ENV = "PERSONA_JUDGE_CACHE"
"""Where converted GGUF models are cached (default ``~/.cache/langchain-persona-judge``)."""
PREPACK_ENV = "PERSONA_JUDGE_PREPACK"
"""``0``/``1`` overrides whether fp32 CPU models get prepacked linear weights."""
BATCHING_ENV = "PERSONA_JUDGE_BATCHING"
"""``auto``/``on``/``off``: continuous batching of concurrent requests on a model, where not set per model."""
PROMPT_CACHE_ENV = "PERSONA_JUDGE_PROMPT_CACHE"
"""How many released llama.cpp contexts a model keeps for their prompts' KV cache (default 2; 0 turns it off)."""
PROMPT_CACHE_DEFAULT = 2
PREFILL_CHUNK_ENV = "PERSONA_JUDGE_PREFILL_CHUNK"
"""Prompt columns per prefill forward of a lockstep batch on transformers (0: the whole prompt at once); under
continuous batching the others' steps run between a newcomer's chunks."""
PREFILL_CHUNK_CPU = 128
"""The default on a CPU: a newcomer's two 1,024-token prompts stall a running request for 0.77 s at most instead of
5.14 s, and it reaches its first token 4% later (embedded model, one thread;
``benchmarks/results/join_stall_cpu.json``)."""
PREFILL_CHUNK_ACCELERATOR = 512
"""The default on an accelerator, where a forward of a few hundred positions costs little more than one of a single
token (not measured here: no GPU was available)."""


def draft_confidence_for(schedule: str) -> float:
    """What ``draft_confidence=None`` means with ``schedule``."""
    return SPECULATIVE_DRAFT_CONFIDENCE if schedule == "speculative" else LOCKSTEP_DRAFT_CONFIDENCE
