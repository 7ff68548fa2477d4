"""One request end to end, LangChain-free: models, admission, chat template, request building, the run loop.

Layer L2: imports the L1 packages (:mod:`~langchain_persona_judge.decoding`, :mod:`~langchain_persona_judge.personas`,
:mod:`~langchain_persona_judge.grammar`) and L0; never LangChain.

=================  =========================================================================================
``loading``        a Hugging Face id, local folder or GGUF file → one model handle (``ModelBackend``: backend,
                   tokenizer, vocabulary, context length, EOS ids, device); the embedded model
``models``         the process-wide registry: shared handles, one admission queue per in-memory model
``admission``      the bounded queue in front of a model (round-robin by user); token caps
``chat_template``  a conversation → token ids through the model's chat template
``request``        preferences + conversation + options → a :class:`Request` (prompts, resolved options)
``run``            :func:`start_run` (the request policy: profile, request, limits) and :class:`RequestRun`:
                   admission, decode, detokenise, stop strings, deadline, cancel, OOM
``batching``       the ``batching`` setting: concurrent requests on a model sharing one forward per step
``detokenize``     incremental detokenisation and stop strings
``bridge``         a blocking iterator consumed from asyncio through a worker thread
=================  =========================================================================================
"""

from __future__ import annotations

from .admission import AdmissionQueue, check_prompt_tokens, count_prompt_tokens
from .best_of import read_texts
from .batching import BATCHING_MODES, batch_scheduler, batched, batching_mode, set_batching
from .bridge import iterate_in_thread
from .chat_template import encode_chat, render_chat
from .loading import (
    BACKEND_CHOICES,
    EMBEDDED_NAME,
    cache_dir,
    embedded_model_path,
    load_model,
    resolve_backend,
    resolve_model_path,
)
from .models import REGISTRY, ModelRegistry, admission_queue, display_name, release_model, shared_model
from .request import OutputGrammar, PersonaSettings, Request, Truncation, build_request
from .run import RequestRun, start_run

__all__ = [
    "BACKEND_CHOICES",
    "BATCHING_MODES",
    "EMBEDDED_NAME",
    "REGISTRY",
    "AdmissionQueue",
    "ModelRegistry",
    "OutputGrammar",
    "PersonaSettings",
    "Request",
    "RequestRun",
    "Truncation",
    "admission_queue",
    "batch_scheduler",
    "batched",
    "batching_mode",
    "build_request",
    "check_prompt_tokens",
    "count_prompt_tokens",
    "cache_dir",
    "display_name",
    "embedded_model_path",
    "encode_chat",
    "iterate_in_thread",
    "load_model",
    "read_texts",
    "release_model",
    "render_chat",
    "resolve_backend",
    "resolve_model_path",
    "set_batching",
    "shared_model",
    "start_run",
]
