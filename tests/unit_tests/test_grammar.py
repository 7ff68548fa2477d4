"""The xgrammar adapter: masks, rollback, the budget guard, caching, and exactness of Persona-judge under a real
grammar (tiny random Llamas with the embedded model's tokenizer; no embedded weights)."""

from __future__ import annotations

import json
import sys
from collections import Counter
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import BaseModel, Field

from langchain_persona_judge.decoding import generate
from langchain_persona_judge.grammar import (
    GRAMMAR_INSTALL,
    Grammar,
    GrammarConstraint,
    GrammarNotInstalledError,
    require_xgrammar,
)
from langchain_persona_judge.grammar import constraint_for as grammar_constraint
from langchain_persona_judge.decoding.backends import TransformersBackend
from langchain_persona_judge.decoding.acceptance import build_warpers, to_probs
from tests.helpers import chi_square_pvalue, full_logits, naive_greedy_masked, tiny_llama

pytest.importorskip("xgrammar", reason=f"needs the grammar extra: {GRAMMAR_INSTALL}")


class Person(BaseModel):
    name: str = Field(description="The person's name")
    age: int
    tags: list[str]


@pytest.fixture(scope="module")
def model(tokenizer: Any) -> Any:
    return tiny_llama(seed=4, vocab_size=len(tokenizer), sharpness=6.0, eos_token_id=tokenizer.eos_token_id)


def constraint_for(model: Any, tokenizer: Any, grammar: Grammar, budget: int | None = None) -> GrammarConstraint:
    """The constraint the runtime builds: the mask size and stop ids from the model's handle."""
    handle = TransformersBackend(model, tokenizer)
    return grammar_constraint(tokenizer, grammar, vocab_size=handle.vocab_size, stop_token_ids=handle.eos_token_ids,
                              budget=budget)


def _replay(model: Any, tokenizer: Any, grammar: Grammar, tokens: list[int]) -> GrammarConstraint:
    constraint = constraint_for(model, tokenizer, grammar)
    for token in tokens:
        constraint.advance(token)
    return constraint


# -- the adapter ------------------------------------------------------------------------------------------


def test_grammar_descriptions_are_hashable_and_keep_property_order() -> None:
    schema = {"type": "object", "properties": {"b": {"type": "string"}, "a": {"type": "integer"}}}
    assert Grammar.json_schema(schema) == Grammar.json_schema(dict(schema))
    assert len({Grammar.json_schema(schema), Grammar.json_schema(schema), Grammar.json_object()}) == 2
    assert list(Grammar.json_schema(schema).value["properties"]) == ["b", "a"]  # the order the answer writes
    tag = Grammar.structural_tag({"type": "const_string", "value": "hi"})
    assert tag.kind == "structural_tag" and tag.value["type"] == "structural_tag"


def test_mask_follows_the_grammar_and_only_eos_ends_it(model: Any, tokenizer: Any) -> None:
    constraint = constraint_for(model, tokenizer, Grammar.json_schema({"type": "integer"}))
    allowed = constraint.allowed()
    assert allowed.dtype == torch.bool and allowed.numel() == model.config.vocab_size
    texts = {tokenizer.decode([i]) for i in torch.nonzero(allowed).flatten().tolist()}
    assert texts == {"-", *"0123456789"}
    constraint.advance(tokenizer.convert_tokens_to_ids("4"))
    after = constraint.allowed()
    assert after[tokenizer.eos_token_id] and after[tokenizer.convert_tokens_to_ids("2")]
    assert not after[tokenizer.convert_tokens_to_ids("-")]
    constraint.advance(tokenizer.eos_token_id)
    assert constraint.is_terminated and constraint.steps == 2
    constraint.rollback(1)
    assert not constraint.is_terminated and constraint.steps == 1
    with pytest.raises(RuntimeError, match="does not continue the grammar"):
        constraint.advance(tokenizer.convert_tokens_to_ids("-"))


def test_compiled_grammars_are_cached_per_tokenizer(model: Any, tokenizer: Any) -> None:
    grammar = Grammar.json_schema(Person.model_json_schema())
    first = constraint_for(model, tokenizer, grammar)
    second = constraint_for(model, tokenizer, grammar)
    assert first.compiler is second.compiler  # one xgrammar compiler (and tokenizer info) per tokenizer
    assert first.matcher is not second.matcher  # but a fresh matcher per decode


def test_missing_grammar_engine_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "xgrammar", None)
    with pytest.raises(GrammarNotInstalledError, match=r"pip install 'langchain-persona-judge\[grammar\]'"):
        require_xgrammar()


# -- exactness under a real grammar -------------------------------------------------------------------------


