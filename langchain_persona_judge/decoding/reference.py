"""The paper's algorithm with no KV cache: the one reference oracle of the tests and the speed benchmark.

The paper's code (``trans_speculative_sampling`` in github.com/Monncyann/Persona-judge, sampling/
speculative_sampling.py) has no KV cache: every drafter step and every judge pass calls the model on the
whole sequence (preference prompt + conversation + emitted tokens + drafts) and gets the logits of every
position back. That is the cost this module reproduces, on one copy of the model:

- drafter: ``lookahead`` forwards, each over its whole prefix, one new draft token each;
- judge: one forward over its whole prefix plus the drafts;
- acceptance: ``u < p/q`` then a resample from ``norm(max(0, p - q))`` (or, greedy, accept while the judge's
  argmax equals the draft) — the same rule as the package's engine.

Deliberate departures from the paper's code, all of which make this path *faster* or comparable to the
engine, so the benchmark's speed-up over it is conservative:

- the tempered/truncated distribution is computed only at the positions that are used (the paper's code
  normalises every position of the prefix, with top-k/top-p, in a Python loop, on every iteration);
- drafting stops at the token budget and at an EOS draft, and decoding stops at EOS, like the engine (the
  paper's code always drafts ``gamma`` tokens and ignores EOS), so both emit exactly the same tokens;
- by default the roles alternate every iteration, like the engine; ``roles="swap_once"`` reproduces the
  paper's code, where persona 0 drafts in the first iteration and persona 1 drafts in all later ones;
- the residual is always ``norm(max(0, p - q))``; ``paper_residual=True`` reproduces the paper's code, which
  switches to ``q - p`` when ``sum(p - q) <= 0`` (a rounding-error coin flip, since both sum to one).

Greedy output equals the engine's greedy output (tests/unit_tests/test_benchmarks.py checks this on tiny
random Llama models), so the two can be timed on identical work.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch.nn import functional as F

from ..errors import InvalidInputError, InvalidOptionError
from .base import eos_ids

Roles = Literal["alternate", "swap_once"]


@dataclass
class NaiveResult:
    token_ids: list[int]
    finish_reason: str
    iterations: int = 0
    drafted: int = 0
    accepted: int = 0
    forward_calls: int = 0
    positions: int = 0
    forward_lengths: list[int] = field(default_factory=list)
    """Sequence length of every forward, in order (each forward re-reads all of it)."""
    trace: list[tuple[int, int, str]] = field(default_factory=list)
    """Per emitted token: (drafter, judge, kind), kind ``accepted``, ``residual`` or ``bonus``."""

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def tokens_per_iteration(self) -> float:
        return len(self.token_ids) / self.iterations if self.iterations else 0.0


def norm_logits(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """The paper's ``norm_logits``: temperature, top-k, top-p (nucleus), softmax. ``logits``: (V,)."""
    logits = logits.float() / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0 < top_p < 1:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1)
        remove = cumulative > top_p
        remove[1:] = remove[:-1].clone()
        remove[0] = False
        logits = logits.masked_fill(remove.scatter(0, order, remove), float("-inf"))
    return F.softmax(logits, dim=-1)


