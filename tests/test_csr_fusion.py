"""CSR rank fusion and path selection on hand-made sentence trees, every expected number worked by hand."""

import math

import pytest

from selfalign.errors import SelfAlignError
from selfalign.pairs import (
    FusionParams,
    NoPair,
    PathPair,
    ScoredNode,
    complete_paths,
    rank_path_score,
    select_pair,
    sibling_ranks,
    sum_path_score,
    weighted_path_score,
)


def node(node_id, parent_id, text, self_score, clip_score, *, leaf=False, kept=True, adds_sentence=True):
    return ScoredNode(
        node_id, parent_id, text, self_score, clip_score, kept=kept, is_leaf=leaf, adds_sentence=adds_sentence
    )


def end(node_id, parent_id, text, self_score, clip_score):
    """A child that is EOS alone: it ends its parent's response (same text) without a sentence."""
    return node(node_id, parent_id, text, self_score, clip_score, leaf=True, adds_sentence=False)


ROOT = node(0, None, "", 0.0, None)

# Depth 1: 1 is best by self-score and worst by CLIP, 2 the reverse, 3 in the middle of both (a leaf).
# Depth 2: node 7 ended but was pruned by the search: it still counts among its siblings 6 and 8,
# but it is no candidate, though its path would be the best by both fusions.
TREE = [
    ROOT,
    node(1, 0, "A red circle.", -0.5, 20.0),
    node(2, 0, "A blue square.", -1.2, 26.0),
    node(3, 0, "A green star.", -0.8, 23.0, leaf=True),
    node(4, 1, "A red circle. A blue star.", -0.9, 18.0, leaf=True),
    node(5, 1, "A red circle. Two squares.", -1.4, 24.0, leaf=True),
    node(6, 2, "A blue square. It is small.", -1.3, 23.0, leaf=True),
    node(7, 2, "A blue square. It is big.", -1.4, 25.0, leaf=True, kept=False),
    node(8, 2, "A blue square. A cat.", -2.0, 19.0, leaf=True),
]


def fused(self_rank, clip_rank, a=0.9):
    return (1 - a) * self_rank + a * clip_rank


def test_sibling_ranks_of_three_siblings_by_hand():
    ranks = sibling_ranks(TREE)
    # Among 1, 2, 3: by self-score 1 (-0.5) > 3 (-0.8) > 2 (-1.2); by CLIP 2 (26) > 3 (23) > 1 (20).
    # The i-th best of k gets i / k.
    assert (ranks[1].self_rank, ranks[1].clip_rank) == (1 / 3, 1.0)
    assert (ranks[2].self_rank, ranks[2].clip_rank) == (1.0, 1 / 3)
    assert (ranks[3].self_rank, ranks[3].clip_rank) == (2 / 3, 2 / 3)
    # The pruned node 7 is one of three siblings.
    assert (ranks[6].self_rank, ranks[6].clip_rank) == (1 / 3, 2 / 3)
    assert (ranks[7].self_rank, ranks[7].clip_rank) == (2 / 3, 1 / 3)
    assert (ranks[8].self_rank, ranks[8].clip_rank) == (1.0, 1.0)
    assert (ranks[4].self_rank, ranks[4].clip_rank) == (1 / 2, 1.0)
    assert (ranks[5].self_rank, ranks[5].clip_rank) == (1.0, 1 / 2)
    assert 0 not in ranks


def test_ties_among_siblings_go_to_the_lower_node_id():
    tree = [ROOT, node(2, 0, "b", -1.0, 5.0, leaf=True), node(1, 0, "a", -1.0, 5.0, leaf=True)]
    ranks = sibling_ranks(tree)
    assert (ranks[1].self_rank, ranks[1].clip_rank) == (1 / 2, 1 / 2)
    assert (ranks[2].self_rank, ranks[2].clip_rank) == (1.0, 1.0)


