"""CHAIR: object (and attribute) hallucination in image captions, as an `evaluate` metric.

CHAIR (Rohrbach et al., 2018) compares the objects a caption mentions with the objects the image
really contains:

- CHAIR_i = hallucinated object mentions / all object mentions (over the whole batch);
- CHAIR_s = captions with at least one hallucinated mention / all captions;
- recall  = ground-truth objects mentioned / ground-truth objects (over the whole batch).

Inputs are generic: `predictions` are captions, `references` the ground-truth objects of each image,
and the vocabulary comes as keyword arguments (`objects`, `synonyms`, `attributes`, `modifiers`),
given to `compute()` or once to `evaluate.load()`; vocabulary keywords given to `compute()`
replace the load-time vocabulary as a whole.

Matching rule
-------------
1. Tokens: the text is lower-cased and split into runs of letters and digits; punctuation and
   hyphens separate words and are dropped. An apostrophe (straight or curly) splits a word too
   ("circle's" is "circle" + "s"), except in "n't" contractions, which stay whole ("isn't").
2. Vocabulary phrases: `objects` are the canonical object nouns; `synonyms` add surface forms
   (plurals included: nothing is pluralised automatically). A synonym entry is either
   `surface: canonical` (a string value) or `canonical: [surface, ...]` (a list value).
   `attributes` (e.g. colour words) and `modifiers` (words allowed between an attribute and its
   noun; by default common size words) are plain word lists. Any of them may span several words
   ("dining table"); at each position the longest vocabulary phrase wins. A word both in
   `attributes` and among the object forms is an error; otherwise objects take precedence over
   attributes, and attributes over modifiers.
3. Mentions: every object form in the caption is a mention of its canonical object. Its attributes
   are the attribute words in the unbroken run of attribute and modifier words directly before it:
   "a small red circle" and "a red small circle" both mention (circle, {red}); in "the circle is red"
   and "red and blue circles" only the adjacent run counts ({} and {blue}). Attribute words that
   do not reach an object noun are ignored.
4. Negation: left of that run, an optional count word and then an optional determiner
   ("a", "an", "the", "any") are skipped; if the word before is "no", "not", "without", "never" or
   ends in "n't", the mention is negated and left out of every score ("there is no blue square",
   "there isn't a blue square"). Negation reaches only the phrase right after it.
5. Duplicates: within a caption, mentions of the same (object, attributes) count once.
6. References: each ground-truth entry is read with the same rule and must name exactly one object
   ("red circle", "person", "people"); repeated entries mean several instances (used for counts
   only; for CHAIR and recall an image's objects are a set).
7. Hallucination: a mention (o, B) is correct when some ground-truth object (o, A) has B a subset
   of A, so "circle" matches any circle and "blue circle" needs a blue circle. A hallucinated
   mention whose noun the image does have is an attribute hallucination, otherwise an object
   hallucination. Without `attributes` this is plain CHAIR on object nouns.
8. Recall: a ground-truth object (o, A) is recalled when a correct mention (o, B) has A a subset
   of B: a ground-truth "red circle" needs "red circle", not just "circle".
9. Counts never change CHAIR. A number ("two", "2") right before a mention's run states a count;
   for correct mentions it is checked against the number of ground-truth entries the mention
   matches, and mismatches are reported as count errors. Within a caption, the first count stated
   for a mention is the one checked. "a"/"an" are not counts.
10. An empty caption has no mentions: it is not hallucinated and recalls nothing. Ratios with a
    zero denominator are reported as 0.0.
"""

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import NamedTuple

import datasets
import evaluate

_CITATION = """\
@inproceedings{rohrbach2018object,
  title={Object Hallucination in Image Captioning},
  author={Rohrbach, Anna and Hendricks, Lisa Anne and Burns, Kaylee and Darrell, Trevor and Saenko, Kate},
  booktitle={Proceedings of the 2018 Conference on Empirical Methods in Natural Language Processing},
  year={2018}
}
"""

