"""The engine of this checkout against the engine of another git revision, interleaved on one loaded model.

    python -m benchmarks.ab_engine --rev 55df758 --rounds 7

Both engines decode the same two persona prompts greedily (λ=4, lockstep unless ``--schedule``) on the same
embedded model object, one torch thread, in alternating rounds, so that whatever else runs on the machine
slows both alike; the report is the median time of each and the median per-round ratio. The old revision's
package is extracted with ``git archive`` into a temporary folder under another name; its tokens must equal
this checkout's (a refactor changes no decision), which the script asserts.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
PREFERENCES = ["Explain it to a ten-year-old.", "Be playful and funny."]
QUESTION = "Why is the sky blue? Explain the physics."


def old_engine(rev: str, folder: Path) -> Any:
    """The ``engine`` module of ``rev``'s package, imported as ``lpj_<rev>``."""
    name = f"lpj_{rev[:12]}"
    archive = subprocess.run(["git", "archive", rev, "langchain_persona_judge"], cwd=ROOT, capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    (folder / "langchain_persona_judge").rename(folder / name)
    sys.path.insert(0, str(folder))
    return importlib.import_module(f"{name}.engine")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", required=True, help="the git revision to compare against")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--schedule", default="lockstep", choices=("lockstep", "speculative"))
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore", FutureWarning)  # an old engine may pass past_key_values=
    torch.set_num_threads(1)
    from langchain_persona_judge import generate, shared_model
    from langchain_persona_judge.personas import persona_messages
    from langchain_persona_judge.runtime import encode_chat

    model = shared_model(None, device="cpu", backend="transformers")
    tokenizer = model.tokenizer
    conversation = [{"role": "user", "content": QUESTION}]
    prompts = [encode_chat(tokenizer, persona_messages(conversation, [p])) for p in PREFERENCES]
    options = dict(schedule=args.schedule, do_sample=False, lookahead=4, max_new_tokens=args.tokens,
                   draft_confidence=0.0)
    with tempfile.TemporaryDirectory() as folder:
        old = old_engine(args.rev, Path(folder)).generate

        def timed(fn: Any) -> tuple[float, Any]:
            start = time.perf_counter()
            generation = fn(model, prompts, **options)
            return time.perf_counter() - start, generation

        timed(old), timed(generate)  # warm-up
        olds, news = [], []
        for _ in range(args.rounds):
            t_old, g_old = timed(old)
            t_new, g_new = timed(generate)
            assert g_old.token_ids == g_new.token_ids, "the two engines decided differently"
            olds.append(t_old)
            news.append(t_new)
    tokens = len(g_new.token_ids)
    ratios = [o / n for o, n in zip(olds, news)]
    print(f"{tokens} tokens, {g_new.stats.forward_calls_per_token:.2f} forwards/token, {args.schedule}, "
          f"{args.rounds} interleaved rounds")
    print(f"{args.rev}: median {statistics.median(olds):.2f} s ({tokens / statistics.median(olds):.1f} tok/s)")
    print(f"this checkout: median {statistics.median(news):.2f} s ({tokens / statistics.median(news):.1f} tok/s)")
    print(f"speed of this checkout / {args.rev}: median of medians {statistics.median(olds) / statistics.median(news):.3f}, "
          f"per round {[round(r, 3) for r in ratios]}")


if __name__ == "__main__":
    main()
