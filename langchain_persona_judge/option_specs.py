"""Every decoding and request option, declared once: name, type, default(s), allowed values, help, surfaces.

Each surface is built from (or checked against) :data:`OPTIONS`:

* ``engine``: the fields of :class:`~langchain_persona_judge.decoding.DecodingOptions` and their per-field checks;
* ``chat``: :class:`~langchain_persona_judge.ChatPersonaJudge`'s option fields (:func:`pydantic_fields`);
* ``cli``: the ``persona-judge`` flags (the CLI reads :attr:`OptionSpec.flags`, ``group``, ``metavar``);
* ``http``: a request body's fields, every one optional (:func:`http_fields`).

Two sets of defaults, because the engine and the chat model serve different callers: the engine
(:func:`langchain_persona_judge.decoding.generate`) defaults to the paper's settings and plain temperature-1
sampling (``engine_default``), so a caller who passes nothing gets the method as published; the chat model, the
CLI and a request body default to what reads well on a small local model (``default``: temperature 0.7, nucleus
0.95). Adding an option is one entry here plus its implementation; ``tests/unit_tests/test_option_specs.py``
fails when a surface lacks a declared option or restates a default.

Layer L0: imports nothing from the package.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field
from pydantic.fields import FieldInfo

Surface = Literal["engine", "chat", "cli", "http"]
SURFACES: tuple[Surface, ...] = ("engine", "chat", "cli", "http")

_SAME: Any = object()
"""``engine_default``/``engine_bounds`` left unset: the engine uses the chat model's."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class Bounds:
    """The range a number must lie in (each bound optional); ``finite`` also refuses inf and NaN."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    finite: bool = False

    def holds(self, value: float) -> bool:
        if self.finite and not math.isfinite(value):
            return False
        if math.isnan(value):
            return False
        return (
            (self.ge is None or value >= self.ge)
            and (self.gt is None or value > self.gt)
            and (self.le is None or value <= self.le)
            and (self.lt is None or value < self.lt)
        )

    def text(self) -> str:
        """``>= 1``, ``in (0, 1]``, ``> 0``... ("" when unbounded)."""
        low = ("[", self.ge) if self.ge is not None else ("(", self.gt) if self.gt is not None else None
        high = ("]", self.le) if self.le is not None else (")", self.lt) if self.lt is not None else None
        if low and high:
            return f"in {low[0]}{_number(low[1])}, {_number(high[1])}{high[0]}"
        if low:
            return f"{'>=' if low[0] == '[' else '>'} {_number(low[1])}"
        if high:
            return f"{'<=' if high[0] == ']' else '<'} {_number(high[1])}"
        return ""

    def constraints(self) -> dict[str, Any]:
        """The bounds as pydantic ``Field`` keyword arguments."""
        return {k: v for k, v in (("ge", self.ge), ("gt", self.gt), ("le", self.le), ("lt", self.lt)) if v is not None}


@dataclass(frozen=True)
class OptionSpec:
    """One option. ``name`` is its chat-model field, CLI destination and request-body key."""

    name: str
    type: type
    """``int``, ``float``, ``bool`` or ``str`` (of one value; ``sequence`` makes it one per persona)."""
    default: Any
    """The chat model's, the CLI's and a request body's default."""
    help: str
    """One line: the CLI's help and the chat model's field description."""
    surfaces: frozenset[Surface]
    engine_name: str | None = None
    """The :class:`DecodingOptions` field, when it is named otherwise (``max_tokens`` -> ``max_new_tokens``)."""
    engine_default: Any = _SAME
    """The engine's default, when it differs from ``default`` (declared here, next to it)."""
    bounds: Bounds = Bounds()
    engine_bounds: Any = _SAME
    """The engine's range, when it differs (temperature: 0 is greedy for the chat model, ``do_sample`` there)."""
    choices: tuple[str, ...] = ()
    nullable: bool = False
    """None is allowed (meaning the ``note`` says: off, or the schedule's default)."""
    sequence: bool = False
    """One value per persona (a non-empty list)."""
    note: str = ""
    """Appended to error messages: what 0 or None means, a usual value."""
    need: str = ""
    """What to pass, when the text derived from type and bounds would not read well (e.g. a seed's range)."""
    doc: str = ""
    """A longer explanation for the engine's docstring (how the option acts)."""
    flags: tuple[str, ...] = ()
    """CLI flags (default ``--name-with-dashes``)."""
    metavar: str | None = None
    group: str = "decoding"
    """The CLI's argument group."""
    per_call: bool = True
    """The chat model takes it as a per-call keyword argument too."""

    # -- names and defaults per surface --------------------------------------------------------------------------

    @property
    def field_name(self) -> str:
        """The :class:`DecodingOptions` field name."""
        return self.engine_name or self.name

    def default_for(self, surface: Surface) -> Any:
        if surface == "engine" and self.engine_default is not _SAME:
            return self.engine_default
        return self.default

    def bounds_for(self, surface: Surface) -> Bounds:
        return self.engine_bounds if surface == "engine" and self.engine_bounds is not _SAME else self.bounds

    def cli_flags(self) -> tuple[str, ...]:
        return self.flags or ("--" + self.name.replace("_", "-"),)

    # -- checks ------------------------------------------------------------------------------------------------

    def what(self, surface: Surface = "chat") -> str:
        """What a value must be, for error messages: ``an integer >= 1 (the paper uses 4)``."""
        if self.need:
            text = self.need
        elif self.choices:
            text = "one of " + ", ".join(map(repr, self.choices))
        else:
            kind = {int: "an integer", float: "a finite number" if self.bounds_for(surface).finite else "a number",
                    bool: "True or False", str: "a string", object: "a value"}[self.type]
            if self.sequence:
                kind = "one finite number per persona"
            text = f"{kind} {self.bounds_for(surface).text()}".strip()
        return f"{text} ({self.note})" if self.note else text

    def is_valid(self, value: Any, surface: Surface = "chat") -> bool:
        """Whether ``value`` is allowed on ``surface`` (type, range, choices; no cross-option rule)."""
        if value is None:
            return self.nullable
        if self.sequence:
            if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
                return False
            items = list(value)
            return bool(items) and all(_is_real(v) and math.isfinite(v) for v in items)
        if self.choices:
            return isinstance(value, str) and value in self.choices
        if self.type is bool:
            return isinstance(value, bool)
        if self.type is str:
            return isinstance(value, str)
        if self.type is object:  # checked where it is used (eos_token_id: by the model's vocabulary)
            return True
        if not (_is_int(value) if self.type is int else _is_real(value)):
            return False
        return self.bounds_for(surface).holds(value)

    # -- pydantic -----------------------------------------------------------------------------------------------

    def annotation(self) -> Any:
        """The chat model's (and a request body's) type: ``Literal`` for choices, ``list`` for a sequence."""
        if self.choices:
            base: Any = Literal[self.choices]  # type: ignore[valid-type]
        elif self.sequence:
            base = list[Annotated[self.type, Field(allow_inf_nan=False)]]  # type: ignore[name-defined]
        else:
            base = self.type
        return base | None if self.nullable else base

    def field_info(self, default: Any) -> FieldInfo:
        extra: dict[str, Any] = dict(self.bounds.constraints())
        if self.type is float and not self.sequence and not self.choices and self.bounds.finite:
            extra["allow_inf_nan"] = False
        if self.sequence:
            extra["min_length"] = 1
        return Field(default=default, description=self.help, **extra)


