"""CSR (Calibrated Self-Rewarding): sentence trees from the policy, CLIP-calibrated, one pair per prompt.

Composed of the shared pieces: `selfalign.samples.search_trees` grows each prompt's sentence tree
(self-scores from the policy's own log-probs), `selfalign.scores` cleans and CLIP-scores every new
sentence against its image, `selfalign.pairs.select_pair` fuses the two and picks the best and the
worst complete response. `dataset_builders/csr_pairs.py` runs it over an image set and publishes the
pairs; `scripts/iterate.py` repeats build -> DPO -> merge.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from PIL import Image

from selfalign.errors import SelfAlignError
from selfalign.images import ImageSourceArguments
from selfalign.pairs import FusionParams, NoPair, PathPair, ScoredNode, select_pair
from selfalign.samples import SentenceTree, TreeSearchParams
from selfalign.scores import ClipScorer, SceneTruthScorer, SentenceCleaning, clean_sentence

SentenceScorer = ClipScorer | SceneTruthScorer


@dataclass
class CsrArguments:
    """Recipe keys of CSR's pair construction: the tree search, the CLIP scorer, cleaning and fusion."""

    clip_model: str | None = field(
        default=None, metadata={"help": "Hub id or folder of the CLIP that scores sentences against images."}
    )
    scorer: Literal["clip", "scene_truth"] = field(
        default="clip",
        metadata={
            "help": "clip: CSR's CLIP scores; scene_truth: an oracle ablation for the shapes world, each "
            "sentence scored by its scene's objects (the images must be a shapes eval build's dataset_name)."
        },
    )
    clip_revision: str | None = field(default=None, metadata={"help": "Branch, tag or commit of the CLIP."})
    clip_batch_size: int = field(default=64, metadata={"help": "Images or sentences per CLIP forward pass."})
    iteration: int = field(
        default=1, metadata={"help": "The CSR round these pairs train (a column of every row)."}
    )
    children: int = field(default=5, metadata={"help": "Children per expanded node, one more sentence each."})
    keep_top: int = field(
        default=1, metadata={"help": "Unfinished nodes kept per depth and prompt, best scores."}
    )
    keep_bottom: int = field(default=2, metadata={"help": "... and worst scores (kept as negatives)."})
    max_depth: int = field(default=16, metadata={"help": "Sentences per response at most."})
    max_sentence_tokens: int = field(default=64, metadata={"help": "Tokens per sentence at most."})
    max_total_tokens: int = field(default=512, metadata={"help": "Tokens per response at most."})
    temperature: float = field(
        default=1.0, metadata={"help": "Sampling temperature of the children; 0 greedy."}
    )
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling threshold of the children."})
    diversity_penalty: float = field(
        default=0.0,
        metadata={
            "help": "> 0 (with temperature 0): diverse greedy children, the released code's diverse beam "
            "search with one beam per group (it used 3.0); 0: sampled children."
        },
    )
    sentence_ends: list[str] = field(
        default_factory=lambda: [".", "!", "?"], metadata={"help": "Text endings that close a sentence."}
    )
    fusion: Literal["rank", "weighted", "sum"] = field(
        default="rank",
        metadata={
            "help": "rank: the released code's rank fusion; weighted: the paper's weighted reward sum; "
            "sum: the sum of the scorer's sentence scores (the scene-truth oracle's verdict on a response)."
        },
    )
    clip_weight: float = field(
        default=0.9, metadata={"help": "Weight of the CLIP term: the released `a` or the paper's lambda."}
    )
    strip_symbols: bool = field(default=True, metadata={"help": "Delete stray symbols before CLIP scoring."})
    drop_foreign_script: bool = field(
        default=True, metadata={"help": "Drop sentences with Hangul, kana or Cyrillic (and their subtrees)."}
    )
    drop_html_entities: bool = field(default=True, metadata={"help": "Drop sentences with runs of &nbsp;."})
    drop_repetition: bool = field(
        default=True, metadata={"help": "Drop sentences that repeat a word or character."}
    )
    max_newlines: int | None = field(
        default=5, metadata={"help": "Drop sentences with more newlines than this (null: no limit)."}
    )
    min_sentence_chars: int = field(default=4, metadata={"help": "Drop cleaned sentences shorter than this."})

    def __post_init__(self) -> None:
        if self.iteration < 1:
            raise SelfAlignError(f"iteration counts from 1, got {self.iteration}")
        if self.scorer == "clip" and not self.clip_model:
            raise SelfAlignError("clip_model is required: the CLIP that scores the sentences")
        # Built once here, so a bad value stops the run before any model loads.
        self.tree_params()
        self.fusion_params()
        self.cleaning()

    def tree_params(self) -> TreeSearchParams:
        return TreeSearchParams(
            children=self.children,
            keep_top=self.keep_top,
            keep_bottom=self.keep_bottom,
            max_depth=self.max_depth,
            max_sentence_tokens=self.max_sentence_tokens,
            max_total_tokens=self.max_total_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            diversity_penalty=self.diversity_penalty,
            sentence_ends=tuple(self.sentence_ends),
        )

    def children_description(self) -> str:
        if self.diversity_penalty:
            return f"diverse greedy decoding with diversity penalty {self.diversity_penalty}"
        return f"sampled at temperature {self.temperature}" + (
            f", top-p {self.top_p}" if self.top_p < 1 else ""
        )

    def fusion_params(self) -> FusionParams:
        return FusionParams(method=self.fusion, clip_weight=self.clip_weight)

    def cleaning(self) -> SentenceCleaning:
        return SentenceCleaning(
            strip_symbols=self.strip_symbols,
            drop_foreign_script=self.drop_foreign_script,
            drop_html_entities=self.drop_html_entities,
            drop_repetition=self.drop_repetition,
            max_newlines=self.max_newlines,
            min_chars=self.min_sentence_chars,
        )

    def sentence_scorer(self, images: ImageSourceArguments, device: str | None = None) -> SentenceScorer:
        """The CLIP scorer; or, for `scorer: scene_truth`, the truth of the scenes `images` reads."""
        if self.scorer == "clip":
            return ClipScorer(
                self.clip_model, revision=self.clip_revision, batch_size=self.clip_batch_size, device=device
            )
        if not images.dataset_name:
            raise SelfAlignError(
                "scorer: scene_truth scores the scenes of a dataset_name source (a shapes-world eval build "
                "with an objects column), not images from a folder or a manifest"
            )
        return SceneTruthScorer(images.dataset_name, images.dataset_split, images.image_column)

    def scorer_description(self) -> str:
        if self.scorer == "clip":
            return "by CLIP against the image"
        return (
            "by the scene's truth in CLIP's place (an oracle ablation: the sentence's true object mentions "
            "minus ten per false one)"
        )

    def fusion_description(self) -> str:
        if self.fusion == "rank":
            return (
                f"rank fusion as in the released code: a path's score is the mean over its nodes (root "
                f"included) of (1 - a) * self_rank + a * clip_rank with a = {self.clip_weight}, ranks being "
                "i/k among siblings (1/k best); lower is better"
            )
        if self.fusion == "weighted":
            return (
                f"the paper's weighted reward: the sum over the path's sentences of lambda * max(clip, 0) + "
                f"(1 - lambda) * exp(sentence mean log-prob) with lambda = {self.clip_weight}; higher is better"
            )
        return "the sum of the scorer's scores of the path's sentences (self-scores unused); higher is better"


