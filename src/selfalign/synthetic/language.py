"""What is said about a scene: captions, questions with reference answers, POPE probes, and the object
vocabulary that hallucination metrics match against.

Everything is generated from the scene's truth, so no statement is false. Every object is named as
"<colour> <shape>" (a size may come before the colour: "a small red circle"), so captions parse back
into objects exactly. Every word is in the tiny tokenizers' corpus (`selfalign.tiny_zoo`), so the
tiny models never see a word they cannot spell with learned pieces.

Object matching rule (`mentioned_objects` implements it; a ground-truth judge can apply it):

1. Lower-case the text and split it into words (runs of letters).
2. A shape word is a name in SHAPES, or a key of SYNONYMS mapped to its shape (plural forms only).
3. Each shape word is one mention. If the word right before it is in COLOURS the mention is
   "<colour> <shape>", otherwise it is the bare "<shape>".
4. A "<colour> <shape>" mention is correct iff it is in the image's `object_list`; a bare "<shape>"
   mention iff some object of the list has that shape. Anything else is a hallucinated object.

Counts ("two red circles") and sizes do not change a mention: CHAIR compares sets of objects.
Negation is not understood ("there is no blue star" mentions a blue star), so apply the rule to
descriptions, not to answers of yes/no questions; those are what POPE probes are for.
metrics/chair takes the vocabulary as `objects=SHAPES, synonyms=SYNONYMS, attributes=COLOURS` and
applies a superset of this rule (it also reads size words between colour and shape and skips
negated mentions); on this module's captions the two agree.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from selfalign.synthetic.scenes import (
    COLOURS,
    RELATIONS,
    SHAPES,
    Scene,
    SceneObject,
    World,
    relations_between,
)

SYNONYMS = {f"{shape}s": shape for shape in SHAPES}

CAPTION_PROMPTS = (
    "Describe the image.",
    "Describe the image in detail.",
    "What is in the image?",
    "What do you see in this picture?",
    "What shapes are in the image?",
)
NUMBER_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
POSITION_PHRASES = {
    "top left": "at the top left",
    "top": "at the top",
    "top right": "at the top right",
    "left": "on the left",
    "center": "in the center",
    "right": "on the right",
    "bottom left": "at the bottom left",
    "bottom": "at the bottom",
    "bottom right": "at the bottom right",
}
RELATION_PHRASES = {
    "left of": "to the left of",
    "right of": "to the right of",
    "above": "above",
    "below": "below",
}
# The phrasings of a caption (`caption`'s styles; a world recipe's caption_styles picks among them).
CAPTION_STYLES = ("there_is", "image_shows", "counted", "sentences", "relation")
QUESTION_TYPES = ("count", "colour_count", "colour", "presence", "position", "relation")
POPE_STRATEGIES = ("random", "popular", "adversarial")


def rng_for(scene: Scene, purpose: str) -> random.Random:
    """A random stream for one use ("caption", "questions", ...) of one scene: each text of a scene
    stays the same whatever else is generated for it."""
    return random.Random(f"{scene.seed}/{purpose}")


def object_list(scene: Scene) -> list[str]:
    """The ground-truth objects of a scene as "<colour> <shape>" phrases, one per object."""
    return [obj.phrase for obj in scene.objects]


def mentioned_objects(text: str) -> list[str]:
    """The object mentions in `text` under the matching rule of this module's docstring, in order."""
    words = re.findall(r"[a-z]+", text.lower())
    mentions = []
    for position, word in enumerate(words):
        shape = word if word in SHAPES else SYNONYMS.get(word)
        if shape is None:
            continue
        before = words[position - 1] if position else None
        mentions.append(f"{before} {shape}" if before in COLOURS else shape)
    return mentions


# ---------------------------------------------------------------------------------------------
# Noun phrases
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Group:
    """The objects of a scene that share colour and shape: named together ("two red circles")."""

    colour: str
    shape: str
    members: tuple[SceneObject, ...]

    @property
    def count(self) -> int:
        return len(self.members)

    @property
    def phrase(self) -> str:
        return f"{self.colour} {self.shape}"

    @property
    def common_size(self) -> str | None:
        sizes = {obj.size for obj in self.members}
        return sizes.pop() if len(sizes) == 1 else None


def _groups(scene: Scene) -> list[_Group]:
    members: dict[tuple[str, str], list[SceneObject]] = {}
    for obj in scene.objects:
        members.setdefault((obj.colour, obj.shape), []).append(obj)
    return [_Group(colour, shape, tuple(objs)) for (colour, shape), objs in members.items()]