@torch.inference_mode()
def naive_generate(
    model: Any,
    prompts: Sequence[torch.Tensor | list[int]],
    *,
    max_new_tokens: int,
    lookahead: int = 4,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    eos_token_id: int | Iterable[int] | None = None,
    roles: Roles = "alternate",
    paper_residual: bool = False,
    on_iteration: Callable[[int], None] | None = None,
) -> NaiveResult:
    """Persona-judge decoding with no KV cache (see the module docstring). ``prompts``: one per persona.

    ``on_iteration(emitted)`` is called after every iteration with the number of tokens emitted so far.
    """
    seqs = [p.tolist() if isinstance(p, torch.Tensor) else list(p) for p in prompts]
    if not seqs or any(not s for s in seqs):
        raise InvalidInputError("pass one non-empty prompt per persona")
    if roles not in ("alternate", "swap_once"):
        raise InvalidOptionError(f"roles={roles!r}: use 'alternate' or 'swap_once'")
    run = _NaiveRun(model, eos_ids(model, eos_token_id), do_sample, seed, temperature, top_k, top_p)
    result, emitted, n = run.result, run.result.token_ids, len(seqs)
    while True:
        # 1. roles: who drafts and who judges in iteration k
        d_idx, j_idx = _roles(result.iterations, n, roles)
        # 2. draft: up to `lookahead` tokens from the drafter, one whole-prefix forward each
        count = 0 if n == 1 else min(lookahead, max_new_tokens - len(emitted) - 1)
        drafts, q_rows = run.draft(seqs[d_idx] + emitted, count)
        # 3. judge: one forward over its prefix plus the drafts; the distributions at the drafts and after them
        judge = run.logits_of(seqs[j_idx] + emitted + drafts)[-(len(drafts) + 1) :]
        # 4. accept: the drafts the judge keeps, and the token after them (residual or bonus)
        accepted, next_token = run.accept(judge, drafts, q_rows, paper_residual)
        # 5. emit, up to EOS or the budget
        run.emit(drafts, accepted, next_token, (d_idx, j_idx), max_new_tokens)
        if on_iteration is not None:
            on_iteration(len(emitted))
        if result.finish_reason == "stop" or len(emitted) >= max_new_tokens:
            return result


def _roles(k: int, n: int, roles: Roles) -> tuple[int, int]:
    """(drafter, judge) of iteration ``k`` among ``n`` personas."""
    if roles == "alternate":
        return k % n, (k + 1) % n
    return (0, 1 % n) if k == 0 else (1 % n, 0)


class _NaiveRun:
    """The state of one :func:`naive_generate` call and its steps: forwards, drafting, acceptance, emitting."""

    def __init__(
        self, model: Any, eos: frozenset[int], do_sample: bool, seed: int | None,
        temperature: float, top_k: int | None, top_p: float | None,
    ) -> None:
        self.model = model
        self.device = model.device
        self.eos = eos
        self.generator: torch.Generator | None = None
        if do_sample:
            self.generator = torch.Generator(device=self.device)
            if seed is None:
                self.generator.seed()
            else:
                self.generator.manual_seed(seed)
        self.sampling = (temperature, top_k, top_p)
        self.result = NaiveResult(token_ids=[], finish_reason="length")

    def logits_of(self, tokens: list[int]) -> torch.Tensor:
        """The whole sequence, every time, and the logits of every position (as the paper's code does)."""
        out = self.model(input_ids=torch.tensor([tokens], dtype=torch.long, device=self.device)).logits[0]
        self.result.forward_calls += 1
        self.result.positions += len(tokens)
        self.result.forward_lengths.append(len(tokens))
        return out

    def dist(self, row: torch.Tensor) -> torch.Tensor:
        return norm_logits(row, *self.sampling)

    def draft(self, prefix: list[int], count: int) -> tuple[list[int], list[torch.Tensor]]:
        """Up to ``count`` drafter tokens after ``prefix`` (stopping at an EOS draft), and (sampling) the
        drafter's distribution each was drawn from."""
        drafts: list[int] = []
        q_rows: list[torch.Tensor] = []
        for _ in range(count):
            last = self.logits_of(prefix + drafts)[-1]
            if self.generator is None:
                token = int(last.argmax())
            else:
                q = self.dist(last)
                token = int(torch.multinomial(q, 1, generator=self.generator))
                q_rows.append(q)
            drafts.append(token)
            if token in self.eos:
                break
        return drafts, q_rows

    def accept(
        self, judge: torch.Tensor, drafts: list[int], q_rows: list[torch.Tensor], paper_residual: bool
    ) -> tuple[int, int]:
        """(drafts accepted, the next token): greedy, while the judge's argmax equals the draft; sampling,
        ``u < p/q`` then a draw from ``norm(max(0, p - q))``, or from the judge after every draft."""
        accepted = 0
        if self.generator is None:
            choice = judge.argmax(dim=-1).tolist()
            while accepted < len(drafts) and choice[accepted] == drafts[accepted]:
                accepted += 1
            return accepted, choice[accepted]
        p_rows = [self.dist(judge[i]) for i in range(len(drafts) + 1)]
        for i, token in enumerate(drafts):
            u = float(torch.rand(1, generator=self.generator, device=self.device))
            if u * float(q_rows[i][token]) < float(p_rows[i][token]):
                accepted += 1
            else:
                break
        if accepted < len(drafts):
            diff = p_rows[accepted] - q_rows[accepted]
            if paper_residual and float(diff.sum()) <= 0:
                diff = -diff
            residual = diff.clamp(min=0)
            law = residual / residual.sum() if float(residual.sum()) > 0 else p_rows[accepted]
        else:
            law = p_rows[len(drafts)]
        return accepted, int(torch.multinomial(law, 1, generator=self.generator))

    def emit(
        self, drafts: list[int], accepted: int, next_token: int, roles: tuple[int, int], max_new_tokens: int
    ) -> None:
        """Count the iteration; append the accepted drafts and the next token (unless an accepted draft is EOS),
        stopping at EOS (``stop``) or the budget (``length``)."""
        result = self.result
        result.iterations += 1
        result.drafted += len(drafts)
        result.accepted += accepted
        new = drafts[:accepted]
        kinds = ["accepted"] * accepted
        if not any(t in self.eos for t in new):
            new.append(next_token)
            kinds.append("bonus" if accepted == len(drafts) else "residual")
        for token, kind in zip(new, kinds):
            if token in self.eos:
                result.finish_reason = "stop"
                break
            result.token_ids.append(token)
            result.trace.append((*roles, kind))
            if len(result.token_ids) >= max_new_tokens:
                result.finish_reason = "length"
                break


