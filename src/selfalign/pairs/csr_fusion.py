"""CSR's pair selection: fuse self-scores and CLIP scores over a sentence tree, pick the best and worst path.

Released behaviour (`YiyangZhou/CSR`; the default here, `FusionParams(method="rank")`):

- The tree (`inference_csr/sample.py`): the root is the prompt; each live node gets 5 children, one
  sentence each (diverse group beam search ending at the period token); a child's self-score is
  its parent's plus the beam's length-normalised log-prob of the new sentence; a child that
  produced EOS or reached the length cap is final. Non-final children of a depth are sorted by
  self-score and only the top 1 and bottom 2 are expanded further; the others stay in the tree,
  unexpanded. The CLIP score plays no part in the search.
- Scoring (`inference_csr/score.py`): degenerate and too-short sentences are removed from the tree
  with their subtrees (`selfalign.scores.text_cleaning`), then every remaining child, expanded or
  not, gets a CLIP score.
- Ranks (`inference_csr/utils.py`, `Rank_Node.calculate_ranks`): the children of a node, all of
  them (unexpanded ones too), are sorted by self-score, highest first, and child number i (from 1)
  of k gets `rank = i / k`: the best sibling has 1/k, the worst 1. `clip_rank` is the same by CLIP
  score. Lower is better. The sort is stable: among equal scores the earlier child ranks better.
- Path score (`inference_csr/construct.py`, `dfs` and `process_data`): for every path from the
  root to a final node, the sum over its nodes of `(1 - a) * rank + a * clip_rank`, divided by the
  number of nodes on the path *including the root*, which has no ranks and so enters the mean as 0
  (a slight advantage for short paths). `a = 0.9` (`--clip_alpha` in `step3.sh`; `dfs`'s own
  default of 0.8 is always overridden).
- Pair: the paths are sorted by score, ascending and stable (so ties keep depth-first order); the
  first (lowest, best ranks) is chosen, the last rejected. The candidates are the paths ending at a
  final node; final nodes never enter the pruning (only non-final ones compete for the 3 places),
  so every one of them is a candidate, and unexpanded nodes end no response. Nothing guards
  degenerate trees: no final node raises an IndexError, a single path yields chosen == rejected.

Paper (Zhou et al. 2024, arXiv 2405.14622, §3; `FusionParams(method="weighted")` here): per sentence
`R(s) = lambda * R_I(s) + (1 - lambda) * R_T(s)` with `R_I(s) = max(100 * cos(image, s), 0)` (the
CLIP score), `R_T(s)` the product of the sentence's token probabilities, and `lambda = 0.9` weighting
the *CLIP* term; a response's reward is the sum over its sentences, `R(y) = sum_s R(s)`; the highest
is chosen, the lowest rejected. So the released code differs from the paper in three ways: it fuses
sibling ranks instead of raw scores, it averages over the path instead of summing, and the beam
is steered by the self-score alone. The paper's lambda and the released `a` both weight CLIP, so
one `clip_weight` serves both methods.

How `weighted` reads the paper on this tree: `R_T(s) = exp(self_score(node) - self_score(parent))`,
the exponential of the sentence's length-normalised log-prob, i.e. its geometric-mean token
probability (our self-scores are length-normalised like the released beam scores; the paper's
unnormalised product would shrink with every token); `R_I(s) = max(clip_score, 0)`, where
`clip_score` is CLIP's `logit_scale * cos`, exactly `100 * cos` for the OpenAI checkpoints. The
path reward is the sum over its sentences, higher is better; being a sum of non-negative terms, it
favours responses with more sentences, as the paper's does.

`FusionParams(method="sum")`, for a scorer whose sentence scores add up to a verdict on the whole
response (the shapes world's scene truth: a response's true mentions minus ten per false one): a
path's score is the sum of its sentences' scorer scores, higher is better, the self-scores unused.
Neither fusion above judges a response by its scorer's total: rank fusion sees only each sentence's
place among its siblings (a hallucinating sentence ranks first when all its siblings hallucinate),
and the weighted reward clips negative scores to 0. With the scene truth as scorer, `sum` picks the
pair an oracle would: the most truthful complete response and the least.

Candidates here are the paths ending at a kept leaf (`ScoredNode`): on a tree searched the released
way, where final nodes are never pruned, that is every final node, as in the released code.

Beyond both: a tree without a usable pair gives a `NoPair` with a reason from `NO_PAIR_REASONS`
instead of a crash or a pair of identical responses, and an empty response (EOS as the first
token) is never a candidate: the released code drops it as too short. Ties are broken as the
released code does, with node ids standing for generation order: siblings by node id, paths in
depth-first order over children by node id; chosen = the first of the best paths, rejected = the
last of the worst.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from selfalign.errors import SelfAlignError

FusionMethod = Literal["rank", "weighted", "sum"]

NO_PAIR_REASONS: dict[str, str] = {
    "no_complete_path": "no kept node of the sentence tree ends a non-empty response (EOS or length cap)",
    "single_path": "the sentence tree holds a single complete response, so there is nothing to compare",
    "tied_scores": "all complete responses of the sentence tree have the same path score",
    "identical_texts": "the best and worst paths of the sentence tree spell the same response",
}

# Path scores this close count as equal: rank scores that agree up to float rounding are a tie.
_TIE_TOLERANCE = 1e-9


@dataclass(frozen=True)
class FusionParams:
    """How a path's score combines self-scores and CLIP scores (see the module docstring)."""

    method: FusionMethod = "rank"  # "rank": released code; "weighted": the paper's formula; "sum"
    clip_weight: float = 0.9  # released `a` (on clip_rank) and paper's lambda (on the CLIP score)

    def __post_init__(self) -> None:
        if self.method not in ("rank", "weighted", "sum"):
            raise SelfAlignError(f"fusion method must be 'rank', 'weighted' or 'sum', got {self.method!r}")
        if not 0 <= self.clip_weight <= 1:
            raise SelfAlignError(f"clip_weight must be in [0, 1], got {self.clip_weight}")

    @property
    def lower_is_better(self) -> bool:
        """Rank path scores are mean rank fractions (1/k = best sibling); the others are rewards."""
        return self.method == "rank"


