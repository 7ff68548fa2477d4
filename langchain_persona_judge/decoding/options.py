"""What a decoding run is asked for and what it reports: options (validated once), trace, stats, result.

Pure data: no model calls here. The options' fields, defaults and checks come from
:mod:`langchain_persona_judge.option_specs`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, make_dataclass
from typing import Any, Literal, NoReturn, Protocol, runtime_checkable

import torch

from ..errors import InvalidArgumentError, InvalidOptionError
from ..option_specs import OptionSpec, options_for

TokenKind = Literal["accepted", "residual", "bonus", "combined"]
FinishReason = Literal["stop", "length"]
Schedule = Literal["speculative", "lockstep"]
SCHEDULES: tuple[Schedule, ...] = ("speculative", "lockstep")
"""The concrete schedules; ``DecodingOptions.schedule`` also takes ``"auto"`` (see :func:`.preferred_schedule`)."""
Combine = Literal["judge", "product"]
COMBINE_RULES: tuple[Combine, ...] = ("judge", "product")
"""How the personas' distributions make the emitted token's: Persona-judge, or the weighted product."""


@runtime_checkable
class TokenConstraint(Protocol):
    """Restricts which tokens may come next (a grammar, a JSON schema...), following the emitted text.

    The engine asks for the mask before each draft, advances the constraint with every draft, asks again
    after the last draft (the bonus position), and rolls the rejected drafts back. The SAME mask is applied
    to the drafter's and the judge's distribution at a position, so every emitted token follows the judge's
    distribution restricted to the allowed tokens, exactly.
    """

    def allowed(self) -> torch.Tensor | None:
        """A bool mask over the vocabulary of the tokens allowed next (None: no restriction)."""

    def advance(self, token_id: int) -> None:
        """Consume one token."""

    def rollback(self, count: int) -> None:
        """Undo the last ``count`` advances."""


def _fail(name: str, value: Any, need: str) -> NoReturn:
    raise InvalidOptionError(f"{name}={value!r} is invalid: {need}.")


class _Checks:
    """What :class:`DecodingOptions` does besides holding its fields (declared in :mod:`..option_specs`)."""

    combine: Combine
    schedule: Schedule | Literal["auto"]
    weights: tuple[float, ...] | None
    guidance: float | None

    @property
    def gamma(self) -> float:
        """The guidance strength this decode uses (``guidance=None``: 1; a profile's default is set before)."""
        return 1.0 if self.guidance is None else float(self.guidance)

    def __post_init__(self) -> None:
        weights = self.weights
        if weights is not None and not isinstance(weights, (tuple, str, bytes)) and hasattr(weights, "__iter__"):
            object.__setattr__(self, "weights", tuple(weights))
        # Each option alone: its type, range or choices, as declared.
        for spec in options_for("engine"):
            value = getattr(self, spec.field_name)
            if not spec.is_valid(value, "engine"):
                _fail(spec.field_name, value, f"pass {spec.what('engine')}")
        # The options together.
        if self.weights is not None and self.combine == "judge":
            _fail("weights", self.weights, "weights apply to combine='product'; Persona-judge rotates its roles "
                  "evenly (pass combine='product', or leave weights unset)")
        if self.combine == "product" and self.schedule == "speculative":
            _fail("schedule", self.schedule, "combine='product' reads every persona in one batched forward per "
                  "token; pass schedule='lockstep' or 'auto'")
        if self.gamma != 1.0 and self.schedule == "speculative":
            _fail("schedule", self.schedule, "guidance reads the reference prompt in the same batched forward as "
                  "the personas; pass schedule='lockstep' or 'auto'")

    @property
    def needs_reference(self) -> bool:
        """Whether the rule reads a reference prompt (γ ≠ 1, or product weights that do not sum to 1)."""
        if self.gamma != 1.0:
            return True
        return self.combine == "product" and self.weights is not None and abs(sum(self.weights) - 1.0) > 1e-9

    @classmethod
    def from_kwargs(cls, options: dict[str, Any]) -> DecodingOptions:
        """Options from keyword arguments; an unknown name is refused with the list of known ones."""
        known = [f.name for f in fields(cls)]  # type: ignore[arg-type]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise InvalidArgumentError(f"Unknown decoding option(s) {unknown}; the options are {sorted(known)}.")
        return cls(**options)  # type: ignore[return-value]


def _engine_type(spec: OptionSpec) -> Any:
    return (tuple[float, ...] | None) if spec.sequence else spec.annotation()


def _docstring() -> str:
    lines = [
        "Decoding options, validated on creation so bad values fail before any forward pass.",
        "",
        "The one configuration object of a decode: the chat model builds it from its fields, the CLI through the",
        "chat model, and :func:`~langchain_persona_judge.decoding.generate` from its keyword arguments. The fields",
        "and their checks come from :data:`langchain_persona_judge.option_specs.OPTIONS` (the engine's defaults:",
        "the paper's settings and temperature-1 sampling).",
        "",
        "Attributes:",
    ]
    for spec in options_for("engine"):
        default = spec.default_for("engine")
        lines.append(f"    {spec.field_name}: {spec.help} (default {default!r}). {spec.doc}".rstrip())
    return "\n".join(lines)


DecodingOptions = make_dataclass(
    "DecodingOptions",
    [(s.field_name, _engine_type(s), field(default=s.default_for("engine"))) for s in options_for("engine")],
    bases=(_Checks,),
    frozen=True,
    namespace={"__module__": __name__, "__doc__": _docstring()},
)


@dataclass(frozen=True)
class TraceEntry:
    """Where one emitted token came from."""

    token_id: int
    drafter: int
    """Index of the persona that drafted in this token's iteration."""
    judge: int
    """Index of the persona whose distribution this token follows."""
    kind: TokenKind
    """``accepted`` draft, ``residual`` resample after a rejection, or ``bonus`` after all were accepted."""
    iteration: int


@dataclass
class DecodingStats:
    """Counters of one decoding run."""

    iterations: int = 0
    drafted: int = 0
    """Drafts proposed (over all iterations)."""
    accepted: int = 0
    """Drafts the judge accepted."""
    forward_calls: int = 0
    """Model forward passes, drafter and judge together."""
    positions: int = 0
    """Token positions fed to the model over all forwards (prompt reads included)."""
    prompt_cached: int = 0
    """Prompt tokens not fed because the backend's prompt cache already held them (llama.cpp)."""
    trace: list[TraceEntry] = field(default_factory=list)
    """One entry per token in ``Generation.token_ids``."""

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def emitted(self) -> int:
        return len(self.trace)

    @property
    def tokens_per_iteration(self) -> float:
        return self.emitted / self.iterations if self.iterations else 0.0

    @property
    def forward_calls_per_token(self) -> float:
        return self.forward_calls / self.emitted if self.emitted else 0.0

    def to_dict(self, *, with_trace: bool = False) -> dict[str, Any]:
        """Plain numbers (and optionally the trace as dicts), for JSON and response metadata."""
        out: dict[str, Any] = {
            "iterations": self.iterations,
            "drafted": self.drafted,
            "accepted": self.accepted,
            "forward_calls": self.forward_calls,
            "positions": self.positions,
            "prompt_cached": self.prompt_cached,
            "emitted": self.emitted,
            "acceptance_rate": round(self.acceptance_rate, 4),
            "tokens_per_iteration": round(self.tokens_per_iteration, 4),
            "forward_calls_per_token": round(self.forward_calls_per_token, 4),
        }
        if with_trace:
            out["trace"] = [asdict(entry) for entry in self.trace]
        return out


@dataclass
class Generation:
    """The result of a decoding run."""

    token_ids: list[int]
    """Emitted ids, without the EOS that stopped decoding."""
    finish_reason: FinishReason | None
    """``stop`` (EOS), ``length`` (max_new_tokens or the context limit), None while still running."""
    stats: DecodingStats


__all__ = [
    "COMBINE_RULES",
    "SCHEDULES",
    "Combine",
    "DecodingOptions",
    "DecodingStats",
    "FinishReason",
    "Generation",
    "Schedule",
    "TokenConstraint",
    "TokenKind",
    "TraceEntry",
]
