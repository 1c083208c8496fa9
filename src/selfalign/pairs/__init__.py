"""Turning scored samples into preference pairs: CSR's rank fusion and path selection."""

from selfalign.pairs.csr_fusion import (
    NO_PAIR_REASONS,
    FusionMethod,
    FusionParams,
    NoPair,
    PathPair,
    ScoredNode,
    SiblingRanks,
    complete_paths,
    rank_path_score,
    select_pair,
    sibling_ranks,
    sum_path_score,
    weighted_path_score,
)

__all__ = [
    "NO_PAIR_REASONS",
    "FusionMethod",
    "FusionParams",
    "NoPair",
    "PathPair",
    "ScoredNode",
    "SiblingRanks",
    "complete_paths",
    "rank_path_score",
    "select_pair",
    "sibling_ranks",
    "sum_path_score",
    "weighted_path_score",
]
