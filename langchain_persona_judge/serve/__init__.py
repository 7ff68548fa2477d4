"""An OpenAI-compatible server for Persona-judge (layer L4, beside the CLI; it uses the runtime, not LangChain).

``create_app(settings)`` returns the ASGI app; ``persona-judge serve`` runs it with uvicorn. Any OpenAI client
(the ``openai`` SDK, LangChain's ``ChatOpenAI``, curl) calls ``POST /v1/chat/completions`` with the Persona-judge
fields (``preferences``, ``guidance``, ``profile``...) at the top level of the body (the SDKs' ``extra_body``).

===============  ===========================================================================================
``settings``     :class:`ServeSettings`: the model, admission limits, API keys, the body cap
``schema``       the request body: OpenAI's fields, Persona-judge's, and the refused ones (one declaration)
``completions``  a body → a runtime run; the run's text → ``chat.completion`` objects and chunks
``errors``       OpenAI's error shape and the status of every error
``app``          the routes, authentication, streaming, disconnects
===============  ===========================================================================================
"""

from __future__ import annotations

from .app import create_app
from .errors import ApiError
from .settings import ServeSettings, is_loopback, read_api_keys

__all__ = ["ApiError", "ServeSettings", "create_app", "is_loopback", "read_api_keys"]
