"""benchmarks/learning.py, stage 5: every way of decoding with a learned profile, against the plain answer and
against the direct prompt that states the user's preference in words.

Each simulated user's profile after ``DECODE_AFTER`` choices (its L2 chosen by leave-one-out on those choices
alone) answers that user's own evaluation prompts, drawn fresh for the user, under every decoding option:

``product@γ``            the profile's poles as one weighted product, guidance γ (personas only: the profile refitted
                         without the length feature, on the same choices)
``product+length@γ``     the same with the length feature: its weight becomes an end-of-turn bias −γw
``best_of_N+length@γ``   PReF's best-of-N: N candidates (the product, the plain answer, the profile's poles) ranked
                         by the profile's reward ``w · φ`` (length included)

Beside them, per prompt: the plain answer (no preference; one per prompt, shared by every user; and once more with
another seed, the A/A control, whose win rate against the first must hold one half) and, per user type
and prompt, the direct answer (the user's preference texts, the Personalized Soups wordings, as the system prompt:
what a user who wrote the preference down would get). An outcome is the user's own noise-free judgment: the mean
over the user's dimensions of the per-dimension outcome (1, 0.5 or 0; benchmarks/metrics.py's margins and guards).
Every decode samples (the learning benchmark's settings) with the same seed per prompt.
"""

from __future__ import annotations

import dataclasses
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from benchmarks.learning_stats import done_when, median_shortening, win_summary
from benchmarks.metrics import DIMENSIONS, compare, guard_failures

_OPTION = re.compile(r"^(product|best_of_(\d+))(\+length)?@([0-9.]+)$")


@dataclasses.dataclass(frozen=True)
class Option:
    """One way of decoding with a profile (see the module's docstring for the names)."""

    rule: str  # "product" or "best_of_n"
    length: bool  # the profile with the length feature (else refitted on the personas alone)
    guidance: float
    best_of: int = 4

    @property
    def name(self) -> str:
        head = "product" if self.rule == "product" else f"best_of_{self.best_of}"
        return f"{head}{'+length' if self.length else ''}@{self.guidance:g}"

    @classmethod
    def parse(cls, text: str) -> Option:
        match = _OPTION.match(text.strip())
        if not match:
            raise SystemExit(f"--options: {text!r} is not an option; write e.g. product@2, product+length@2 or "
                             "best_of_4+length@1.")
        best_of = int(match.group(2)) if match.group(2) else 4
        if match.group(2) and not 2 <= best_of <= 16:
            raise SystemExit(f"--options: {text!r}: best_of_N needs 2 <= N <= 16.")
        return cls("best_of_n" if match.group(2) else "product", bool(match.group(3)), float(match.group(4)), best_of)


AA_SEED = 100_000
"""The A/A control's plain answers use seeds this far from the others'."""
DEFAULT_OPTIONS = ("product@1", "product@2", "product@4", "product+length@1", "product+length@2",
                   "product+length@4", "best_of_4+length@1")
QUICK_OPTIONS = ("product@2", "product+length@2", "best_of_2+length@1")


def user_key(record: dict[str, Any]) -> str:
    return f"{'+'.join(record['dims'])}#{record['seed']}"


# -- decoding ------------------------------------------------------------------------------------------------------


def answer(llm: Any, messages: Any, seed: int) -> dict[str, Any]:
    """One decode: the text, whether it ended by itself (end of turn), its words, seconds, and the profile's
    metadata (what ran) when there is one."""
    started = time.perf_counter()
    message = llm.invoke(messages, seed=seed)
    text = message.content if isinstance(message.content, str) else str(message.content)
    meta = message.response_metadata
    out = {"text": text, "complete": meta.get("finish_reason") == "stop", "words": len(text.split()),
           "seconds": round(time.perf_counter() - started, 2)}
    profile = meta.get("profile")
    if isinstance(profile, dict):  # the rule and (best-of-N) the chosen candidate; not every candidate's text
        out["profile"] = {k: profile[k] for k in ("rule", "chosen", "length") if k in profile}
    return out


