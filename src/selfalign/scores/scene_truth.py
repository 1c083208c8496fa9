"""Sentence scores from the shapes world's scene truth: an oracle in CLIP's place, for ablations.

The shapes world knows every image's objects: an eval-kind build (`dataset_builders/shapes.py --kind
eval`, the scenes CSR's shapes recipes build pairs from) has them in its `objects` column. Scoring each
sentence by that truth instead of by CLIP isolates the rest of a method (the tree search, the fusion,
DPO) from its scorer's perception, and answers: how far does the method get with a scorer that never
errs? A sentence scores its true object mentions minus ten for each false one, under the world's
matching rule (`selfalign.synthetic.judge.is_true_mention`, the rule CHAIR uses); a sentence naming no
object scores 0. One false mention outweighs all the true ones a scene can hold (at most 9), so the
oracle puts every sentence, and with CSR's `fusion: sum` every response, without a hallucination
above every one with one, and only then prefers the one that names more (a cost of 1, the first
rule, put "3 true, 1 false" above "1 true"); recipes/shapes/csr/iterate_scene_truth.yaml has the
pairs each rule picked. The scorer finds an image's scene by its pixels, so it scores only images of
its dataset.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from datasets import load_dataset
from PIL import Image

from selfalign.errors import SelfAlignError
from selfalign.scores.clip_scorer import ScorerStats, check_sentence_groups
from selfalign.synthetic.judge import is_true_mention
from selfalign.synthetic.language import mentioned_objects
from selfalign.synthetic.scenes import GRID

SCENE_TRUTH_SCORER = "shapes-world scene truth (an oracle program, not a model)"
OBJECTS_COLUMN = "objects"


# More than the objects a scene can hold, one per cell of its grid.
FALSE_MENTION_COST = GRID * GRID + 1


def sentence_truth_score(sentence: str, objects: Sequence[str]) -> int:
    """True object mentions minus FALSE_MENTION_COST per false one, for a scene of `objects`."""
    return sum(
        1 if is_true_mention(mention, objects) else -FALSE_MENTION_COST
        for mention in mentioned_objects(sentence)
    )


def _pixels_key(image: Image.Image) -> str:
    rgb = image.convert("RGB")
    return f"{rgb.size}:{hashlib.sha256(rgb.tobytes()).hexdigest()}"


class SceneTruthScorer:
    """Scores sentences against their image by the objects its scene holds (a shapes-world eval build)."""

    def __init__(self, dataset_name: str, split: str = "train", image_column: str = "image"):
        try:
            scenes = load_dataset(dataset_name, split=split)
        except (OSError, ValueError) as error:
            raise SelfAlignError(
                f"could not load the scenes '{dataset_name}' (split {split}): {error}"
            ) from error
        missing = [column for column in (image_column, OBJECTS_COLUMN) if column not in scenes.column_names]
        if missing:
            raise SelfAlignError(
                f"the scene-truth scorer needs the columns {missing} in '{dataset_name}': build the scenes "
                "with dataset_builders/shapes.py --kind eval"
            )
        self.objects = {
            _pixels_key(image): objects
            for image, objects in zip(scenes[image_column], scenes[OBJECTS_COLUMN], strict=True)
        }
        self.stats = ScorerStats()

    def objects_in(self, image: Image.Image) -> list[str]:
        """The objects ("<colour> <shape>") of the scene `image` shows."""
        objects = self.objects.get(_pixels_key(image))
        if objects is None:
            raise SelfAlignError(
                "the scene-truth scorer got an image that is not one of its scenes: it scores only the "
                "images of the dataset it was given"
            )
        return objects

    def score(self, images: Sequence[Image.Image], sentences: Sequence[Sequence[str]]) -> list[list[float]]:
        """For each image i, the truth score of each of `sentences[i]`, in the order given."""
        check_sentence_groups(images, sentences)
        scores = []
        for image, group in zip(images, sentences, strict=True):
            if not group:
                scores.append([])
                continue
            objects = self.objects_in(image)
            scores.append([float(sentence_truth_score(sentence, objects)) for sentence in group])
            self.stats.images_encoded += 1
            self.stats.sentences_encoded += len(group)
        return scores