def test_constrained_first_token_follows_masked_judge_distribution_with_a_real_grammar(
    model: Any, tokenizer: Any
) -> None:
    """With an xgrammar integer grammar, the first token follows the judge's distribution restricted to the
    grammar's tokens (and not the drafter's), though drafts come from the drafter and are accepted or not."""
    grammar = Grammar.json_schema({"type": "integer"})
    drafter_prompt, judge_prompt = [1, 2, 3, 4], [5, 6, 7]
    mask = constraint_for(model, tokenizer, grammar).allowed()
    warpers = build_warpers(1.0, None, None)

    def masked(prompt: list[int]) -> np.ndarray:
        logits = full_logits(model, prompt)[-1:].clone()
        logits[0, ~mask] = float("-inf")
        return to_probs(logits, warpers)[0].numpy().astype(float)

    p, q = masked(judge_prompt), masked(drafter_prompt)
    assert 0.5 * np.abs(p - q).sum() > 0.3, "the personas must disagree on the grammar's tokens"

    runs = 1000  # the personas are far apart (TV > 0.3): enough to tell p from q by many orders of magnitude
    first: Counter = Counter()
    kinds: Counter = Counter()
    for seed in range(runs):
        constraint = constraint_for(model, tokenizer, grammar)
        # Two tokens: one draft, judged with the bonus position (a 49k vocabulary makes each forward cost).
        gen = generate(model, [torch.tensor(drafter_prompt), torch.tensor(judge_prompt)], max_new_tokens=2,
                       seed=seed, constraint=constraint)
        first[gen.token_ids[0]] += 1
        kinds[gen.stats.trace[0].kind] += 1
        # The grammar followed exactly what was emitted (rejected drafts rolled back), and it is an integer.
        assert constraint.steps == len(gen.token_ids) + (gen.finish_reason == "stop")
        text = tokenizer.decode(gen.token_ids)
        assert text.lstrip("-").isdigit() and (text.startswith("-") or text == str(int(text))), text
    assert kinds["accepted"] > 100 and kinds["residual"] > 100  # both branches of the rule ran
    assert all(mask[t] for t in first)
    assert chi_square_pvalue(first, p, runs) > 1e-3
    assert chi_square_pvalue(first, q, runs) < 1e-6


@pytest.mark.parametrize("lookahead, n_personas", [(1, 2), (4, 2), (3, 3)])
def test_constrained_greedy_matches_masked_reference_with_a_real_grammar(
    tokenizer: Any, lookahead: int, n_personas: int
) -> None:
    """Greedy Persona-judge under a JSON grammar = the no-cache reference with every position masked by a
    matcher replayed from scratch: masks, drafts, rejections and rollbacks all line up."""
    model = tiny_llama(seed=2, vocab_size=len(tokenizer), sharpness=3.0, eos_token_id=tokenizer.eos_token_id)
    # 24 tokens cannot finish 24 items, so the grammar never ends and EOS never comes up.
    grammar = Grammar.json_schema({"type": "array", "items": {"type": "integer"}, "minItems": 24})
    prompts = [[1, 2, 3, 4], [10, 11, 12, 13, 14, 15], [21, 4]][:n_personas]
    constraint = constraint_for(model, tokenizer, grammar)
    gen = generate(model, [torch.tensor(p) for p in prompts], max_new_tokens=24, lookahead=lookahead,
                   do_sample=False, constraint=constraint)
    expected = naive_greedy_masked(
        model, prompts, lookahead, 24, lambda history: _replay(model, tokenizer, grammar, history).allowed()
    )
    assert gen.token_ids == expected
    assert constraint.steps == 24
    assert tokenizer.decode(gen.token_ids).startswith("[")
    if lookahead > 1:
        assert gen.stats.accepted < gen.stats.drafted  # some drafts were rejected and rolled back


# -- the budget guard ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("budget", [24, 40])
def test_budget_guard_closes_the_document_in_time(tokenizer: Any, budget: int) -> None:
    """A random model rambles inside strings forever; with a budget the answer is still a valid Person."""
    model = tiny_llama(seed=5, vocab_size=len(tokenizer), sharpness=2.0, eos_token_id=tokenizer.eos_token_id)
    grammar = Grammar.json_schema(Person.model_json_schema())
    for seed in range(4):
        constraint = constraint_for(model, tokenizer, grammar, budget=budget)
        gen = generate(model, [torch.tensor([1, 2, 3]), torch.tensor([7, 8])], max_new_tokens=budget, seed=seed,
                       constraint=constraint)
        assert len(gen.token_ids) <= budget
        person = Person.model_validate(json.loads(tokenizer.decode(gen.token_ids)))
        assert isinstance(person.age, int)
        assert constraint.forced > 0  # the guard, not the random model, closed it


def test_budget_guard_leaves_a_roomy_answer_alone(tokenizer: Any) -> None:
    """Far from the end of the budget the guard forces nothing: the masks are the grammar's own."""
    model = tiny_llama(seed=5, vocab_size=len(tokenizer), sharpness=2.0, eos_token_id=tokenizer.eos_token_id)
    grammar = Grammar.json_schema(Person.model_json_schema())
    guarded = constraint_for(model, tokenizer, grammar, budget=200)
    plain = constraint_for(model, tokenizer, grammar)
    for token in tokenizer('{"name": "Ada', add_special_tokens=False)["input_ids"]:
        assert torch.equal(guarded.allowed(), plain.allowed())
        guarded.advance(token)
        plain.advance(token)
    assert guarded.forced == 0


def test_closing_path_completes_nested_documents(model: Any, tokenizer: Any) -> None:
    constraint = constraint_for(model, tokenizer, Grammar.json_schema(Person.model_json_schema()), budget=64)
    for token in tokenizer('{"name": "Ada {[", "age": 3', add_special_tokens=False)["input_ids"]:
        constraint.advance(token)
    path = constraint._closing_path()
    assert path is not None
    text = '{"name": "Ada {[", "age": 3' + tokenizer.decode(path)
    assert Person.model_validate(json.loads(text)).name == "Ada {["
    assert constraint.steps == len(tokenizer('{"name": "Ada {[", "age": 3', add_special_tokens=False)["input_ids"])