def decode_all(records: list[dict[str, Any]], prompts: dict[str, str], options: list[Option],
               preference_texts: dict[str, str], cache: dict[str, Any], save: Callable[[], None], handle: Any,
               basis: Any, max_tokens: int, sampling: dict[str, Any], seed: int, workers: int = 1) -> None:
    """Decodes (once: the cache keeps every answer) the plain and direct answers of every user's evaluation
    prompts, then each user's options on them. ``prompts``: id -> question; ``basis``: the learner's (with the
    length feature). ``workers`` decodes run at once: on transformers their rows share one forward per step
    (continuous batching), and each answer is what it would be alone, so the cache is the same for any value."""
    from langchain_persona_judge import ChatPersonaJudge
    from langchain_persona_judge.profiles import ModelIdentity, PreferenceProfile

    def chat(**extra: Any) -> Any:
        return ChatPersonaJudge(hf_model=handle.model, tokenizer=handle.tokenizer, max_tokens=max_tokens,
                                **sampling, **extra)

    order = {pid: i for i, pid in enumerate(sorted(prompts))}
    plain, direct = cache.setdefault("plain_eval", {}), cache.setdefault("direct", {})
    again = cache.setdefault("plain_again", {})
    jobs: dict[tuple[str, ...], Callable[[], None]] = {}  # what is left to decode, each once
    lock = threading.Lock()

    def job(table: dict[str, Any], key: str, llm: Any, messages: Any, answer_seed: int, label: str) -> Callable[[], None]:
        def run() -> None:
            result = answer(llm, messages, answer_seed)
            with lock:
                table[key] = result
                print(f"[decode] {label}: {result['words']} words in {result['seconds']:.1f} s", flush=True)
                save()
        return run

    llm = chat()
    for record in records:
        name = "+".join(record["dims"])
        system = " ".join(preference_texts[d] for d in record["dims"])
        for pid in record["splits"]["evaluate"]:
            if pid not in plain:
                jobs.setdefault(("plain", pid), job(plain, pid, llm, prompts[pid], seed + order[pid], f"{pid} plain"))
            if pid not in again:  # the A/A control: the plain answer again, another seed
                jobs.setdefault(("again", pid), job(again, pid, llm, prompts[pid], seed + AA_SEED + order[pid],
                                                    f"{pid} plain again"))
            if pid not in direct.setdefault(name, {}):
                jobs.setdefault(("direct", name, pid), job(
                    direct[name], pid, llm, [("system", system), ("human", prompts[pid])], seed + order[pid],
                    f"{pid} direct {name}"))
    identity = ModelIdentity.of(handle)
    personas = dataclasses.replace(basis, features=())
    # Users in rounds (the first user of each type, then the second, ...): a run cut short is balanced over types.
    rounds = sorted(range(len(records)), key=lambda i: (sum(r["dims"] == records[i]["dims"] for r in records[:i]), i))
    for record in [records[i] for i in rounds]:
        fitted = record["decoding"]
        profiles = {True: PreferenceProfile(basis, fitted["weights"], identity),
                    False: PreferenceProfile(personas, fitted["personas_weights"], identity)}
        done = cache.setdefault("decoded", {}).setdefault(user_key(record), {})
        for option in options:
            llm = chat(profile=profiles[option.length], guidance=option.guidance, profile_decoding=option.rule,
                       **({"best_of": option.best_of} if option.rule == "best_of_n" else {}))
            for pid in record["splits"]["evaluate"]:
                if option.name not in done.setdefault(pid, {}):
                    jobs[(user_key(record), pid, option.name)] = job(
                        done[pid], option.name, llm, prompts[pid], seed + order[pid],
                        f"{user_key(record)} {pid} {option.name}")
    if workers <= 1:
        for run in jobs.values():
            run()
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="learning-decode") as pool:
        for future in [pool.submit(run) for run in jobs.values()]:
            future.result()


# -- the figures --------------------------------------------------------------------------------------------------


def pair_outcome(first: str, second: str, question: str, dims: tuple[str, ...] | list[str]) -> float:
    """The user's noise-free outcome of ``first`` against ``second``: the mean over the user's dimensions of 1
    (better by more than the margin), 0.5 (within it) or 0; an answer failing a guard loses."""
    fails = [bool(guard_failures(t, question)) for t in (first, second)]
    return float(np.mean([compare(DIMENSIONS[d].score(first), DIMENSIONS[d].score(second), fails[0], fails[1],
                                  DIMENSIONS[d]) for d in dims]))