def iteration_schedule(
    prompt_lengths: Sequence[int], emitted_before: Sequence[int], drafted: Sequence[int], roles: Roles = "alternate"
) -> list[list[int]]:
    """Forward lengths the naive path runs in each iteration, for a given iteration history.

    ``emitted_before[k]``: tokens emitted before iteration k; ``drafted[k]``: drafts in iteration k (greedy:
    the engine's own history, see :func:`engine_history`). Iteration k runs ``drafted[k]`` drafter forwards
    of lengths ``P_d + e, ..., P_d + e + d - 1`` and one judge forward of length ``P_j + e + d``.
    """
    n = len(prompt_lengths)
    out: list[list[int]] = []
    for k, (e, d) in enumerate(zip(emitted_before, drafted)):
        d_idx, j_idx = _roles(k, n, roles)
        out.append([prompt_lengths[d_idx] + e + i for i in range(d)] + [prompt_lengths[j_idx] + e + d])
    return out


def forward_schedule(
    prompt_lengths: Sequence[int], emitted_before: Sequence[int], drafted: Sequence[int], roles: Roles = "alternate"
) -> list[int]:
    """All forward lengths of :func:`iteration_schedule`, flattened in order."""
    return [length for it in iteration_schedule(prompt_lengths, emitted_before, drafted, roles) for length in it]


def engine_history(generation: Any, max_new_tokens: int, lookahead: int, n_personas: int) -> tuple[list[int], list[int]]:
    """(emitted_before, drafted) per iteration, rebuilt from an engine ``Generation`` decoded with EOS off.

    With no EOS, iteration k drafts ``min(lookahead, remaining - 1)`` tokens (0 with one persona), and the
    trace says how many tokens each iteration emitted.
    """
    per_iteration = [0] * generation.stats.iterations
    for entry in generation.stats.trace:
        per_iteration[entry.iteration] += 1
    emitted_before, drafted, e = [], [], 0
    for count in per_iteration:
        emitted_before.append(e)
        drafted.append(0 if n_personas == 1 else min(lookahead, max_new_tokens - e - 1))
        e += count
    return emitted_before, drafted
