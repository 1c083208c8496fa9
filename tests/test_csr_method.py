"""selfalign.methods.csr on a hand-made sentence tree: what is cleaned away, what is CLIP-scored, the pair."""

import pytest
from PIL import Image

from selfalign.errors import SelfAlignError
from selfalign.methods.csr import CsrArguments, TreeScoring, pairs_from_trees, score_trees
from selfalign.pairs import PathPair
from selfalign.samples import SentenceTree, TreeNode
from selfalign.scores import ClipScorer


def node(node_id, parent_id, sentence, score, finish_reason=None, kept=True) -> TreeNode:
    depth = 0 if parent_id is None else 1 + (parent_id > 0)
    return TreeNode(node_id, parent_id, depth, (), sentence, (1,), score, 1, score, finish_reason, kept)


# The root; two first sentences; under the first, a degenerate one (with a child of its own) and EOS
# alone; under the second, one more sentence that ends the response and EOS alone.
TREE = SentenceTree(
    seed=0,
    nodes=(
        node(0, None, "", 0.0),
        node(1, 0, "A red circle.", -1.0),
        node(2, 0, "A blue star.", -1.5),
        node(3, 1, " star star star star star star star.", -2.0),
        node(4, 3, " A square.", -3.0, "eos"),
        node(5, 1, "", -1.2, "eos"),
        node(6, 2, " A green square.", -2.5, "eos"),
        node(7, 2, "", -1.7, "eos"),
    ),
)


@pytest.fixture(scope="module")
def scorer(tiny_clip_dir):
    return ClipScorer(str(tiny_clip_dir))


def test_degenerate_sentences_go_with_their_subtree_and_eos_alone_ends_a_response(scorer):
    scoring = TreeScoring()
    image = Image.new("RGB", (32, 32), "red")
    (nodes,) = score_trees(scorer, CsrArguments(clip_model="unused").cleaning(), [image], [TREE], scoring)

    assert [n.node_id for n in nodes] == [0, 1, 2, 5, 6, 7]  # 3 (repetition) and its child 4 are gone
    assert scoring.dropped == {"repetition": 1}
    by_id = {n.node_id: n for n in nodes}
    # EOS alone is the end of its parent's response: a leaf whose text is the parent's.
    assert by_id[5].is_leaf and by_id[5].text == "A red circle."
    assert [by_id[i].adds_sentence for i in (1, 2, 5, 6, 7)] == [True, True, False, True, False]
    assert by_id[6].text == "A blue star. A green square."
    # Every kept sentence is CLIP-scored against the image, the empty end included.
    (expected,) = scorer.score([image], [["A red circle.", "A blue star.", "", "A green square.", ""]])
    assert [by_id[i].clip_score for i in (1, 2, 5, 6, 7)] == pytest.approx(expected)


def test_one_pair_per_tree_from_the_complete_responses(scorer):
    args = CsrArguments(clip_model="unused")
    image = Image.new("RGB", (32, 32), "red")
    (pair,) = pairs_from_trees(scorer, args, [image], [TREE], TreeScoring())
    assert isinstance(pair, PathPair) and pair.num_candidates == 3
    assert {pair.chosen, pair.rejected} <= {"A red circle.", "A blue star. A green square.", "A blue star."}
    assert pair.chosen != pair.rejected and pair.chosen_score < pair.rejected_score


def test_bad_csr_settings_stop_before_any_model_loads():
    with pytest.raises(SelfAlignError, match="iteration counts from 1"):
        CsrArguments(clip_model="x", iteration=0)
    with pytest.raises(SelfAlignError, match="clip_weight"):
        CsrArguments(clip_model="x", clip_weight=1.5)
    with pytest.raises(SelfAlignError):
        CsrArguments(clip_model="x", children=0)
    with pytest.raises(SelfAlignError, match="clip_model is required"):
        CsrArguments()
    assert CsrArguments(scorer="scene_truth").clip_model is None  # the oracle needs no CLIP