@dataclass(frozen=True)
class ScoredNode:
    """One node of a CSR sentence tree, scored.

    `text` is the response so far, from the first sentence down to this node's (the root's is
    empty), so a complete path's response is its leaf's text. `self_score` is cumulative: the
    parent's plus the new sentence's length-normalised log-prob (the root's is 0). `clip_score` is
    the new sentence's CLIP score (None for the root only). `kept` is False for a node the search
    pruned (not among its depth's top and bottom): it is never expanded and, even if it ended, it
    ends no candidate path, but it still counts among its siblings' ranks, as in the released code.
    `is_leaf` means the response ended here (EOS or a length cap). `adds_sentence` is False for a
    child that is EOS alone: it ends its parent's response without a sentence of its own, ranks
    among its siblings ("stop here" against each further sentence) and so counts in a rank path
    score, but has no sentence to enter a weighted reward or a path's mean CLIP score.

    Nodes whose sentence failed the cleaning (`selfalign.scores.text_cleaning`) are not given at
    all, nor their subtrees: the released code removes them from the tree before ranking.
    """

    node_id: int
    parent_id: int | None
    text: str
    self_score: float
    clip_score: float | None
    kept: bool
    is_leaf: bool
    adds_sentence: bool = True


@dataclass(frozen=True)
class SiblingRanks:
    """A node's rank fractions among its siblings: i / k for the i-th best of k (1/k = best)."""

    self_rank: float
    clip_rank: float


@dataclass(frozen=True)
class PathPair:
    chosen: str
    rejected: str
    chosen_score: float  # path scores, lower is better for "rank" (see FusionParams.lower_is_better)
    rejected_score: float
    chosen_clip_score: float  # mean CLIP score of the path's sentences
    rejected_clip_score: float
    chosen_leaf_id: int
    rejected_leaf_id: int
    num_candidates: int  # complete paths compared
    fusion: FusionParams


@dataclass(frozen=True)
class NoPair:
    reason: str  # a code from NO_PAIR_REASONS
    detail: str


Path = tuple[ScoredNode, ...]  # root first, leaf last


class _Tree:
    """The nodes checked and indexed: each node's children, in node id order."""

    def __init__(self, nodes: Sequence[ScoredNode]):
        self.by_id: dict[int, ScoredNode] = {}
        for node in nodes:
            if node.node_id in self.by_id:
                raise SelfAlignError(f"the sentence tree has two nodes with id {node.node_id}")
            self.by_id[node.node_id] = node
        roots = [node for node in nodes if node.parent_id is None]
        if len(roots) != 1:
            raise SelfAlignError(f"a sentence tree needs exactly one root (parent_id None), got {len(roots)}")
        self.root = roots[0]
        self.children: dict[int, list[ScoredNode]] = {node.node_id: [] for node in nodes}
        for node in sorted(nodes, key=lambda node: node.node_id):
            if node.parent_id is None:
                continue
            if node.parent_id not in self.by_id:
                raise SelfAlignError(
                    f"node {node.node_id} has parent {node.parent_id}, which is not in the tree"
                )
            parent = self.by_id[node.parent_id]
            if parent.is_leaf or not parent.kept:
                raise SelfAlignError(
                    f"node {parent.node_id} has children but was not expanded "
                    f"({'its response ended' if parent.is_leaf else 'it was pruned'})"
                )
            self.children[node.parent_id].append(node)
            if node.clip_score is None:
                raise SelfAlignError(f"node {node.node_id} has no CLIP score")
            if not (math.isfinite(node.self_score) and math.isfinite(node.clip_score)):
                raise SelfAlignError(
                    f"node {node.node_id} has a non-finite score "
                    f"(self {node.self_score}, clip {node.clip_score})"
                )
        if not math.isfinite(self.root.self_score):
            raise SelfAlignError(f"the root's self-score is {self.root.self_score}")

    def complete_paths(self) -> list[Path]:
        """Paths from the root to each kept leaf whose response is not empty, in depth-first order."""
        paths: list[Path] = []
        stack: list[Path] = [(self.root,)]
        while stack:
            path = stack.pop()
            if path[-1].is_leaf and path[-1].kept and path[-1].text.strip():
                paths.append(path)
            stack.extend(path + (child,) for child in reversed(self.children[path[-1].node_id]))
        return paths

    def sibling_ranks(self) -> dict[int, SiblingRanks]:
        ranks: dict[int, SiblingRanks] = {}
        stack = [self.root]
        while stack:
            siblings = self.children[stack.pop().node_id]
            stack.extend(siblings)
            # sorted(reverse=True) is stable: among equal scores the lower node id keeps the better place.
            by_self = sorted(siblings, key=lambda node: node.self_score, reverse=True)
            by_clip = sorted(siblings, key=lambda node: node.clip_score, reverse=True)
            clip_place = {node.node_id: place for place, node in enumerate(by_clip, start=1)}
            for place, node in enumerate(by_self, start=1):
                ranks[node.node_id] = SiblingRanks(
                    place / len(siblings), clip_place[node.node_id] / len(siblings)
                )
        return ranks