_DESCRIPTION = """\
CHAIR_i / CHAIR_s object hallucination rates and object recall of captions against ground-truth
object lists, with optional attribute matching ("red circle") and separate count errors. See the
module docstring and README for the exact matching rule.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]`): one caption per image.
    references (`list[list[str]]`): the ground-truth objects of each image, e.g. ["dog", "person"]
        or, with `attributes`, ["red circle", "blue square"]; repeat an entry once per instance if
        count errors should be meaningful.
    objects (`list[str]`): the canonical object nouns.
    synonyms (`dict`, optional): surface forms of the objects, plurals included, either
        {"people": "person"} (surface -> canonical) or {"person": ["people", "man"]} (canonical -> surfaces).
    attributes (`list[str]`, optional): attribute words (e.g. colours) read before an object noun.
    modifiers (`list[str]`, optional): words allowed between an attribute and its noun; defaults to
        common size words, pass [] for none.
    return_details (`bool`, optional): also return per-caption details under "details".
Returns:
    chair_i, chair_s, recall, mean_mentions, count_error_rate (floats) and the counts behind them:
    num_captions, num_mentions, num_hallucinated_mentions, num_object_hallucinations,
    num_attribute_hallucinations, num_hallucinated_captions, num_ground_truth_objects,
    num_recalled_objects, num_negated_mentions, num_counted_mentions, num_count_errors (ints).
Examples:
    >>> chair = evaluate.load("metrics/chair")
    >>> chair.compute(predictions=["a red circle and a blue square"], references=[["red circle"]],
    ...               objects=["circle", "square"], attributes=["red", "blue"])["chair_i"]
    0.5
"""

DEFAULT_MODIFIERS = ("small", "large", "big", "tiny", "little", "medium", "huge")
NUMBER_WORDS = {
    word: value
    for value, word in enumerate(
        ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"],
        start=1,
    )
}
DETERMINERS = frozenset({"a", "an", "the", "any"})
NEGATIONS = frozenset({"no", "not", "without", "never"})


class Role(Enum):
    OBJECT = "object"
    ATTRIBUTE = "attribute"
    MODIFIER = "modifier"
    NUMBER = "number"
    DETERMINER = "determiner"
    NEGATION = "negation"
    OTHER = "other"


_TOKEN = re.compile(r"[^\W_]+(?:'t)?")


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text.lower().replace("\u2019", "'"))


class Tag(NamedTuple):
    role: Role
    value: str  # canonical object, attribute word, or the token itself


@dataclass(frozen=True)
class Mention:
    obj: str
    attributes: frozenset[str]

    def __str__(self) -> str:
        return " ".join([*sorted(self.attributes), self.obj])


@dataclass(frozen=True)
class Occurrence:
    mention: Mention
    count: int | None
    negated: bool


