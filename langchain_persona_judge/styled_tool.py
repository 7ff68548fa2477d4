"""A styled-output tool: ChatPersonaJudge behind a LangChain ``BaseTool``, for any agent to call.

``mode="rewrite"`` rewrites the text it is given in the tool's personas (an agent's final answer in a house
style, say); ``mode="answer"`` answers a request in them. Sync and async; callbacks pass through to the model.

.. code-block:: python

    styled = ChatPersonaJudge(temperature=0).as_styled_tool(["concise", "humor"])
    styled.invoke({"text": "The meeting moved to 3 pm on Thursday."})
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForToolRun, CallbackManagerForToolRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage
from langchain_core.tools import BaseTool
from pydantic import BaseModel, ConfigDict, Field, create_model

from .personas import Persona, PersonaError, load_registry

if TYPE_CHECKING:  # the chat model builds this tool (as_styled_tool), so this module must not import it back
    from .chat_models import ChatPersonaJudge

Mode = Literal["rewrite", "answer"]
PreferenceLike = str | Persona | tuple[str, dict[str, Any]]

REWRITE_INSTRUCTIONS = (
    "Rewrite the text the user gives you. Keep its meaning and every fact, name and number; change only how it "
    "is written. Reply with the rewritten text only."
)


class StyledRequest(BaseModel):
    """The tool's arguments."""

    text: str = Field(description="The text to rewrite (or, for an answering tool, the request to answer).")


def _request_with_personas(names: Sequence[str]) -> type[BaseModel]:
    """Arguments with an optional choice of personas, limited to registry names (so that a constrained caller
    can only pick personas that exist)."""
    choice = Literal[tuple(names)]  # type: ignore[valid-type]
    return create_model(
        "StyledRequestWithPersonas",
        __base__=StyledRequest,
        preferences=(
            list[choice] | None,  # type: ignore[valid-type]
            Field(default=None, description="Optional: personas to write in instead of the tool's own."),
        ),
    )


def _usable_personas(llm: ChatPersonaJudge) -> list[str]:
    """Registry personas that render with no variables given (a caller cannot pass any)."""
    registry = load_registry(llm.registry)
    usable = []
    for name in registry.names():
        try:
            registry.render(name)
        except PersonaError:
            continue
        usable.append(name)
    return usable


class PersonaJudgeTool(BaseTool):
    """Rewrites a text, or answers a request, in given personas with Persona-judge decoding."""

    name: str = "styled_writer"
    description: str = "Rewrites a text in a given style."
    args_schema: type[BaseModel] = StyledRequest
    llm: BaseChatModel
    """The ChatPersonaJudge that writes (its own preferences are the default personas)."""
    preferences: list[PreferenceLike] | None = None
    """The personas to write in; None: the model's own."""
    mode: Mode = "rewrite"
    instructions: str = REWRITE_INSTRUCTIONS
    """The system turn of ``rewrite`` mode."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    @classmethod
    def from_model(
        cls,
        llm: ChatPersonaJudge,
        preferences: Sequence[PreferenceLike] | None = None,
        *,
        name: str = "styled_writer",
        description: str | None = None,
        mode: Mode = "rewrite",
        choose_personas: bool = False,
    ) -> PersonaJudgeTool:
        """The tool for ``llm``; ``choose_personas`` lets the caller pick registry personas per call."""
        prefs = list(preferences) if preferences is not None else None
        if description is None:
            shown = prefs if prefs is not None else list(llm.preferences)
            styles = "; ".join(_label(p) for p in shown) or "the model's default style"
            action = "Rewrites the given text" if mode == "rewrite" else "Answers the given request"
            description = f"{action} in this style: {styles}. Returns the text only."
        schema = _request_with_personas(_usable_personas(llm)) if choose_personas else StyledRequest
        return cls(llm=llm, preferences=prefs, name=name, description=description, mode=mode, args_schema=schema)

    def _messages(self, text: str) -> list[BaseMessage]:
        if self.mode == "rewrite":
            return [SystemMessage(self.instructions), HumanMessage(text)]
        return [HumanMessage(text)]

    def _overrides(self, preferences: list[str] | None) -> dict[str, Any]:
        chosen = preferences if preferences else self.preferences
        return {} if chosen is None else {"preferences": list(chosen)}

    def _run(
        self,
        text: str,
        preferences: list[str] | None = None,
        run_manager: CallbackManagerForToolRun | None = None,
    ) -> str:
        config = {"callbacks": run_manager.get_child()} if run_manager else None
        answer = self.llm.invoke(self._messages(text), config=config, **self._overrides(preferences))
        return answer.text.strip()

    async def _arun(
        self,
        text: str,
        preferences: list[str] | None = None,
        run_manager: AsyncCallbackManagerForToolRun | None = None,
    ) -> str:
        config = {"callbacks": run_manager.get_child()} if run_manager else None
        answer = await self.llm.ainvoke(self._messages(text), config=config, **self._overrides(preferences))
        return answer.text.strip()


def _label(preference: PreferenceLike) -> str:
    if isinstance(preference, Persona):
        return preference.name
    if isinstance(preference, tuple):
        return preference[0]
    return preference


__all__ = ["REWRITE_INSTRUCTIONS", "PersonaJudgeTool", "StyledRequest"]
