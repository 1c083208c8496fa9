"""The scores of a model's captions and answers: CHAIR and POPE through the local `evaluate` modules
(`metrics/chair`, `metrics/pope`, with the shapes world's vocabulary), 95% intervals from resampled
scenes, the wrong mentions split by what is wrong, and CHAIR_i over each caption's first mentions.

The kinds, the prior's measures (`evaluation/companions.py`) and the matched-length CHAIR_i extend
metrics/chair's rule: they read mentions with `selfalign.synthetic.mentioned_objects`, which agrees
with it on the world's captions, and count each distinct mention of a caption once, as CHAIR does."""

from __future__ import annotations

from pathlib import Path
from statistics import mean

import evaluate
import numpy

from selfalign.evaluation.companions import companion_scores
from selfalign.synthetic import COLOURS, POPE_STRATEGIES, SHAPES, SYNONYMS
from selfalign.synthetic.language import mentioned_objects

# Absolute paths: evaluate.load reads "metrics/chair" (one slash, relative) as a Hub id.
METRICS_DIR = Path(__file__).resolve().parents[3] / "metrics"


# CHAIR_i at matched length reads this many first mentions of each caption: a method that only
# shortens captions (fewer late mentions) does not lower it.
MATCHED_LENGTH_MENTIONS = 3


def caption_scores(
    captions: list[str], objects: list[list[str]], companions: dict[str, str] | None = None
) -> dict:
    """CHAIR_i, CHAIR_s, recall and their counts, the mean caption length in words, and 95% intervals;
    the wrong mentions by kind; CHAIR_i at matched length; with the world's `companions` (object ->
    companion), the co-occurrence lift and companion recall."""
    chair = evaluate.load(str(METRICS_DIR / "chair"), keep_in_memory=True)
    scores = chair.compute(
        predictions=captions,
        references=objects,
        objects=list(SHAPES),
        synonyms=dict(SYNONYMS),
        attributes=list(COLOURS),
        return_details=True,
    )
    details = scores.pop("details")
    words = [len(caption.split()) for caption in captions]
    scores["mean_caption_words"] = mean(words)
    scores["hallucinations_by_kind"] = hallucination_kinds(captions, objects, companions)
    scores["chair_i_matched_length"] = first_mentions_chair_i(captions, objects, MATCHED_LENGTH_MENTIONS)
    scores["matched_length_mentions"] = MATCHED_LENGTH_MENTIONS
    if companions:
        scores["companions"] = companion_scores(captions, objects, companions)
    scores["intervals_95"] = bootstrap_intervals(details, words)
    return scores


BOOTSTRAP_RESAMPLES = 2000


def bootstrap_intervals(details: list[dict], words: list[int]) -> dict[str, list[float]]:
    """95% percentile intervals of CHAIR_i, CHAIR_s, recall and mean caption words, from resampling the
    scenes with replacement (a fixed seed, so a report is reproducible).

    With 200 scenes and ~300 object mentions, CHAIR_i is only known to within a few points: two
    models whose intervals overlap widely may not differ at all.
    """
    counts = numpy.array(
        [
            [len(d["hallucinated"]), len(d["mentions"]), d["hallucinated_caption"], len(d["recalled"]),
             len(d["ground_truth"]), length]
            for d, length in zip(details, words, strict=True)
        ],
        dtype=float,
    )  # fmt: skip
    rows = numpy.random.default_rng(0).integers(0, len(counts), size=(BOOTSTRAP_RESAMPLES, len(counts)))
    sums = counts[rows].sum(axis=1)  # (resamples, columns)
    hallucinated, mentions, hallucinated_captions, recalled, ground_truth, total_words = sums.T
    resampled = {
        "chair_i": hallucinated / numpy.maximum(mentions, 1),
        "chair_s": hallucinated_captions / len(counts),
        "recall": recalled / numpy.maximum(ground_truth, 1),
        "mean_caption_words": total_words / len(counts),
    }
    return {
        name: [round(float(value), 4) for value in numpy.percentile(values, [2.5, 97.5])]
        for name, values in resampled.items()
    }


HALLUCINATION_KINDS = (
    "absent_companion",
    "wrong_shape",
    "wrong_colour",
    "swapped",
    "both_absent",
    "absent_shape",
)


def hallucination_kinds(
    captions: list[str], objects: list[list[str]], companions: dict[str, str] | None = None
) -> dict[str, int]:
    """The wrong object mentions by what is wrong, against the scene's objects ("<colour> <shape>"),
    each distinct mention of a caption once (as CHAIR counts them, however often it is repeated),
    the first kind that applies:

    - absent_companion: the companion of an object in the scene (prior-driven; only in a world with
      companions, `companions` mapping each object to its own);
    - wrong_shape: "<colour> <shape>" whose colour is in the scene but whose shape is not;
    - wrong_colour: the shape is in the scene, the colour is not;
    - swapped: both are in the scene, on different objects;
    - both_absent: neither is;
    - absent_shape: a bare "<shape>" that no object has.

    Which kind dominates says what a method can fix: a policy that names present colours with
    absent shapes does not see shapes, which preference data alone cannot teach; an absent companion
    is named from a prior that the vision could have overruled.
    """
    counts = dict.fromkeys(HALLUCINATION_KINDS, 0)
    for caption, truth in zip(captions, objects, strict=True):
        colours = {obj.split()[0] for obj in truth}
        shapes = {obj.split()[1] for obj in truth}
        expected_companions = {companions[obj] for obj in truth if obj in (companions or {})}
        for mention in dict.fromkeys(mentioned_objects(caption)):  # each object once, as CHAIR counts
            if not _hallucinated(mention, truth, shapes):
                continue
            if mention in expected_companions:
                counts["absent_companion"] += 1
                continue
            if " " not in mention:
                counts["absent_shape"] += 1
                continue
            colour, shape = mention.split()
            kind = {
                (True, False): "wrong_shape",
                (False, True): "wrong_colour",
                (True, True): "swapped",
                (False, False): "both_absent",
            }[(colour in colours, shape in shapes)]
            counts[kind] += 1
    return counts


def _hallucinated(mention: str, truth: list[str], shapes: set[str]) -> bool:
    """The matching rule's verdict: a "<colour> <shape>" not in the scene, or a bare shape no object has."""
    return mention not in truth and mention not in shapes


def first_mentions_chair_i(captions: list[str], objects: list[list[str]], mentions: int) -> float:
    """CHAIR_i over the first `mentions` distinct objects each caption names (all of a shorter one's)."""
    wrong = named = 0
    for caption, truth in zip(captions, objects, strict=True):
        shapes = {obj.split()[1] for obj in truth}
        first = list(dict.fromkeys(mentioned_objects(caption)))[:mentions]
        wrong += sum(_hallucinated(mention, truth, shapes) for mention in first)
        named += len(first)
    return wrong / max(named, 1)


def pope_scores(answers: list[str], probes: list[dict]) -> dict[str, dict]:
    """POPE scores per sampling strategy (random, popular, adversarial) and over all probes."""
    pope = evaluate.load(str(METRICS_DIR / "pope"), keep_in_memory=True)
    groups: dict[str, tuple[list[str], list[str]]] = {
        strategy: ([], []) for strategy in (*POPE_STRATEGIES, "all")
    }
    for answer, probe in zip(answers, probes, strict=True):
        for group in (probe["strategy"], "all"):
            predictions, references = groups.setdefault(group, ([], []))
            predictions.append(answer)
            references.append(probe["answer"])
    return {
        group: pope.compute(predictions=predictions, references=references)
        for group, (predictions, references) in groups.items()
        if references
    }