def test_candidates_end_at_kept_leaves_in_depth_first_order():
    paths = complete_paths(TREE)
    assert [[n.node_id for n in path] for path in paths] == [
        [0, 1, 4],
        [0, 1, 5],
        [0, 2, 6],
        [0, 2, 8],
        [0, 3],
    ]


def test_rank_path_score_by_hand_with_a_09():
    ranks = sibling_ranks(TREE)
    path = next(path for path in complete_paths(TREE) if path[-1].node_id == 6)
    # (0.1 * 1 + 0.9 * 1/3) + (0.1 * 1/3 + 0.9 * 2/3) over 3 nodes, the root counting as 0.
    expected = (0.4 + (0.1 / 3 + 0.6)) / 3
    assert rank_path_score(path, ranks, clip_weight=0.9) == pytest.approx(expected, abs=1e-12)
    assert expected == pytest.approx(0.344444, abs=1e-6)


def test_released_fusion_picks_lowest_and_highest_mean_rank():
    pair = select_pair(TREE)
    # Path scores: 0-1-4: (0.93333 + 0.95) / 3 = 0.62778   0-1-5: (0.93333 + 0.55) / 3 = 0.49444
    #              0-2-6: (0.4 + 0.63333) / 3 = 0.34444     0-2-8: (0.4 + 1.0) / 3 = 0.46667
    #              0-3:   0.66667 / 2 = 0.33333
    # The root in the mean makes the one-sentence path the best (without it, 0-2-6 would be); the pruned
    # 0-2-7 would score (0.4 + 0.36667) / 3 = 0.25556, and the pruned 7 made 6 the 2nd of 3, not 1st of 2.
    assert isinstance(pair, PathPair)
    assert (pair.chosen, pair.rejected) == ("A green star.", "A red circle. A blue star.")
    assert (pair.chosen_leaf_id, pair.rejected_leaf_id) == (3, 4)
    assert pair.chosen_score == pytest.approx(fused(2 / 3, 2 / 3) / 2)
    assert pair.rejected_score == pytest.approx((fused(1 / 3, 1.0) + fused(1 / 2, 1.0)) / 3)
    assert pair.chosen_clip_score == 23.0
    assert pair.rejected_clip_score == pytest.approx((20.0 + 18.0) / 2)
    assert pair.num_candidates == 5
    assert pair.fusion == FusionParams()
    assert pair.fusion.lower_is_better


def test_paper_fusion_sums_calibrated_sentence_rewards():
    params = FusionParams(method="weighted", clip_weight=0.9)

    def reward(clip, logprob):
        return 0.9 * clip + 0.1 * math.exp(logprob)

    # Per-sentence log-probs are differences of the cumulative self-scores.
    expected = {
        4: reward(20, -0.5) + reward(18, -0.4),  # 34.33
        5: reward(20, -0.5) + reward(24, -0.9),  # 39.70
        6: reward(26, -1.2) + reward(23, -0.1),  # 44.22
        8: reward(26, -1.2) + reward(19, -0.8),  # 40.58
        3: reward(23, -0.8),  # 20.74
    }
    # The pruned leaf 7 is no candidate, though it would win: reward(26, -1.2) + reward(25, -0.2) = 46.01.
    assert reward(26, -1.2) + reward(25, -0.2) > expected[6]
    for path in complete_paths(TREE):
        assert weighted_path_score(path, 0.9) == pytest.approx(expected[path[-1].node_id])
    pair = select_pair(TREE, params)
    assert isinstance(pair, PathPair)
    assert (pair.chosen_leaf_id, pair.rejected_leaf_id) == (6, 3)
    assert (pair.chosen, pair.rejected) == ("A blue square. It is small.", "A green star.")
    assert pair.chosen_score == pytest.approx(expected[6])
    assert pair.rejected_score == pytest.approx(expected[3])
    assert pair.chosen_clip_score == pytest.approx(24.5)
    assert not pair.fusion.lower_is_better


