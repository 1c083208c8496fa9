"""POPE: yes/no object probing ("Is there a X in the image?"), as an `evaluate` metric.

POPE (Li et al., 2023) asks a model about objects that are and are not in the image and scores the
answers as binary classification with "yes" as the positive class.

Answer parsing: an answer is lower-cased and split into words (runs of letters and digits); the
first word that is exactly "yes" or "no" is the answer ("Yes.", "YES, there is", "No, I see none").
An answer with neither word ("I can't tell", "yeah", "nope") counts as "no", the usual POPE
convention, and is also counted in `unparsed`, so a high count says the parser, not the model,
decided those answers. References must be "yes" or "no" (any case, surrounding spaces ignored).
Ratios with a zero denominator are reported as 0.0.
"""

import re

import datasets
import evaluate

_CITATION = """\
@inproceedings{li2023evaluating,
  title={Evaluating Object Hallucination in Large Vision-Language Models},
  author={Li, Yifan and Du, Yifan and Zhou, Kun and Wang, Jinpeng and Zhao, Wayne Xin and Wen, Ji-Rong},
  booktitle={Proceedings of the 2023 Conference on Empirical Methods in Natural Language Processing},
  year={2023}
}
"""

_DESCRIPTION = """\
POPE accuracy, precision, recall, F1 (positive class "yes") and yes-ratio of free-text answers to
yes/no object-presence probes. An answer is the first "yes"/"no" word in it; answers with neither
count as "no" and are reported in `unparsed`.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]`): the model's free-text answers.
    references (`list[str]`): the true answers, "yes" or "no".
Returns:
    accuracy, precision, recall, f1, yes_ratio (floats); unparsed, true_positives, false_positives,
    true_negatives, false_negatives, num_examples (ints).
Examples:
    >>> pope = evaluate.load("metrics/pope")
    >>> pope.compute(predictions=["Yes.", "no", "I think so"], references=["yes", "yes", "no"])["accuracy"]
    0.6666666666666666
"""

_WORD = re.compile(r"[^\W_]+")


def parse_answer(answer: str) -> str | None:
    """Return whichever of the words "yes" and "no" comes first in `answer`, or None if neither occurs."""
    return next((word for word in _WORD.findall(answer.lower()) if word in ("yes", "no")), None)


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Pope(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
            reference_urls=["https://arxiv.org/abs/2305.10355"],
        )

    def _compute(self, predictions, references):
        truths = [reference.strip().lower() for reference in references]
        invalid = sorted({truth for truth in truths if truth not in ("yes", "no")})
        if invalid:
            raise ValueError(f'POPE references must be "yes" or "no", got {invalid}')
        parsed = [parse_answer(prediction) for prediction in predictions]
        said_yes = [answer == "yes" for answer in parsed]
        is_yes = [truth == "yes" for truth in truths]

        outcomes = list(zip(said_yes, is_yes, strict=True))
        true_positives = outcomes.count((True, True))
        false_positives = outcomes.count((True, False))
        false_negatives = outcomes.count((False, True))
        true_negatives = outcomes.count((False, False))
        precision = _ratio(true_positives, true_positives + false_positives)
        recall = _ratio(true_positives, true_positives + false_negatives)
        return {
            "accuracy": _ratio(true_positives + true_negatives, len(truths)),
            "precision": precision,
            "recall": recall,
            "f1": _ratio(2 * precision * recall, precision + recall),
            "yes_ratio": _ratio(sum(said_yes), len(truths)),
            "unparsed": parsed.count(None),
            "true_positives": true_positives,
            "false_positives": false_positives,
            "true_negatives": true_negatives,
            "false_negatives": false_negatives,
            "num_examples": len(truths),
        }
