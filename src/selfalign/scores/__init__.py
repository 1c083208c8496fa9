"""Scoring samples: CLIP image-sentence scores and the sentence cleaning that precedes them (CSR), and
the shapes world's scene-truth scores that can stand in for CLIP in ablations."""

from selfalign.scores.clip_scorer import ClipScorer, ScorerStats
from selfalign.scores.scene_truth import SCENE_TRUTH_SCORER, SceneTruthScorer, sentence_truth_score
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
    "ClipScorer",
    "DropReason",
    "SCENE_TRUTH_SCORER",
    "SceneTruthScorer",
    "ScorerStats",
    "SentenceCleaning",
    "clean_sentence",
    "sentence_truth_score",
]