def test_paper_fusion_clips_negative_clip_scores_at_zero():
    tree = [ROOT, node(1, 0, "a", 0.0, -30.0, leaf=True), node(2, 0, "b", 0.0, -10.0, leaf=True)]
    assert [weighted_path_score(path, 0.9) for path in complete_paths(tree)] == pytest.approx([0.1, 0.1])
    result = select_pair(tree, FusionParams(method="weighted"))
    assert isinstance(result, NoPair) and result.reason == "tied_scores"


# EOS alone under the root (node 1) would be an empty response, and its path the best by rank fusion:
# (0.1 * 1/3 + 0.9 * 2/3) / 2 = 0.31667. Under "A dog." (node 3) it ends that response.
EMPTY_FIRST = [
    ROOT,
    end(1, 0, "", -0.1, 10.0),
    node(2, 0, "A dog.", -0.5, 25.0),
    end(3, 2, "A dog.", -0.6, 12.0),
    node(4, 0, "A cat.", -0.9, 5.0, leaf=True),
]


def test_an_empty_response_is_never_a_candidate_but_still_ranks():
    assert [[n.node_id for n in path] for path in complete_paths(EMPTY_FIRST)] == [[0, 2, 3], [0, 4]]
    ranks = sibling_ranks(EMPTY_FIRST)
    assert (ranks[1].self_rank, ranks[1].clip_rank) == (1 / 3, 2 / 3)
    assert (ranks[2].self_rank, ranks[2].clip_rank) == (2 / 3, 1 / 3)
    pair = select_pair(EMPTY_FIRST)
    assert isinstance(pair, PathPair)
    assert (pair.chosen, pair.rejected) == ("A dog.", "A cat.")
    # The end node's ranks (1 of 1) count in the rank path score, the root as 0.
    assert pair.chosen_score == pytest.approx((fused(2 / 3, 1 / 3) + fused(1, 1)) / 3)
    assert pair.num_candidates == 2
    only_one_left = [ROOT, end(1, 0, "", -0.1, 10.0), node(2, 0, "A dog.", -0.5, 25.0, leaf=True)]
    result = select_pair(only_one_left)
    assert isinstance(result, NoPair) and result.reason == "single_path"


def test_an_end_without_a_sentence_adds_no_clip_score_and_no_reward():
    pair = select_pair(EMPTY_FIRST)
    assert pair.chosen_clip_score == 25.0  # not the mean with the end's 12
    dog = next(path for path in complete_paths(EMPTY_FIRST) if path[-1].node_id == 3)
    assert weighted_path_score(dog, 0.9) == pytest.approx(0.9 * 25.0 + 0.1 * math.exp(-0.5))
    weighted = select_pair(EMPTY_FIRST, FusionParams(method="weighted"))
    assert (weighted.chosen, weighted.rejected) == ("A dog.", "A cat.")
    assert weighted.chosen_score == pytest.approx(0.9 * 25.0 + 0.1 * math.exp(-0.5))


def test_no_complete_path():
    no_leaf = [ROOT, node(1, 0, "a", -1.0, 1.0), node(2, 0, "b", -2.0, 2.0)]
    pruned_leaves = [ROOT, node(1, 0, "a", -1.0, 1.0, leaf=True, kept=False), node(2, 0, "b", -2, 2.0)]
    empty_only = [ROOT, end(1, 0, "", -1.0, 1.0), end(2, 0, "", -2.0, 2.0)]
    for tree in (no_leaf, pruned_leaves, empty_only, [ROOT]):
        result = select_pair(tree)
        assert isinstance(result, NoPair) and result.reason == "no_complete_path"


def test_single_path():
    tree = [
        ROOT,
        node(1, 0, "a", -1.0, 1.0),
        node(2, 1, "a b", -2.0, 2.0, leaf=True),
        node(3, 0, "c", -2, 3.0),
    ]
    result = select_pair(tree)
    assert isinstance(result, NoPair) and result.reason == "single_path"


