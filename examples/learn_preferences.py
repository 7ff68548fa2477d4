"""Learn a user's preferences three ways, then answer with the learned profile.

1. ``learn_profile``: from a few choices between two answers (``(question, chosen, rejected)``), fitted by
   Bradley–Terry over the persona basis's implicit rewards (PReF's factorisation, training-free);
2. ``learn_from_texts``: from text the user wrote (how much each persona raises its likelihood);
3. ``profile_from_description``: a stated preference, kept as text beside the weights.

The learned reward ranks answers on its own (``profile.rank``: best-of-N), and ``ChatPersonaJudge(profile=...)``
decodes with the profile's strongest poles; ``response_metadata["profile"]`` says what the profile added.

Run it (uses the embedded SmolLM2-135M-Instruct; no network; about a minute on two CPU cores):

    .venv/bin/python examples/learn_preferences.py

PERSONA_JUDGE_EXAMPLE_MAX_TOKENS sets the answer length (default 60).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from langchain_persona_judge import (
    ChatPersonaJudge,
    PreferenceProfile,
    learn_from_texts,
    learn_profile,
    profile_from_description,
)

MAX_TOKENS = int(os.environ.get("PERSONA_JUDGE_EXAMPLE_MAX_TOKENS", "60"))

# A user who picks the short, plain answer each time.
CHOICES = [
    ("Why is the sky blue?",
     "Sunlight scatters off air, and blue light scatters most, so the sky looks blue.",
     "The blue colour of the sky is a consequence of Rayleigh scattering: the intensity of light scattered by "
     "molecules much smaller than its wavelength varies inversely with the fourth power of that wavelength."),
    ("How do plants eat?",
     "They make sugar from sunlight, water and air.",
     "Plants are autotrophs: through photosynthesis, chloroplasts convert carbon dioxide and water into glucose, "
     "using light energy captured by chlorophyll in the thylakoid membranes, and release oxygen."),
    ("What is a fever?",
     "Your body gets hotter to fight germs.",
     "A fever is an elevation of the hypothalamic set point, mediated by pyrogenic cytokines such as "
     "interleukin-1, which raises core body temperature as part of the acute-phase response."),
    ("Why do we sleep?",
     "Sleep lets your body and brain rest and fix themselves.",
     "Sleep serves multiple physiological functions, including synaptic homeostasis, memory consolidation, "
     "glymphatic clearance of metabolites and regulation of endocrine and immune processes."),
]

# What another user wrote, each with the message it replied to.
WRITING = [
    ("How was your weekend?", "Oh it was awesome!! We went hiking and grabbed pizza after, so fun :)"),
    ("Any tips for the exam?", "Haha honestly just chill, sleep well and you'll totally nail it!"),
]


def show(title: str, profile: PreferenceProfile) -> None:
    print(f"{title}:")
    for name, weight in profile.top(3):
        print(f"  {name:14s} {weight:+.2f}")


def main() -> None:
    chosen = learn_profile(CHOICES, description="Keep it short and simple.")
    show("learn_profile (4 choices), strongest poles", chosen)

    written = learn_from_texts(WRITING)
    show("learn_from_texts (2 texts), strongest poles", written)

    stated = profile_from_description("I'm a nurse; keep it short.")
    print(f"profile_from_description: weights all zero = {not any(stated.weights.values())}, "
          f"description = {stated.description!r}")

    question = "Why do leaves change colour?"
    answers = ["Leaves lose their green in autumn, so yellow and red show.",
               "Chlorophyll degradation in senescing leaves unmasks carotenoids and induces anthocyanin synthesis."]
    print("profile.rank (best first):")
    for answer, reward in chosen.rank(question, answers):
        print(f"  {reward:+.3f}  {answer}")

    with tempfile.TemporaryDirectory() as folder:  # saved and loaded back: versioned, tied to the model
        path = Path(folder) / "me.yaml"
        chosen.save(path)
        llm = ChatPersonaJudge(profile=str(path), temperature=0, max_tokens=MAX_TOKENS)
        message = llm.invoke(question)
    print(f"ChatPersonaJudge(profile=...): {question}")
    print(f"A: {message.content}")
    added = message.response_metadata["profile"]
    print(f"profile added: {added}")


if __name__ == "__main__":
    main()