def matrices(records: list[dict[str, Any]], prompts: dict[str, str], cache: dict[str, Any],
             options: list[str], columns: list[str]) -> dict[str, dict[str, np.ndarray]]:
    """(users × ``columns``) matrices, NaN where a user did not decode a prompt: per option, the outcome against
    the plain answer (``vs_plain``) and against the user type's direct answer (``vs_direct``), and the option's
    words; under ``"direct"``, the direct answer against the plain one and its words; under ``"plain"``, the
    plain answer's words; under ``"aa"``, the plain answer with another seed against the plain answer (the A/A
    control: its CI must hold one half)."""
    where = {pid: c for c, pid in enumerate(columns)}
    shape = (len(records), len(columns))
    out = {name: {k: np.full(shape, np.nan) for k in ("vs_plain", "vs_direct", "words")} for name in options}
    out["direct"] = {k: np.full(shape, np.nan) for k in ("vs_plain", "words")}
    out["plain"] = {"words": np.full(shape, np.nan)}
    out["aa"] = {"vs_plain": np.full(shape, np.nan)}
    for row, record in enumerate(records):
        dims, name = record["dims"], "+".join(record["dims"])
        decoded = cache.get("decoded", {}).get(user_key(record), {})
        for pid in record["splits"]["evaluate"]:
            plain = cache.get("plain_eval", {}).get(pid)
            direct = cache.get("direct", {}).get(name, {}).get(pid)
            if plain is None or direct is None:
                continue
            column, question = where[pid], prompts[pid]
            out["plain"]["words"][row, column] = plain["words"]
            out["direct"]["words"][row, column] = direct["words"]
            out["direct"]["vs_plain"][row, column] = pair_outcome(direct["text"], plain["text"], question, dims)
            again = cache.get("plain_again", {}).get(pid)
            if again is not None:
                out["aa"]["vs_plain"][row, column] = pair_outcome(again["text"], plain["text"], question, dims)
            for option in options:
                mine = decoded.get(pid, {}).get(option)
                if mine is None:
                    continue
                out[option]["words"][row, column] = mine["words"]
                out[option]["vs_plain"][row, column] = pair_outcome(mine["text"], plain["text"], question, dims)
                out[option]["vs_direct"][row, column] = pair_outcome(mine["text"], direct["text"], question, dims)
    return out