def _with_article(phrase: str) -> str:
    return f"{'an' if phrase[0] in 'aeiou' else 'a'} {phrase}"


def _plural(noun: str, count: int) -> str:
    return noun if count == 1 else f"{noun}s"


def _number(count: int, noun: str) -> str:
    """ "one shape", "three shapes", "no circles"."""
    return f"{NUMBER_WORDS[count]} {_plural(noun, count)}"


def _capitalised(text: str) -> str:
    return text[0].upper() + text[1:]


def _listed(phrases: list[str]) -> str:
    return phrases[0] if len(phrases) == 1 else f"{', '.join(phrases[:-1])} and {phrases[-1]}"


def _group_phrase(group: _Group, rng: random.Random, with_position: bool) -> str:
    """ "a small red circle on the left", "two red circles": a size only when the group shares one,
    a position only for a single object."""
    size = group.common_size if rng.random() < 0.5 else None
    described = " ".join(word for word in (size, group.colour) if word)
    if group.count > 1:
        return f"{NUMBER_WORDS[group.count]} {described} {group.shape}s"
    phrase = _with_article(f"{described} {group.shape}")
    return f"{phrase} {POSITION_PHRASES[group.members[0].region]}" if with_position else phrase


# ---------------------------------------------------------------------------------------------
# Captions
# ---------------------------------------------------------------------------------------------


def caption(
    scene: Scene,
    rng: random.Random,
    companion_of: Callable[[str], str | None] | None = None,
    styles: Sequence[str] = CAPTION_STYLES,
) -> str:
    """A caption that names every object of the scene exactly once (groups of equal objects with their
    count), in one of the phrasings `styles` names (CAPTION_STYLES): one sentence, or one sentence per
    object; "relation" only for a scene of two single objects.

    The groups come in random order. Given the world's `companion_of` (`World.companion`), a present
    companion is named right after its object, as a describer names a fork after the knife: so a
    language prior sees the pair as one habit, and a companion the noisy annotator adds takes the same
    place as a true one."""
    groups = _groups(scene)
    rng.shuffle(groups)
    if companion_of is not None:
        groups = _companions_after_objects(groups, companion_of)
    two_single_objects = len(groups) == 2 and all(group.count == 1 for group in groups)
    usable = [name for name in styles if name != "relation" or two_single_objects]
    return _CAPTION_WRITERS[rng.choice(usable)](scene, groups, rng)


def _companions_after_objects(
    groups: list[_Group], companion_of: Callable[[str], str | None]
) -> list[_Group]:
    """Each chain of companions in the scene (object, its companion, that one's companion ...) in order,
    the chains in the groups' order; a chain that closes on itself (a world of few colours and shapes)
    starts at its first group."""
    by_phrase = {group.phrase: group for group in groups}
    followers = {by_phrase.get(companion_of(phrase)) for phrase in by_phrase} - {None}
    ordered: list[_Group] = []
    for group in [g for g in groups if g not in followers] + [g for g in groups if g in followers]:
        while group is not None and group not in ordered:
            ordered.append(group)
            group = by_phrase.get(companion_of(group.phrase))
    return ordered


def _there_is_caption(scene: Scene, groups: list[_Group], rng: random.Random) -> str:
    with_position = rng.random() < 0.5
    verb = "is" if groups[0].count == 1 else "are"
    return f"There {verb} {_listed([_group_phrase(g, rng, with_position) for g in groups])}."


def _shows_caption(scene: Scene, groups: list[_Group], rng: random.Random) -> str:
    with_position = rng.random() < 0.5
    return f"The image shows {_listed([_group_phrase(g, rng, with_position) for g in groups])}."


def _counted_caption(scene: Scene, groups: list[_Group], rng: random.Random) -> str:
    with_position = rng.random() < 0.5
    listed = _listed([_group_phrase(g, rng, with_position) for g in groups])
    return f"{_capitalised(_number(len(scene.objects), 'shape'))}: {listed}."


def _sentences_caption(scene: Scene, groups: list[_Group], rng: random.Random) -> str:
    opening = f"The image shows {_number(len(scene.objects), 'shape')}."
    return " ".join([opening, *(_group_sentence(group, rng) for group in groups)])


def _relation_caption(scene: Scene, groups: list[_Group], rng: random.Random) -> str:
    first, second = (group.members[0] for group in groups)
    relation = RELATION_PHRASES[rng.choice(relations_between(first, second))]
    subject = _capitalised(_group_phrase(groups[0], rng, with_position=False))
    return f"{subject} is {relation} {_group_phrase(groups[1], rng, with_position=False)}."