class Lexicon:
    """The vocabulary as word sequences mapped to their role, and the caption parser built on it."""

    def __init__(
        self,
        objects: Iterable[str],
        synonyms: Mapping[str, str | Sequence[str]] | None,
        attributes: Iterable[str] | None,
        modifiers: Iterable[str],
    ):
        canonical_objects = {" ".join(self._phrase(obj)) for obj in objects}
        if not canonical_objects:
            raise ValueError("CHAIR needs a non-empty `objects` vocabulary.")
        object_forms = {self._phrase(obj): obj for obj in canonical_objects}
        for key, value in (synonyms or {}).items():
            if isinstance(value, str):
                object_forms[self._phrase(key)] = " ".join(self._phrase(value))
            else:
                canonical = " ".join(self._phrase(key))
                object_forms.update({self._phrase(surface): canonical for surface in value})
        unknown = sorted(set(object_forms.values()) - canonical_objects)
        if unknown:
            raise ValueError(f"`synonyms` map to objects missing from `objects`: {unknown}")
        attribute_forms = {self._phrase(word): " ".join(self._phrase(word)) for word in attributes or ()}
        ambiguous = sorted(" ".join(form) for form in attribute_forms.keys() & object_forms.keys())
        if ambiguous:
            raise ValueError(f"words are both attributes and objects: {ambiguous}")

        # Later roles overwrite earlier ones: objects beat attributes beat modifiers.
        self._phrases: dict[tuple[str, ...], Tag] = {}
        self._phrases.update({self._phrase(word): Tag(Role.MODIFIER, word) for word in modifiers})
        self._phrases.update({form: Tag(Role.ATTRIBUTE, word) for form, word in attribute_forms.items()})
        self._phrases.update({form: Tag(Role.OBJECT, obj) for form, obj in object_forms.items()})
        self._longest_phrase = max(len(phrase) for phrase in self._phrases)

    @staticmethod
    def _phrase(text: str) -> tuple[str, ...]:
        tokens = tuple(tokenize(text))
        if not tokens:
            raise ValueError(f"vocabulary entry {text!r} has no words")
        return tokens

    def tag(self, text: str) -> list[Tag]:
        tokens = tokenize(text)
        tags = []
        position = 0
        while position < len(tokens):
            for length in range(min(self._longest_phrase, len(tokens) - position), 0, -1):
                tag = self._phrases.get(tuple(tokens[position : position + length]))
                if tag is not None:
                    break
            else:
                length, tag = 1, self._function_word(tokens[position])
            tags.append(tag)
            position += length
        return tags

    @staticmethod
    def _function_word(token: str) -> Tag:
        if token.isdecimal() or token in NUMBER_WORDS:
            return Tag(Role.NUMBER, token)
        if token in DETERMINERS:
            return Tag(Role.DETERMINER, token)
        if token in NEGATIONS or token.endswith("n't"):
            return Tag(Role.NEGATION, token)
        return Tag(Role.OTHER, token)

    def occurrences(self, text: str) -> list[Occurrence]:
        """Every object mention in `text`, in order, with its attributes, stated count and negation."""
        tags = self.tag(text)
        found = []
        for noun_index, noun in enumerate(tags):
            if noun.role != Role.OBJECT:
                continue
            attributes = set()
            left = noun_index - 1
            while left >= 0 and tags[left].role in (Role.ATTRIBUTE, Role.MODIFIER):
                if tags[left].role == Role.ATTRIBUTE:
                    attributes.add(tags[left].value)
                left -= 1
            count = None
            if left >= 0 and tags[left].role == Role.NUMBER:
                word = tags[left].value
                count = int(word) if word.isdecimal() else NUMBER_WORDS[word]
                left -= 1
            if left >= 0 and tags[left].role == Role.DETERMINER:
                left -= 1
            negated = left >= 0 and tags[left].role == Role.NEGATION
            found.append(Occurrence(Mention(noun.value, frozenset(attributes)), count, negated))
        return found

    def ground_truth_object(self, reference: str) -> Mention:
        occurrences = self.occurrences(reference)
        if len(occurrences) != 1 or occurrences[0].negated:
            raise ValueError(
                f"ground-truth entry {reference!r} must name exactly one object from `objects`, "
                f"found {[str(occurrence.mention) for occurrence in occurrences]}"
            )
        return occurrences[0].mention


@dataclass
class CaptionScore:
    mentions: list[Mention]
    hallucinated: list[Mention]
    attribute_hallucinations: list[Mention]
    ground_truth: list[Mention]
    recalled: list[Mention]
    negated: list[Mention]
    count_errors: list[dict]
    num_counted: int

    def details(self) -> dict:
        def names(mentions: list[Mention]) -> list[str]:
            return [str(mention) for mention in mentions]

        return {
            "mentions": names(self.mentions),
            "hallucinated": names(self.hallucinated),
            "attribute_hallucinations": names(self.attribute_hallucinations),
            "ground_truth": names(self.ground_truth),
            "recalled": names(self.recalled),
            "negated": names(self.negated),
            "count_errors": self.count_errors,
            "chair_i": _ratio(len(self.hallucinated), len(self.mentions)),
            "hallucinated_caption": bool(self.hallucinated),
            "recall": _ratio(len(self.recalled), len(self.ground_truth)),
        }


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0


def _fits(general: Mention, specific: Mention) -> bool:
    """Whether `general` names the same object as `specific` with a subset of its attributes."""
    return general.obj == specific.obj and general.attributes <= specific.attributes