def sibling_ranks(nodes: Sequence[ScoredNode]) -> dict[int, SiblingRanks]:
    """The rank fractions of every non-root node among its siblings, by node id."""
    return _Tree(nodes).sibling_ranks()


def complete_paths(nodes: Sequence[ScoredNode]) -> list[Path]:
    """The candidate paths, root to each kept leaf with a non-empty response, in depth-first order
    (children by node id)."""
    return _Tree(nodes).complete_paths()


def rank_path_score(path: Path, ranks: Mapping[int, SiblingRanks], clip_weight: float) -> float:
    """Released fusion: mean over the path of `(1 - a) * rank + a * clip_rank`, the root counting as 0."""
    total = 0.0
    for node in path[1:]:
        rank = ranks[node.node_id]
        total += (1 - clip_weight) * rank.self_rank + clip_weight * rank.clip_rank
    return total / len(path)


def weighted_path_score(path: Path, clip_weight: float) -> float:
    """Paper fusion: the sum over the path's sentences of `lambda * max(clip, 0) + (1 - lambda) * exp(lp)`.

    `lp` is the sentence's own length-normalised log-prob: its self-score minus its parent's. A
    child that is EOS alone adds no sentence, so no reward.
    """
    total = 0.0
    for parent, node in itertools.pairwise(path):
        if not node.adds_sentence:
            continue
        self_reward = math.exp(node.self_score - parent.self_score)
        total += clip_weight * max(node.clip_score, 0.0) + (1 - clip_weight) * self_reward
    return total


def sum_path_score(path: Path) -> float:
    """The sum of the path's sentences' scorer scores (a child that is EOS alone adds no sentence)."""
    return sum(node.clip_score for node in path[1:] if node.adds_sentence)


def select_pair(nodes: Sequence[ScoredNode], fusion: FusionParams = FusionParams()) -> PathPair | NoPair:
    """The best complete path as chosen and the worst as rejected, or why the tree gives no pair."""
    tree = _Tree(nodes)
    paths = tree.complete_paths()
    if not paths:
        return NoPair("no_complete_path", f"none of the {len(nodes)} nodes is a kept leaf")
    if len(paths) == 1:
        return NoPair("single_path", f"only the path to node {paths[0][-1].node_id} is complete")
    if fusion.method == "rank":
        ranks = tree.sibling_ranks()
        scores = [rank_path_score(path, ranks, fusion.clip_weight) for path in paths]
    elif fusion.method == "weighted":
        scores = [weighted_path_score(path, fusion.clip_weight) for path in paths]
    else:
        scores = [sum_path_score(path) for path in paths]
    # Best first; the sort is stable (reverse too), so ties keep depth-first order.
    order = sorted(range(len(paths)), key=scores.__getitem__, reverse=not fusion.lower_is_better)
    best, worst = order[0], order[-1]
    if math.isclose(scores[best], scores[worst], rel_tol=_TIE_TOLERANCE, abs_tol=_TIE_TOLERANCE):
        return NoPair("tied_scores", f"all {len(paths)} complete paths score {scores[best]:.6g}")
    chosen, rejected = paths[best], paths[worst]
    chosen_text, rejected_text = chosen[-1].text.strip(), rejected[-1].text.strip()
    if chosen_text == rejected_text:
        return NoPair(
            "identical_texts",
            f"the best path (to node {chosen[-1].node_id}) and the worst (to node {rejected[-1].node_id}) "
            "give the same response",
        )
    return PathPair(
        chosen=chosen_text,
        rejected=rejected_text,
        chosen_score=scores[best],
        rejected_score=scores[worst],
        chosen_clip_score=_mean_clip_score(chosen),
        rejected_clip_score=_mean_clip_score(rejected),
        chosen_leaf_id=chosen[-1].node_id,
        rejected_leaf_id=rejected[-1].node_id,
        num_candidates=len(paths),
        fusion=fusion,
    )


def _mean_clip_score(path: Path) -> float:
    scores = [node.clip_score for node in path[1:] if node.adds_sentence]
    return sum(scores) / len(scores)  # a candidate's response is not empty: it has a sentence
