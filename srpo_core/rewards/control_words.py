"""Control words: short style phrases prepended to the prompt, ``p_c = "<control>. <prompt>"``.

DESIGN.md 3.3: one positive/negative pair per training step, cycling through both lists.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

DEFAULT_POSITIVE_WORDS: tuple[str, ...] = ("Natural-lighting", "Detail", "Detailed", "Real")
"""Positive control words of the reference training recipe."""
DEFAULT_NEGATIVE_WORDS: tuple[str, ...] = ("Concept art", "Painting", "Anime", "Flat", "Oil")
"""Negative control words of the reference training recipe."""
EVAL_POSITIVE_WORD = "Real photo"
"""Positive word of the paper's SGP-HPS metric,
``HPS("Real photo. " + p) - HPS("CG render. " + p)``."""
EVAL_NEGATIVE_WORD = "CG render"
"""Negative word of the paper's SGP-HPS metric."""


def control_prompt(control: str, prompt: str) -> str:
    """Prompt with a control word prepended: ``f"{control}. {prompt}"``."""
    return f"{control}. {prompt}"


def parse_control_words(text: str) -> tuple[str, ...]:
    """Control words from multi-line text: one word or phrase per line, stripped, blanks skipped."""
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def clean_words(words: Iterable[str], side: str) -> tuple[str, ...]:
    """Validate a word list: at least one entry, each a non-empty string; returns them stripped."""
    if isinstance(words, str):
        raise TypeError(f"{side} control words must be a sequence of strings, not one string")
    cleaned = []
    for i, word in enumerate(words):
        if not isinstance(word, str) or not word.strip():
            raise ValueError(f"{side} control word #{i} is empty or not a string: {word!r}")
        cleaned.append(word.strip())
    if not cleaned:
        raise ValueError(f"need at least one {side} control word")
    return tuple(cleaned)


@dataclass(frozen=True)
class ControlWords:
    """Positive and negative control words; training step ``s`` uses one pair (see ``pair``)."""

    positive: tuple[str, ...] = field(
        default=DEFAULT_POSITIVE_WORDS,
        metadata={"help": "Words the reward should move toward (one per line), e.g. 'Real'."},
    )
    negative: tuple[str, ...] = field(
        default=DEFAULT_NEGATIVE_WORDS,
        metadata={"help": "Words the reward should move away from (one per line), e.g. 'Anime'."},
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "positive", clean_words(self.positive, "positive"))
        object.__setattr__(self, "negative", clean_words(self.negative, "negative"))

    @classmethod
    def from_text(cls, positive: str, negative: str) -> ControlWords:
        """Build from two multi-line texts (see :func:`parse_control_words`)."""
        return cls(parse_control_words(positive), parse_control_words(negative))

    def pair(self, step: int) -> tuple[str, str]:
        """``(positive[step % P], negative[step % N])``: one pair per step, each list cycling."""
        return self.positive[step % len(self.positive)], self.negative[step % len(self.negative)]