def score_caption(caption: str, references: Sequence[str], lexicon: Lexicon) -> CaptionScore:
    truth_instances = [lexicon.ground_truth_object(reference) for reference in references]
    ground_truth = list(dict.fromkeys(truth_instances))
    present_objects = {truth.obj for truth in ground_truth}

    stated_counts: dict[Mention, int | None] = {}  # insertion-ordered, one entry per distinct mention
    negated: dict[Mention, None] = {}
    for occurrence in lexicon.occurrences(caption):
        if occurrence.negated:
            negated[occurrence.mention] = None
        elif stated_counts.get(occurrence.mention) is None:
            stated_counts[occurrence.mention] = occurrence.count

    correct, hallucinated = [], []
    for mention in stated_counts:
        is_correct = any(_fits(mention, truth) for truth in ground_truth)
        (correct if is_correct else hallucinated).append(mention)

    count_errors = []
    counted = [mention for mention in correct if stated_counts[mention] is not None]
    for mention in counted:
        true_count = sum(_fits(mention, truth) for truth in truth_instances)
        if stated_counts[mention] != true_count:
            count_errors.append(
                {"mention": str(mention), "stated": stated_counts[mention], "true": true_count}
            )

    return CaptionScore(
        mentions=list(stated_counts),
        hallucinated=hallucinated,
        attribute_hallucinations=[mention for mention in hallucinated if mention.obj in present_objects],
        ground_truth=ground_truth,
        recalled=[truth for truth in ground_truth if any(_fits(truth, mention) for mention in correct)],
        negated=list(negated),
        count_errors=count_errors,
        num_counted=len(counted),
    )


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Chair(evaluate.Metric):
    def __init__(self, objects=None, synonyms=None, attributes=None, modifiers=None, **kwargs):
        # evaluate.load() forwards its extra keyword arguments here; EvaluationModule would drop them.
        super().__init__(**kwargs)
        self.vocabulary = {
            "objects": objects,
            "synonyms": synonyms,
            "attributes": attributes,
            "modifiers": modifiers,
        }

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string"),
                    "references": datasets.Sequence(datasets.Value("string")),
                }
            ),
            reference_urls=["https://arxiv.org/abs/1809.02156"],
        )

    def _compute(
        self,
        predictions,
        references,
        objects=None,
        synonyms=None,
        attributes=None,
        modifiers=None,
        return_details=False,
    ):
        given = {"objects": objects, "synonyms": synonyms, "attributes": attributes, "modifiers": modifiers}
        # A vocabulary is one consistent whole, so compute() replaces the load-time one rather than patching it.
        vocabulary = given if any(value is not None for value in given.values()) else self.vocabulary
        if vocabulary["objects"] is None:
            raise ValueError(
                "CHAIR needs `objects` (the object vocabulary), in compute() or evaluate.load()."
            )
        lexicon = Lexicon(
            objects=vocabulary["objects"],
            synonyms=vocabulary["synonyms"],
            attributes=vocabulary["attributes"],
            modifiers=DEFAULT_MODIFIERS if vocabulary["modifiers"] is None else vocabulary["modifiers"],
        )

        scores = [
            score_caption(caption, image_objects, lexicon)
            for caption, image_objects in zip(predictions, references, strict=True)
        ]
        num_mentions = sum(len(score.mentions) for score in scores)
        num_hallucinated = sum(len(score.hallucinated) for score in scores)
        num_attribute_hallucinations = sum(len(score.attribute_hallucinations) for score in scores)
        num_hallucinated_captions = sum(bool(score.hallucinated) for score in scores)
        num_ground_truth = sum(len(score.ground_truth) for score in scores)
        num_recalled = sum(len(score.recalled) for score in scores)
        num_counted = sum(score.num_counted for score in scores)
        num_count_errors = sum(len(score.count_errors) for score in scores)
        result = {
            "chair_i": _ratio(num_hallucinated, num_mentions),
            "chair_s": _ratio(num_hallucinated_captions, len(scores)),
            "recall": _ratio(num_recalled, num_ground_truth),
            "mean_mentions": _ratio(num_mentions, len(scores)),
            "count_error_rate": _ratio(num_count_errors, num_counted),
            "num_captions": len(scores),
            "num_mentions": num_mentions,
            "num_hallucinated_mentions": num_hallucinated,
            "num_object_hallucinations": num_hallucinated - num_attribute_hallucinations,
            "num_attribute_hallucinations": num_attribute_hallucinations,
            "num_hallucinated_captions": num_hallucinated_captions,
            "num_ground_truth_objects": num_ground_truth,
            "num_recalled_objects": num_recalled,
            "num_negated_mentions": sum(len(score.negated) for score in scores),
            "num_counted_mentions": num_counted,
            "num_count_errors": num_count_errors,
        }
        if return_details:
            result["details"] = [score.details() for score in scores]
        return result