_DECODING = frozenset({"engine", "chat", "cli", "http"})
_REQUEST = frozenset({"chat", "cli", "http"})

OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec(
        "max_tokens", int, 256, "most new tokens per answer", _DECODING, engine_name="max_new_tokens",
        bounds=Bounds(ge=1), flags=("-n", "--max-tokens"), metavar="N",
        doc="Not counting the EOS that stops decoding.",
    ),
    OptionSpec(
        "lookahead", int, 4, "tokens drafted per iteration, λ", _DECODING, bounds=Bounds(ge=1),
        note="the paper uses 4", metavar="N",
    ),
    OptionSpec(
        "do_sample", bool, True, "sample (True) or take the argmax (False, deterministic)", frozenset({"engine"}),
        doc="The chat model samples when its temperature is above 0.",
    ),
    OptionSpec(
        "temperature", float, 0.7, "sampling temperature; 0 is greedy and deterministic", _DECODING,
        engine_default=1.0, bounds=Bounds(ge=0.0, finite=True), engine_bounds=Bounds(gt=0.0, finite=True),
        note="0 is greedy; in DecodingOptions, do_sample=False", flags=("-t", "--temperature"),
        metavar="T",
        doc="The engine's is applied to drafter and judge logits alike (sampling only; greedy is do_sample=False).",
    ),
    OptionSpec(
        "top_k", int, None, "keep the K likeliest tokens", _DECODING, bounds=Bounds(ge=0), nullable=True,
        note="0 or None: off", metavar="K",
    ),
    OptionSpec(
        "top_p", float, 0.95, "nucleus sampling threshold in (0, 1]", _DECODING, engine_default=None,
        bounds=Bounds(gt=0.0, le=1.0), nullable=True, note="1 or None: off", metavar="P",
    ),
    OptionSpec(
        "seed", int, None, "seed for reproducible sampling", _DECODING, bounds=Bounds(ge=-(2**63), lt=2**64),
        nullable=True, need="an integer in [-2**63, 2**64) (torch's seed range) or None",
        doc="The same seed gives the same tokens.",
    ),
    OptionSpec(
        "draft_confidence", float, None, "stop drafting after a draft the drafter gives less than this probability",
        frozenset({"engine", "chat", "http"}), engine_default=0.0, bounds=Bounds(ge=0.0, lt=1.0), nullable=True,
        need="a probability in [0, 1) or None", note="0: always draft λ; None: 0.5 speculative, 0 lockstep",
        doc="A draft the drafter itself doubts is likely to be rejected, and every draft after it is then wasted "
        "work; the rule reads only the drafter's own distributions, so every emitted token still follows the "
        "judge's distribution exactly (None: see defaults.draft_confidence_for).",
    ),
    OptionSpec(
        "schedule", str, "auto", "how the forwards are laid out (the answer's law is the same either way)",
        _DECODING, choices=("speculative", "lockstep", "auto"),
        doc="speculative: the paper's (λ drafter forwards, then one judge forward); lockstep: every persona in one "
        "batched forward per token; auto: lockstep where a few batch rows cost about one (a GPU, prepacked fp32 "
        "CPU weights) and for product or guidance, else speculative.",
    ),
    OptionSpec(
        "combine", str, "judge", "judge (Persona-judge: each token follows the current judge) or product (a "
        "weighted product: a token must suit every persona)", _DECODING, choices=("judge", "product"),
        group="decoding rule and strength", doc="product: Σ w_i log p_i (MOD), one batched forward per token.",
    ),
    OptionSpec(
        "weights", float, None, "one weight per persona for combine=product (default: uniform)", _DECODING,
        nullable=True, sequence=True, flags=("--weight",), metavar="W", group="decoding rule and strength",
        doc="Negative weights steer away from a persona; Persona-judge takes none (its roles rotate evenly).",
    ),
    OptionSpec(
        "guidance", float, None, "preference strength γ: 1 is off, 1.5-3 amplifies each preference, below 0 "
        "steers away", _DECODING, bounds=Bounds(finite=True), nullable=True, engine_default=1.0,
        note="1: the personas themselves, above 1: stronger; None: 1, or 4 for a learned profile",
        metavar="G", group="decoding rule and strength",
        doc="Each persona's distribution becomes log p_0 + γ (log p_i − log p_0) against the reference prompt "
        "(None: see defaults.guidance_for).",
    ),
    OptionSpec(
        "repetition_penalty", float, None, "penalise tokens the answer already has (1.1-1.3 stops a small model "
        "looping)", _DECODING, bounds=Bounds(gt=0.0, finite=True), nullable=True, note="1 or None: off",
        metavar="P", group="decoding rule and strength",
        doc="transformers' repetition penalty, applied to every persona's row alike before the rule combines them.",
    ),
    OptionSpec(
        "no_repeat_ngram_size", int, None, "never repeat an N-gram of the answer", _DECODING, bounds=Bounds(ge=0),
        nullable=True, note="0 or None: off", flags=("--no-repeat-ngram",), metavar="N",
        group="decoding rule and strength",
    ),
    OptionSpec(
        "eos_bias", float, 0.0, "added to the end-of-turn tokens' logits: above 0 ends answers sooner, below 0 later",
        frozenset({"engine"}), bounds=Bounds(ge=-20.0, le=20.0, finite=True),
        doc="Applied to every row alike before the rule combines them, so the combined distribution's log-odds of "
        "stopping shift by exactly this much (a preference profile's learned length weight sets it).",
    ),
    OptionSpec(
        "eos_token_id", object, None, "token id(s) that end decoding (None: the model's generation config)",
        frozenset({"engine"}), nullable=True,
    ),
    OptionSpec(
        "profile_decoding", str, "product", "how a preference profile decodes: its poles as one weighted product "
        "(product), or N answers (the product's, the plain one, one per pole) ranked by the profile's reward "
        "(best_of_n, PReF's)", _REQUEST, choices=("product", "best_of_n"), group="decoding rule and strength",
    ),
    OptionSpec(
        "best_of", int, 4, "how many candidate answers profile_decoding=best_of_n ranks", _REQUEST,
        bounds=Bounds(ge=2, le=16), metavar="N", group="decoding rule and strength",
        note="each is a whole decode: N times the time of one answer",
    ),
    OptionSpec(
        "composition", str, "split", "how several preferences become personas: one each, roles rotating (split); "
        "two groups (pair, the paper's); one persona with all of them (all, the direct prompt)", _REQUEST,
        choices=("split", "pair", "all"), group="personas",
    ),
    OptionSpec(
        "preference_layout", str, "system", "where preferences go: the persona's system turn or a user turn "
        "before the question (user_turn, the paper's code)", _REQUEST, choices=("system", "user_turn"),
        flags=("--layout",), group="personas",
    ),
    OptionSpec(
        "negative_preference", str, None, "what guidance steers away from (default: no preference at all)",
        _REQUEST, nullable=True, flags=("--negative",), metavar="TEXT", group="decoding rule and strength",
    ),
    OptionSpec(
        "truncation", str, "error", "a conversation longer than the context: raise ContextLengthError (error) or "
        "drop the oldest turns until it fits (drop_oldest)", frozenset({"chat", "http"}),
        choices=("error", "drop_oldest"),
    ),
    OptionSpec(
        "timeout", float, None, "seconds a call may take, waiting for the model included (RequestTimeoutError)",
        frozenset({"chat"}), bounds=Bounds(gt=0.0), nullable=True, per_call=False,
    ),
)
"""Every option, in the order the engine's fields and the CLI's flags take."""

BY_NAME: Mapping[str, OptionSpec] = {spec.name: spec for spec in OPTIONS}


def options_for(surface: Surface) -> Iterator[OptionSpec]:
    """The options ``surface`` exposes, in declaration order."""
    return (spec for spec in OPTIONS if surface in spec.surfaces)


def pydantic_fields(surface: Surface = "chat") -> dict[str, tuple[Any, FieldInfo]]:
    """``{name: (type, Field)}`` for ``pydantic.create_model``: the options of ``surface`` with their defaults."""
    return {spec.name: (spec.annotation(), spec.field_info(spec.default_for(surface))) for spec in options_for(surface)}


def http_fields() -> dict[str, tuple[Any, FieldInfo]]:
    """A request body's option fields for ``pydantic.create_model``: every one optional (None: the server's
    default, which is ``default``), with the declared type, range and choices, and the help as description."""
    return {
        spec.name: (spec.annotation() | None, spec.field_info(None)) for spec in options_for("http")
    }


__all__ = [
    "BY_NAME",
    "OPTIONS",
    "SURFACES",
    "Bounds",
    "OptionSpec",
    "Surface",
    "http_fields",
    "options_for",
    "pydantic_fields",
]