@dataclass
class TreeScoring:
    """What scoring did to a batch of trees: sentences dropped by cleaning, per reason."""

    dropped: Counter = field(default_factory=Counter)  # reason -> sentences (their subtrees go with them)


def score_trees(
    scorer: SentenceScorer,
    cleaning: SentenceCleaning,
    images: Sequence[Image.Image],
    trees: Sequence[SentenceTree],
    scoring: TreeScoring,
) -> list[list[ScoredNode]]:
    """Clean and CLIP-score every new sentence of each tree against its image (one scorer call for all).

    A sentence that fails the cleaning is dropped with its subtree, as the released code does; the
    others, pruned nodes included (they count in their siblings' ranks), are scored as cleaned. A
    child that is EOS alone (the model ends the response after its parent's sentences) is not a
    degenerate sentence but the response's end: it is kept, and its empty text is CLIP-scored, so
    that among siblings "stop here" ranks against each further sentence by how well that matches
    the image. Under the root it would end an empty response, which is never a candidate.
    """
    survivors, texts = [], []
    for tree in trees:
        alive, cleaned = {0}, []  # node ids whose whole path survived; their cleaned sentences
        for node in tree.nodes[1:]:
            if node.parent_id not in alive:
                continue
            if node.finish_reason == "eos" and not node.sentence.strip():
                alive.add(node.node_id)
                cleaned.append((node, ""))
                continue
            sentence = clean_sentence(node.sentence, cleaning)
            if not sentence.kept:
                scoring.dropped[sentence.drop_reason] += 1
                continue
            alive.add(node.node_id)
            cleaned.append((node, sentence.text))
        survivors.append(cleaned)
        texts.append([text for _, text in cleaned])
    clip_scores = scorer.score(images, texts)
    scored = []
    for tree, cleaned, scores in zip(trees, survivors, clip_scores, strict=True):
        root = ScoredNode(0, None, "", 0.0, None, kept=True, is_leaf=False)
        scored.append(
            [root]
            + [
                ScoredNode(
                    node_id=node.node_id,
                    parent_id=node.parent_id,
                    text=tree.text(node.node_id),
                    self_score=node.score,
                    clip_score=clip_score,
                    kept=node.kept,
                    is_leaf=node.finish_reason is not None,
                    adds_sentence=bool(text),
                )
                for (node, text), clip_score in zip(cleaned, scores, strict=True)
            ]
        )
    return scored


def pairs_from_trees(
    scorer: SentenceScorer,
    args: CsrArguments,
    images: Sequence[Image.Image],
    trees: Sequence[SentenceTree],
    scoring: TreeScoring,
) -> list[PathPair | NoPair]:
    """One `PathPair` (chosen = best path, rejected = worst) or `NoPair` (why not) per tree."""
    fusion = args.fusion_params()
    return [
        select_pair(nodes, fusion) for nodes in score_trees(scorer, args.cleaning(), images, trees, scoring)
    ]