def decoding_figures(records: list[dict[str, Any]], prompts: dict[str, str], cache: dict[str, Any],
                     options: list[str], n_boot: int = 2000) -> dict[str, Any]:
    """Per option: win rate against the plain answer and against the direct prompt (draws half; CIs two-way over
    users and evaluation prompts; strict wins and losses), per user type against the plain answer, the median-word
    shortening of the single-dimension concise users' answers against the plain ones, and which of issue 25's bars
    it meets. The direct prompt's own figures against the plain answer for comparison."""
    columns = sorted({pid for r in records for pid in r["splits"]["evaluate"]})
    table = matrices(records, prompts, cache, options, columns)
    concise = np.array([tuple(r["dims"]) == ("concise",) for r in records])
    types = sorted({"+".join(r["dims"]) for r in records})

    def shortening(words: np.ndarray) -> list[float]:
        return median_shortening(words[concise], table["plain"]["words"][concise], n_boot) if concise.any() \
            else [float("nan")] * 3

    def by_type(outcomes: np.ndarray) -> dict[str, Any]:
        rows = {}
        for name in types:
            mask = np.array(["+".join(r["dims"]) == name for r in records])
            summary = win_summary(outcomes[mask], max(200, n_boot // 4))
            rows[name] = {k: summary[k] for k in ("win_rate", "ci95", "win", "loss", "comparisons")}
        return rows

    out: dict[str, Any] = {"evaluation_prompts": len(columns), "users": len(records)}
    direct = table["direct"]
    out["direct_vs_plain"] = {**win_summary(direct["vs_plain"], n_boot), "by_user_type": by_type(direct["vs_plain"]),
                              "concise_median_shortening": shortening(direct["words"])}
    out["aa_control"] = win_summary(table["aa"]["vs_plain"], n_boot)
    out["options"] = {}
    for option in options:
        mine = table[option]
        vs_plain, vs_direct, short = win_summary(mine["vs_plain"], n_boot), win_summary(mine["vs_direct"], n_boot), \
            shortening(mine["words"])
        answers = [v[option] for r in records for v in cache.get("decoded", {}).get(user_key(r), {}).values()
                   if option in v]
        out["options"][option] = {
            "vs_plain": vs_plain, "vs_direct": vs_direct, "by_user_type_vs_plain": by_type(mine["vs_plain"]),
            "concise_median_shortening": short, "done_when": done_when(vs_plain, vs_direct, short),
            "ended_by_itself": round(float(np.mean([a["complete"] for a in answers])), 4) if answers else None,
            "median_seconds": round(float(np.median([a["seconds"] for a in answers])), 2) if answers else None,
        }
    plain = list(cache.get("plain_eval", {}).values())
    out["plain_ended_by_itself"] = round(float(np.mean([a["complete"] for a in plain])), 4) if plain else None
    out["selection"] = select_and_confirm(table, options, columns, concise, n_boot)
    return out


def select_and_confirm(table: dict[str, dict[str, np.ndarray]], options: list[str], columns: list[str],
                       concise: np.ndarray, n_boot: int) -> dict[str, Any]:
    """The default option, chosen on half of the evaluation prompts and confirmed on the other half (a rule fixed
    before any answer was read): the prompts at even places of the sorted ids choose the option with the highest
    win rate against the plain answer; its figures are then given on the prompts at odd places alone, which the
    choice never saw (every user's cells on those prompts)."""
    choose = np.zeros(len(columns), dtype=bool)
    choose[0::2] = True
    rates = {o: float(np.nanmean(table[o]["vs_plain"][:, choose])) for o in options
             if not np.isnan(table[o]["vs_plain"][:, choose]).all()}
    if not rates:
        return {}
    best = max(rates, key=lambda o: (rates[o], -options.index(o)))
    held = ~choose
    mine = table[best]
    vs_plain = win_summary(mine["vs_plain"][:, held], n_boot)
    vs_direct = win_summary(mine["vs_direct"][:, held], n_boot)
    words, plain_words = mine["words"][:, held], table["plain"]["words"][:, held]
    short = median_shortening(words[concise], plain_words[concise], n_boot) if concise.any() else [float("nan")] * 3
    return {"rule": "chosen on the evaluation prompts at even places (sorted ids) by win rate vs plain; figures on "
                    "the prompts at odd places only",
            "choice_win_rates": {o: round(r, 4) for o, r in rates.items()}, "chosen": best,
            "confirmation": {"vs_plain": vs_plain, "vs_direct": vs_direct, "concise_median_shortening": short,
                             "done_when": done_when(vs_plain, vs_direct, short)}}


def print_figures(figures: dict[str, Any]) -> None:
    print(f"\ndecoding with the profile after 10 choices: {figures['users']} users, {figures['evaluation_prompts']} "
          "evaluation prompts (win rate, draws half, 95% CI over users and prompts; strict wins/losses)")
    direct = figures["direct_vs_plain"]
    rows = [("direct prompt", direct, None, direct["concise_median_shortening"])]
    aa = figures["aa_control"]
    if aa["comparisons"]:
        low, high = aa["ci95"]
        print(f"  {'A/A (plain, new seed)':22s} vs plain {aa['win_rate']:.2f} [{low:.2f}, {high:.2f}]")
    rows += [(name, v["vs_plain"], v["vs_direct"], v["concise_median_shortening"])
             for name, v in figures["options"].items()]
    for name, plain, direct, short in rows:
        cells = f"{plain['win_rate']:.2f} [{plain['ci95'][0]:.2f}, {plain['ci95'][1]:.2f}] " \
                f"{plain['strict_wins']}/{plain['strict_losses']}"
        against = "" if direct is None else f"  vs direct {direct['win_rate']:.2f} [{direct['ci95'][0]:.2f}, " \
                                            f"{direct['ci95'][1]:.2f}]"
        print(f"  {name:22s} vs plain {cells}{against}  concise shorter by {short[0]:.2f}")
    selection = figures.get("selection")
    if selection:
        held = selection["confirmation"]
        print(f"  chosen on half the prompts: {selection['chosen']}; on the other half vs plain "
              f"{held['vs_plain']['win_rate']:.2f} [{held['vs_plain']['ci95'][0]:.2f}, "
              f"{held['vs_plain']['ci95'][1]:.2f}] {held['vs_plain']['strict_wins']}/"
              f"{held['vs_plain']['strict_losses']}, vs direct {held['vs_direct']['win_rate']:.2f}")


__all__ = ["DEFAULT_OPTIONS", "QUICK_OPTIONS", "Option", "decode_all", "decoding_figures", "matrices", "pair_outcome",
           "select_and_confirm"]
