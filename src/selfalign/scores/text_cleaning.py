"""CSR's sentence cleaning: strip stray symbols before CLIP scoring, and drop degenerate sentences.

What the released CSR code does (`YiyangZhou/CSR`, `inference_csr/utils.py` and `score.py`), and
so what `clean_sentence` does with the default `SentenceCleaning`:

- Symbols (`clean_text`): every character outside a whitelist is deleted from the new sentence
  before anything else, and CLIP scores the result. The whitelist is word characters (`\\w`,
  Unicode-aware, so letters of every script stay), whitespace and common punctuation and symbols
  (`.,?!;:'"#$%&()[]{}/+€£*=<>°^™©®♫♪π√`). Emoji and other pictographs go. In the released
  character class, `"-(` reads as a range, so the hyphen itself is deleted ("black-and-white"
  becomes "blackandwhite"); that is an accident, and the hyphen is kept here.
- Degenerate sentences (`clean_tree`) are dropped, and with them the node's whole subtree, before
  ranking. A sentence is degenerate if it holds
  - any Hangul, Japanese kana or Cyrillic character (one is enough, not a run); other scripts,
    Chinese included, pass. The released list also has emoji, but that check never fires, since
    `clean_text` has already deleted them: emoji are stripped, not dropped, here too;
  - two or more `&nbsp;` in a row;
  - a word repeated 6 or more times in a row, one character 11 or more times in a row (whitespace
    between them allowed: ", , , ...", "ttttttttttt", eleven spaces), or ten apostrophes;
  - more than 5 newlines (after stripping the ends).
- Too short (`score.py`): a node whose cleaned sentence has fewer than 4 characters is not scored
  and is left out of the tree with its subtree, like a degenerate one.

The released code drops; it never shortens a repetition or collapses newlines, and neither does
this module. Each check can be switched off. `CleanedSentence.drop_reason` names the first check
that failed (in the order above: `foreign_script`, `html_entities`, `repetition`, `newlines`,
`too_short`), so builders can count degenerate sentences per reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from selfalign.errors import SelfAlignError

DropReason = Literal["foreign_script", "html_entities", "repetition", "newlines", "too_short"]

DROP_REASONS: dict[str, str] = {
    "foreign_script": "the sentence holds Hangul, Japanese kana or Cyrillic characters",
    "html_entities": "the sentence holds two or more &nbsp; in a row",
    "repetition": "the sentence repeats a word 6+ times or a character 11+ times in a row",
    "newlines": "the sentence holds more than max_newlines newlines",
    "too_short": "the cleaned sentence is shorter than min_chars characters",
}

_STRAY_SYMBOLS = re.compile(r"[^\w\s.,?!;:'\"#$%&()\[\]{}/+€£*=<>°^™©®♫♪π√-]+")
_FOREIGN_SCRIPT = re.compile(
    "[\u3130-\u318f\uac00-\ud7af"  # Hangul compatibility jamo, Hangul syllables
    "\u3040-\u309f\u30a0-\u30ff"  # hiragana, katakana
    "\u0400-\u04ff]"  # Cyrillic
)
_HTML_SPACES = re.compile(r"(?:&nbsp;){2,}")
_REPEATED_WORD = re.compile(r"\b(\w+)(?:\s+\1\b){5,}")
_REPEATED_CHARACTER = re.compile(r"(.)(?:\s*\1){10,}")
_APOSTROPHES = "'" * 10


@dataclass(frozen=True)
class SentenceCleaning:
    """Which of the released cleaning steps to apply; the defaults are the released ones."""

    strip_symbols: bool = True
    drop_foreign_script: bool = True
    drop_html_entities: bool = True
    drop_repetition: bool = True
    max_newlines: int | None = 5  # None: any number of newlines
    min_chars: int = 4  # 0: keep even empty sentences

    def __post_init__(self) -> None:
        if self.max_newlines is not None and self.max_newlines < 0:
            raise SelfAlignError(
                f"max_newlines must be 0 or more (or None for no limit), got {self.max_newlines}"
            )
        if self.min_chars < 0:
            raise SelfAlignError(f"min_chars must be 0 or more, got {self.min_chars}")


@dataclass(frozen=True)
class CleanedSentence:
    text: str  # what CLIP scores: stripped, stray symbols removed
    symbols_removed: int  # characters deleted by strip_symbols
    drop_reason: DropReason | None  # None: the sentence is kept

    @property
    def kept(self) -> bool:
        return self.drop_reason is None


def clean_sentence(sentence: str, cleaning: SentenceCleaning = SentenceCleaning()) -> CleanedSentence:
    """Clean one newly generated sentence and say whether it is degenerate (see the module docstring)."""
    text = sentence.strip()
    symbols_removed = 0
    if cleaning.strip_symbols:
        stripped = _STRAY_SYMBOLS.sub("", text)
        symbols_removed = len(text) - len(stripped)
        text = stripped.strip()
    return CleanedSentence(text, symbols_removed, _drop_reason(text, cleaning))


def _drop_reason(text: str, cleaning: SentenceCleaning) -> DropReason | None:
    if cleaning.drop_foreign_script and _FOREIGN_SCRIPT.search(text):
        return "foreign_script"
    if cleaning.drop_html_entities and _HTML_SPACES.search(text):
        return "html_entities"
    if cleaning.drop_repetition and (
        _REPEATED_WORD.search(text) or _REPEATED_CHARACTER.search(text) or _APOSTROPHES in text
    ):
        return "repetition"
    if cleaning.max_newlines is not None and text.count("\n") > cleaning.max_newlines:
        return "newlines"
    if len(text) < cleaning.min_chars:
        return "too_short"
    return None