# Each style's writer, by the name a recipe's caption_styles uses.
_CAPTION_WRITERS = {
    "there_is": _there_is_caption,  # "There is a red circle, a blue star and a green square."
    "image_shows": _shows_caption,  # "The image shows a red circle on the left and a blue star."
    "counted": _counted_caption,  # "Two shapes: a red circle and a blue star."
    "sentences": _sentences_caption,  # "The image shows two shapes. There is a red circle. ..."
    "relation": _relation_caption,  # "A red circle is to the left of a blue star." (two objects only)
}


def _group_sentence(group: _Group, rng: random.Random) -> str:
    """One true sentence about one group: "There is a red circle.", "A blue star is on the left."."""
    if group.count > 1:
        return f"There are {_group_phrase(group, rng, with_position=False)}."
    if rng.random() < 0.5:
        return f"There is {_group_phrase(group, rng, with_position=rng.random() < 0.5)}."
    subject = _capitalised(_group_phrase(group, rng, with_position=False))
    return f"{subject} is {POSITION_PHRASES[group.members[0].region]}."


def object_sentences(scene: Scene, rng: random.Random) -> list[str]:
    """One true sentence per group of equal objects: the sentence-level texts a CLIP scores."""
    return [_group_sentence(group, rng) for group in _groups(scene)]


# ---------------------------------------------------------------------------------------------
# Questions with reference answers
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QuestionAnswer:
    question_type: str  # one of QUESTION_TYPES
    question: str
    answer: str


def questions(scene: Scene, world: World, rng: random.Random, count: int) -> list[QuestionAnswer]:
    """`count` questions of distinct types (as many as apply if fewer), each with its reference answer."""
    unique = _unique_objects(scene)
    applicable = [
        question_type
        for question_type in QUESTION_TYPES
        if (question_type != "position" or unique) and (question_type != "relation" or len(unique) >= 2)
    ]
    chosen = rng.sample(applicable, min(count, len(applicable)))
    return [_ASK[question_type](scene, world, rng) for question_type in chosen]


def _unique_objects(scene: Scene) -> list[SceneObject]:
    """Objects no other object shares colour and shape with: "the red circle" names exactly one."""
    counts = Counter(obj.phrase for obj in scene.objects)
    return [obj for obj in scene.objects if counts[obj.phrase] == 1]


def _there_are(count: int, noun: str) -> str:
    return f"There {'is' if count == 1 else 'are'} {_number(count, noun)}."


def _pick_target(rng: random.Random, present: list[str], everything: tuple[str, ...]) -> str:
    """Mostly something in the scene, sometimes anything the world has (so "no" answers occur too)."""
    return rng.choice(present) if rng.random() < 0.75 else rng.choice(everything)


def _ask_count(scene: Scene, world: World, rng: random.Random) -> QuestionAnswer:
    if rng.random() < 0.2:
        question = rng.choice(("How many shapes are there?", "How many shapes are there in the image?"))
        return QuestionAnswer("count", question, _there_are(len(scene.objects), "shape"))
    shape = _pick_target(rng, [obj.shape for obj in scene.objects], world.shapes)
    question = rng.choice((f"How many {shape}s are there?", f"How many {shape}s are in the image?"))
    return QuestionAnswer("count", question, _there_are(scene.shape_counts()[shape], shape))


def _ask_colour_count(scene: Scene, world: World, rng: random.Random) -> QuestionAnswer:
    colour = _pick_target(rng, [obj.colour for obj in scene.objects], world.colours)
    answer = _there_are(scene.colour_counts()[colour], f"{colour} shape")
    return QuestionAnswer("colour_count", f"How many {colour} shapes are there?", answer)


def _ask_colour(scene: Scene, world: World, rng: random.Random) -> QuestionAnswer:
    shape = _pick_target(rng, [obj.shape for obj in scene.objects], world.shapes)
    colours = Counter(obj.colour for obj in scene.objects if obj.shape == shape)
    total = sum(colours.values())
    if total == 0:
        return QuestionAnswer("colour", f"What colour is the {shape}?", f"There is no {shape} in the image.")
    if total == 1:
        (colour,) = colours
        return QuestionAnswer("colour", f"What colour is the {shape}?", f"The {shape} is {colour}.")
    if len(colours) == 1:
        (colour,) = colours
        answer = f"The {_number(total, shape)} are {colour}."
    else:
        parts = [f"{_number(n, shape)} {'is' if n == 1 else 'are'} {colour}" for colour, n in colours.items()]
        answer = _capitalised(_listed(parts)) + "."
    return QuestionAnswer("colour", f"What colours are the {shape}s?", answer)