def test_all_path_scores_equal():
    # a = 0.5: one leaf is best by self and worst by CLIP, the other the reverse: 0.75 / 2 each.
    tree = [ROOT, node(1, 0, "a", -1.0, 1.0, leaf=True), node(2, 0, "b", -2.0, 2.0, leaf=True)]
    result = select_pair(tree, FusionParams(clip_weight=0.5))
    assert isinstance(result, NoPair) and result.reason == "tied_scores"
    assert isinstance(select_pair(tree), PathPair)  # a = 0.9 separates them
    same_scores = [ROOT, node(1, 0, "a", -1.0, 1.0, leaf=True), node(2, 0, "b", -1.0, 1.0, leaf=True)]
    result = select_pair(same_scores, FusionParams(method="weighted"))
    assert isinstance(result, NoPair) and result.reason == "tied_scores"


def test_identical_texts():
    tree = [ROOT, node(1, 0, "A cat. ", -1.0, 1.0, leaf=True), node(2, 0, "A cat.", -2.0, 2.0, leaf=True)]
    result = select_pair(tree)
    assert isinstance(result, NoPair) and result.reason == "identical_texts"


def test_bad_input_raises():
    with pytest.raises(SelfAlignError, match="'rank', 'weighted' or 'sum'"):
        FusionParams(method="product")
    with pytest.raises(SelfAlignError, match="clip_weight"):
        FusionParams(clip_weight=1.5)
    leaf = node(1, 0, "a", -1.0, 1.0, leaf=True)
    bad_trees = {
        "two nodes with id 1": [ROOT, leaf, leaf],
        "exactly one root": [ROOT, node(1, None, "a", 0.0, None)],
        "not in the tree": [ROOT, node(1, 5, "a", -1.0, 1.0, leaf=True)],
        "no CLIP score": [ROOT, node(1, 0, "a", -1.0, None, leaf=True)],
        "non-finite": [ROOT, node(1, 0, "a", math.nan, 1.0, leaf=True)],
        "its response ended": [ROOT, leaf, node(2, 1, "a b", -2.0, 1.0, leaf=True)],
        "it was pruned": [
            ROOT,
            node(1, 0, "a", -1.0, 1.0, kept=False),
            node(2, 1, "a b", -2.0, 1.0, leaf=True),
        ],
    }
    for message, tree in bad_trees.items():
        with pytest.raises(SelfAlignError, match=message):
            select_pair(tree)


# Scene-truth scores (true mentions minus ten per false one): node 1's sentence hallucinates; below it,
# 3 repeats a true object and 4 names a false one.
TRUTH_TREE = [
    ROOT,
    node(1, 0, "A red circle and a blue star.", -0.4, -9.0),
    node(2, 0, "A green star and a cat.", -0.9, -10.0, leaf=True),
    node(3, 1, "A red circle and a blue star. A red circle.", -0.6, 1.0, leaf=True),
    node(4, 1, "A red circle and a blue star. A yellow square.", -0.7, -10.0, leaf=True),
    node(5, 0, "A red circle.", -1.5, 1.0, leaf=True),
]


def test_sum_fusion_judges_each_response_by_its_scorers_total():
    totals = {path[-1].node_id: sum_path_score(path) for path in complete_paths(TRUTH_TREE)}
    assert totals == {3: -8.0, 4: -19.0, 2: -10.0, 5: 1.0}
    pair = select_pair(TRUTH_TREE, FusionParams(method="sum"))
    assert (pair.chosen, pair.rejected) == ("A red circle.", "A red circle and a blue star. A yellow square.")
    assert (pair.chosen_score, pair.rejected_score) == (1.0, -19.0)
    # An end without a sentence adds nothing to the total.
    assert sum_path_score(complete_paths(EMPTY_FIRST)[0]) == 25.0
