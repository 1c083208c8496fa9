"""Scoring samples: CLIP image-sentence scores and the sentence cleaning that precedes them (CSR)."""

from selfalign.scores.clip_scorer import ClipScorer, ClipScoreStats
from selfalign.scores.text_cleaning import (
    DROP_REASONS,
    CleanedSentence,
    DropReason,
    SentenceCleaning,
    clean_sentence,
)

__all__ = [
    "DROP_REASONS",
    "CleanedSentence",
    "ClipScoreStats",
    "ClipScorer",
    "DropReason",
    "SentenceCleaning",
    "clean_sentence",
]
