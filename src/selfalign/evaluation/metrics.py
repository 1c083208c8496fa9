"""The scores of a model's captions and answers: CHAIR and POPE through the local `evaluate` modules
(`metrics/chair`, `metrics/pope`, with the shapes world's vocabulary), 95% intervals from resampled
scenes, and the wrong mentions split by what is wrong."""

from __future__ import annotations

from pathlib import Path
from statistics import mean

import evaluate
import numpy

from selfalign.synthetic import COLOURS, POPE_STRATEGIES, SHAPES, SYNONYMS
from selfalign.synthetic.language import mentioned_objects

# Absolute paths: evaluate.load reads "metrics/chair" (one slash, relative) as a Hub id.
METRICS_DIR = Path(__file__).resolve().parents[3] / "metrics"


def caption_scores(captions: list[str], objects: list[list[str]]) -> dict:
    """CHAIR_i, CHAIR_s, recall and their counts, the mean caption length in words, and 95% intervals."""
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
    scores["hallucinations_by_kind"] = hallucination_kinds(captions, objects)
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


HALLUCINATION_KINDS = ("wrong_shape", "wrong_colour", "swapped", "both_absent", "absent_shape")


def hallucination_kinds(captions: list[str], objects: list[list[str]]) -> dict[str, int]:
    """The wrong object mentions by what is wrong, against the scene's objects ("<colour> <shape>"),
    each distinct mention of a caption once (as CHAIR counts them, however often it is repeated):

    - wrong_shape: "<colour> <shape>" whose colour is in the scene but whose shape is not;
    - wrong_colour: the shape is in the scene, the colour is not;
    - swapped: both are in the scene, on different objects;
    - both_absent: neither is;
    - absent_shape: a bare "<shape>" that no object has.

    Which kind dominates says what a method can fix: a policy that names present colours with
    absent shapes does not see shapes, which preference data alone cannot teach.
    """
    counts = dict.fromkeys(HALLUCINATION_KINDS, 0)
    for caption, truth in zip(captions, objects, strict=True):
        colours = {obj.split()[0] for obj in truth}
        shapes = {obj.split()[1] for obj in truth}
        for mention in dict.fromkeys(mentioned_objects(caption)):  # each object once, as CHAIR counts
            if mention in truth or mention in shapes:
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