def _ask_presence(scene: Scene, world: World, rng: random.Random) -> QuestionAnswer:
    counts = Counter(object_list(scene))
    absent = [phrase for phrase in world.object_vocabulary() if phrase not in counts]
    phrase = rng.choice(list(counts)) if rng.random() < 0.5 or not absent else rng.choice(absent)
    question = rng.choice(
        (f"Is there {_with_article(phrase)}?", f"Is there {_with_article(phrase)} in the image?")
    )
    count = counts[phrase]
    if count == 0:
        answer = f"No, there is no {phrase}."
    elif count == 1:
        answer = f"Yes, there is {_with_article(phrase)}."
    else:
        answer = f"Yes, there are {NUMBER_WORDS[count]} {phrase}s."
    return QuestionAnswer("presence", question, answer)


def _ask_position(scene: Scene, world: World, rng: random.Random) -> QuestionAnswer:
    obj = rng.choice(_unique_objects(scene))
    question = rng.choice((f"Where is the {obj.phrase}?", f"Where is the {obj.phrase} in the image?"))
    return QuestionAnswer("position", question, f"It is {POSITION_PHRASES[obj.region]}.")


def _ask_relation(scene: Scene, world: World, rng: random.Random) -> QuestionAnswer:
    subject, other = rng.sample(_unique_objects(scene), 2)
    holding = relations_between(subject, other)
    wanted_yes = rng.random() < 0.5
    relation = rng.choice(holding if wanted_yes else [r for r in RELATIONS if r not in holding])
    phrase = RELATION_PHRASES[relation]
    question = f"Is the {subject.phrase} {phrase} the {other.phrase}?"
    if wanted_yes:
        answer = f"Yes, the {subject.phrase} is {phrase} the {other.phrase}."
    else:
        answer = f"No, the {subject.phrase} is not {phrase} the {other.phrase}."
    return QuestionAnswer("relation", question, answer)


_ASK = {
    "count": _ask_count,
    "colour_count": _ask_colour_count,
    "colour": _ask_colour,
    "presence": _ask_presence,
    "position": _ask_position,
    "relation": _ask_relation,
}


# ---------------------------------------------------------------------------------------------
# POPE probes
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    strategy: str  # one of POPE_STRATEGIES
    object: str  # "<colour> <shape>"
    question: str
    answer: str  # "yes" | "no"


def pope_question(phrase: str) -> str:
    return f"Is there {_with_article(phrase)} in the image?"


def object_frequencies(scenes: Iterable[Scene]) -> Counter:
    """In how many of `scenes` each "<colour> <shape>" appears: the popularity POPE's popular probes use."""
    return Counter(phrase for scene in scenes for phrase in set(object_list(scene)))


def pope_probes(
    scene: Scene, world: World, frequencies: Mapping[str, int], rng: random.Random, per_answer: int
) -> list[Probe]:
    """POPE yes/no probes, balanced per strategy: the same `m` present objects ("yes") with `m` absent
    ones ("no"), m = min(per_answer, distinct present objects, absent objects). Absent objects are:

    - random: drawn uniformly from the world's absent objects;
    - popular: the `m` absent objects most frequent across the dataset (`frequencies`);
    - adversarial: attribute neighbours of the present objects, i.e. absent objects with the colour
      or the shape of a present one, those neighbouring the most present objects first (more
      frequent first among equals); absent non-neighbours, by popularity, only if neighbours run out.

    Ties are broken by the world's vocabulary order, so popular and adversarial picks are deterministic.
    """
    present = list(dict.fromkeys(object_list(scene)))
    vocabulary = world.object_vocabulary()
    absent = [phrase for phrase in vocabulary if phrase not in present]
    m = min(per_answer, len(present), len(absent))
    positives = rng.sample(present, m)

    def popularity(phrase: str) -> tuple[int, int]:
        return -frequencies.get(phrase, 0), vocabulary.index(phrase)

    negatives = {
        "random": rng.sample(absent, m),
        "popular": sorted(absent, key=popularity)[:m],
        "adversarial": sorted(absent, key=lambda phrase: (-neighbours(phrase, present), *popularity(phrase)))[
            :m
        ],
    }
    return [
        Probe(strategy, phrase, pope_question(phrase), answer)
        for strategy in POPE_STRATEGIES
        for positive, negative in zip(positives, negatives[strategy], strict=True)
        for phrase, answer in ((positive, "yes"), (negative, "no"))
    ]


def neighbours(phrase: str, present: Iterable[str]) -> int:
    """How many of the `present` objects share the colour or the shape of `phrase`."""
    colour, shape = phrase.split()
    return sum(1 for other in present if other.split()[0] == colour or other.split()[1] == shape)
