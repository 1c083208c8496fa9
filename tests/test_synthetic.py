"""The shapes world: deterministic scenes, true captions and answers, POPE probes, disjoint splits, the builder.

Truth is re-derived here from object boxes and attributes, independently of how the world's own
code words it, and compared with what the captions, answers and probes say.
"""

import hashlib
import random
import re
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from datasets import load_dataset
from helpers import REPO
from transformers import AutoTokenizer

from selfalign.synthetic import (
    CAPTION_PROMPTS,
    CAPTION_STYLES,
    COLOURS,
    POPE_STRATEGIES,
    QUESTION_TYPES,
    SHAPES,
    ShapesWorldArguments,
    World,
    caption,
    generate_scene,
    mentioned_objects,
    object_frequencies,
    object_list,
    object_sentences,
    pope_probes,
    questions,
    render,
    rng_for,
)
from selfalign.tiny_zoo import shapes_corpus

WORLD = World()
NUMBERS = {"no": 0, "a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4}
COLOUR = f"(?:{'|'.join(COLOURS)})"
SHAPE = f"(?:{'|'.join(SHAPES)})"
POSITION = r"at the top left|at the top right|at the top|on the left|in the center|on the right|at the bottom left|at the bottom right|at the bottom"  # noqa: E501


def scenes(split: str, count: int, world: World = WORLD):
    return [world.scene(split, index) for index in range(count)]


def pixel_hash(scene) -> str:
    return hashlib.sha256(render(scene).tobytes()).hexdigest()


def region_words(obj, canvas_size: int) -> set[str]:
    """The coarse region of an object from its box centre, as the words a position phrase uses."""
    x0, y0, x1, y1 = obj.box
    column, row = (x0 + x1) / 2 * 3 // canvas_size, (y0 + y1) / 2 * 3 // canvas_size
    words = {0: {"top"}, 2: {"bottom"}}.get(row, set()) | {0: {"left"}, 2: {"right"}}.get(column, set())
    return words or {"center"}


def holds(relation: str, subject, other) -> bool:
    """A relation between two objects, from their boxes."""
    (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = subject.box, other.box
    return {
        "to the left of": ax1 <= bx0,
        "to the right of": bx1 <= ax0,
        "above": ay1 <= by0,
        "below": by1 <= ay0,
    }[relation]


def the(scene, phrase: str):
    (obj,) = [obj for obj in scene.objects if obj.phrase == phrase]
    return obj


# ---------------------------------------------------------------------------------------------
# Scenes
# ---------------------------------------------------------------------------------------------


def test_a_seed_gives_the_same_scene_and_pixels_and_other_seeds_differ():
    for seed in (0, 1, 2**62 + 7):
        first, again = generate_scene(WORLD, seed), generate_scene(WORLD, seed)
        assert first == again
        assert render(first).tobytes() == render(again).tobytes()
    many = [generate_scene(WORLD, seed) for seed in range(200)]
    assert len({scene.objects for scene in many}) == 200
    assert len({pixel_hash(scene) for scene in many}) == 200


@pytest.mark.parametrize("canvas_size", [32, 64, 100])
def test_objects_lie_inside_the_canvas_without_overlapping(canvas_size):
    world = World(canvas_size=canvas_size)
    for scene in scenes("train", 300, world):
        assert 1 <= len(scene.objects) <= 4
        image = np.asarray(render(scene))
        assert image.shape == (canvas_size, canvas_size, 3)
        for i, obj in enumerate(scene.objects):
            x0, y0, x1, y1 = obj.box
            assert 0 <= x0 < x1 <= canvas_size and 0 <= y0 < y1 <= canvas_size
            assert (obj.colour, obj.shape) in {(c, s) for c in world.colours for s in world.shapes}
            for other in scene.objects[i + 1 :]:
                ox0, oy0, ox1, oy1 = other.box
                assert x1 <= ox0 or ox1 <= x0 or y1 <= oy0 or oy1 <= y0, (obj, other)
            # The object is drawn in its own colour inside its box.
            patch = image[y0:y1, x0:x1].reshape(-1, 3)
            assert (np.abs(patch.astype(int) - image[(y0 + y1) // 2, (x0 + x1) // 2]).sum(axis=1) == 0).any()


def test_clutter_is_grey_and_optional():
    cluttered, clean = scenes("train", 50), scenes("train", 50, World(clutter=False))
    assert all(scene.specks for scene in cluttered)
    assert not any(scene.specks or scene.lines for scene in clean)
    for scene in clean[:10]:
        pixels = np.asarray(render(scene)).reshape(-1, 3)
        greys = pixels[(pixels[:, 0] == pixels[:, 1]) & (pixels[:, 1] == pixels[:, 2])]
        assert set(greys[:, 0].tolist()) <= {245}, "without clutter the only grey is the background"


def test_train_and_eval_scenes_never_share_a_seed_or_an_image():
    train, held_out = scenes("train", 2000), scenes("eval", 200)
    train_seeds, eval_seeds = {scene.seed for scene in train}, {scene.seed for scene in held_out}
    assert len(train_seeds) == 2000 and len(eval_seeds) == 200
    assert not train_seeds & eval_seeds
    assert not {pixel_hash(scene) for scene in train} & {pixel_hash(scene) for scene in held_out}
    assert World(seed=1).scene("eval", 0) != WORLD.scene("eval", 0)


# ---------------------------------------------------------------------------------------------
# Captions
# ---------------------------------------------------------------------------------------------

MENTION = re.compile(
    rf"\b(?P<count>an?|one|two|three|four) (?:(?P<size>small|large) )?(?P<colour>{COLOUR}) (?P<shape>{SHAPE})s?"
    rf"(?: is)?(?: (?P<position>{POSITION}))?\b",
    re.IGNORECASE,
)


def test_every_caption_names_exactly_the_ground_truth_objects_and_only_true_facts():
    styles = Counter()
    for scene in scenes("train", 600):
        text = caption(scene, rng_for(scene, "caption"))
        named = Counter()
        for mention in MENTION.finditer(text):
            phrase = f"{mention['colour']} {mention['shape']}"
            count = NUMBERS[mention["count"].lower()]
            named[phrase] += count
            members = [obj for obj in scene.objects if obj.phrase == phrase]
            if mention["size"]:
                assert {obj.size for obj in members} == {mention["size"]}, text
            if mention["position"]:
                assert count == 1 and set(mention["position"].split()[2:]) == region_words(members[0], 64), (
                    text
                )
        assert named == Counter(object_list(scene)), text
        assert set(mentioned_objects(text)) == set(object_list(scene)), text
        total = re.search(r"\b(One|one|Two|two|Three|three|Four|four) shapes?\b", text)
        if total:
            assert NUMBERS[total[1].lower()] == len(scene.objects), text
        relation = re.search(
            rf"({COLOUR}) ({SHAPE}) is (to the left of|to the right of|above|below) an? ", text
        )
        if relation:
            subject = the(scene, f"{relation[1]} {relation[2]}")
            other = the(scene, " ".join(text.rstrip(".").split()[-2:]))
            assert holds(relation[3], subject, other), text
            styles["relation"] += 1
        styles["sentences" if text.count(".") > 1 else "one sentence"] += 1
    assert min(styles.values()) >= 20, styles


def test_caption_styles_pick_the_phrasings_and_the_default_keeps_every_one():
    # "sentences" alone: an opening, then one sentence per group of equal objects, each naming one.
    for scene in scenes("train", 300):
        text = caption(scene, rng_for(scene, "caption"), styles=["sentences"])
        opening, *rest = [sentence for sentence in text.split(". ") if sentence]
        assert re.fullmatch(r"The image shows (one|two|three|four) shapes?", opening), text
        assert [len(set(mentioned_objects(sentence))) for sentence in rest] == [1] * len(rest), text
        assert set(mentioned_objects(text)) == set(object_list(scene)), text
        # The default is the list of every style: the same caption as naming them all.
        assert caption(scene, rng_for(scene, "caption")) == caption(
            scene, rng_for(scene, "caption"), styles=list(CAPTION_STYLES)
        )


@pytest.mark.parametrize("styles", [["relation"], ["sentences", "haiku"], []])
def test_caption_styles_that_cannot_caption_every_scene_are_refused(styles):
    with pytest.raises(ValueError, match="caption_styles must name at least one of"):
        ShapesWorldArguments(caption_styles=styles)


def test_object_sentences_are_true_and_cover_every_object():
    for scene in scenes("train", 200):
        sentences = object_sentences(scene, rng_for(scene, "sentences"))
        named = Counter()
        for sentence in sentences:
            (mention,) = MENTION.finditer(sentence)
            named[f"{mention['colour']} {mention['shape']}"] += NUMBERS[mention["count"].lower()]
        assert named == Counter(object_list(scene))


def test_mentioned_objects_follows_the_documented_rule():
    text = "Two small red circles, a Blue Stars and a square; the green thing is big."
    assert mentioned_objects(text) == ["red circle", "blue star", "square"]


# ---------------------------------------------------------------------------------------------
# Questions and reference answers
# ---------------------------------------------------------------------------------------------


def number_in(answer: str) -> int:
    return NUMBERS[re.match(r"(?:Yes, |No, )?There (?:is|are) (\w+)", answer, re.IGNORECASE)[1].lower()]


def check_answer(scene, question: str, answer: str) -> None:
    shapes, colours = (
        Counter(obj.shape for obj in scene.objects),
        Counter(obj.colour for obj in scene.objects),
    )
    phrases = Counter(object_list(scene))
    if match := re.fullmatch(r"How many shapes are there(?: in the image)?\?", question):
        assert number_in(answer) == len(scene.objects)
    elif match := re.fullmatch(rf"How many ({SHAPE})s are (?:there|in the image)\?", question):
        assert number_in(answer) == shapes[match[1]]
    elif match := re.fullmatch(rf"How many ({COLOUR}) shapes are there\?", question):
        assert number_in(answer) == colours[match[1]]
    elif match := re.fullmatch(rf"What colours? (?:is|are) the ({SHAPE})s?\?", question):
        truth = Counter(obj.colour for obj in scene.objects if obj.shape == match[1])
        if not truth:
            assert answer == f"There is no {match[1]} in the image."
        else:
            said = Counter()
            for part in re.finditer(rf"(?:(\w+) )?{match[1]}s? (?:is|are) ({COLOUR})", answer, re.IGNORECASE):
                said[part[2]] += NUMBERS[part[1].lower()] if part[1] and part[1].lower() != "the" else 1
            assert set(said) == set(truth)
            if len(truth) > 1 or sum(truth.values()) > 1:
                assert said == truth
    elif match := re.fullmatch(rf"Is there an? ({COLOUR}) ({SHAPE})(?: in the image)?\?", question):
        count = phrases[f"{match[1]} {match[2]}"]
        assert answer.startswith("Yes, " if count else "No, ")
        assert number_in(answer) == count
    elif match := re.fullmatch(rf"Where is the ({COLOUR} {SHAPE})(?: in the image)?\?", question):
        said = set(answer.rstrip(".").split()) & {"top", "bottom", "left", "right", "center"}
        assert said == region_words(the(scene, match[1]), scene.canvas_size)
    elif match := re.fullmatch(
        rf"Is the ({COLOUR} {SHAPE}) (to the left of|to the right of|above|below) the ({COLOUR} {SHAPE})\?",
        question,
    ):
        truth = holds(match[2], the(scene, match[1]), the(scene, match[3]))
        assert answer.startswith("Yes, " if truth else "No, ")
    else:
        raise AssertionError(f"unexpected question: {question}")


def test_reference_answers_agree_with_the_ground_truth():
    types, yes_no = Counter(), Counter()
    for scene in scenes("train", 800):
        asked = questions(scene, WORLD, rng_for(scene, "questions"), 3)
        assert len({qa.question_type for qa in asked}) == len(asked) == 3
        for qa in asked:
            try:
                check_answer(scene, qa.question, qa.answer)
            except AssertionError as error:
                raise AssertionError(f"{object_list(scene)}: {qa}") from error
            types[qa.question_type] += 1
            if qa.question_type in ("presence", "relation"):
                yes_no[qa.question_type, qa.answer.split(",")[0]] += 1
    assert set(types) == set(QUESTION_TYPES)
    for question_type in ("presence", "relation"):
        share = yes_no[question_type, "Yes"] / (yes_no[question_type, "Yes"] + yes_no[question_type, "No"])
        assert 0.4 < share < 0.6, (question_type, yes_no)


# ---------------------------------------------------------------------------------------------
# POPE probes
# ---------------------------------------------------------------------------------------------


def shares_an_attribute(phrase: str, present: set[str]) -> bool:
    colour, shape = phrase.split()
    return any(colour == other.split()[0] or shape == other.split()[1] for other in present)


def test_pope_probes_are_balanced_right_and_sampled_as_each_strategy_claims():
    held_out = scenes("eval", 300)
    frequencies = object_frequencies(held_out)
    vocabulary = set(WORLD.object_vocabulary())
    negatives_by_strategy = {strategy: Counter() for strategy in POPE_STRATEGIES}
    for scene in held_out:
        present = set(object_list(scene))
        absent = vocabulary - present
        probes = pope_probes(scene, WORLD, frequencies, rng_for(scene, "pope"), 3)
        for strategy in POPE_STRATEGIES:
            mine = [probe for probe in probes if probe.strategy == strategy]
            yes = [probe.object for probe in mine if probe.answer == "yes"]
            no = [probe.object for probe in mine if probe.answer == "no"]
            assert len(yes) == len(no) == min(3, len(present))
            assert set(yes) <= present and set(no) <= absent and len(set(no)) == len(no)
            for probe in mine:
                assert re.fullmatch(rf"Is there an? {probe.object} in the image\?", probe.question)
            unchosen = absent - set(no)
            if strategy == "popular":
                assert min(frequencies[p] for p in no) >= max(frequencies[p] for p in unchosen)
            if strategy == "adversarial":
                assert all(shares_an_attribute(phrase, present) for phrase in no), (present, no)
            negatives_by_strategy[strategy].update(no)
    # Random negatives spread over the vocabulary; popular ones are the few most frequent objects.
    assert len(negatives_by_strategy["random"]) > 30
    assert {p for p, _ in negatives_by_strategy["popular"].most_common(3)} <= {
        p for p, _ in frequencies.most_common(6)
    }
    assert negatives_by_strategy["adversarial"] != negatives_by_strategy["random"]


# ---------------------------------------------------------------------------------------------
# Vocabulary: everything said is spelt with words the tiny tokenizers were trained on
# ---------------------------------------------------------------------------------------------


def all_texts(count: int) -> list[str]:
    texts = list(CAPTION_PROMPTS)
    train = scenes("train", count)
    frequencies = object_frequencies(train)
    for scene in train:
        rng = random.Random(scene.seed)
        texts.append(caption(scene, rng))
        texts += object_sentences(scene, rng)
        for qa in questions(scene, WORLD, rng, len(QUESTION_TYPES)):
            texts += [qa.question, qa.answer]
        texts += [probe.question for probe in pope_probes(scene, WORLD, frequencies, rng, 3)]
    return texts


def test_every_word_is_in_the_tiny_tokenizers_vocabulary(tiny_model_dirs):
    corpus_words = {word for sentence in shapes_corpus() for word in re.findall(r"[a-z]+", sentence.lower())}
    texts = all_texts(400)
    words = {word for text in texts for word in re.findall(r"[a-z]+", text.lower())}
    assert words <= corpus_words, sorted(words - corpus_words)
    assert set(COLOURS) | set(SHAPES) | {f"{shape}s" for shape in SHAPES} <= words

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dirs["llava"])
    byte_pieces = {token for token in tokenizer.get_vocab() if re.fullmatch(r"<0x[0-9A-F]{2}>", token)}
    for text in set(texts):
        tokens = tokenizer.tokenize(text)
        assert tokenizer.unk_token not in tokens and not byte_pieces & set(tokens), (text, tokens)


# ---------------------------------------------------------------------------------------------
# The builder
# ---------------------------------------------------------------------------------------------

# Columns and rows per kind for recipes/tiny/shapes.yaml: 24 train scenes, 12 eval scenes, 2 questions.
EXPECTED = {
    "sft": ({"id", "scene_seed", "images", "messages", "task", "annotator_added"}, 24 * 3),
    "eval": (
        {
            "id",
            "scene_seed",
            "image",
            "instruction",
            "reference",
            "objects",
            "object_details",
            "relations",
            "num_objects",
            "shape_counts",
            "colour_counts",
            "pope",
            "companions",
        },
        12,
    ),  # fmt: skip
    "clip": ({"id", "scene_seed", "image", "caption", "sentences"}, 24),
    "qa": ({"id", "scene_seed", "image", "instruction", "reference", "question_type"}, 24 * 2),
}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    """Every kind built from the tiny recipe, two builds at a time as separate processes."""
    root = tmp_path_factory.mktemp("shapes")

    def build(kind: str):
        command = [sys.executable, str(REPO / "dataset_builders" / "shapes.py"),
                   "--config", str(REPO / "recipes" / "tiny" / "shapes.yaml"),
                   "--kind", kind, "--output_dir", str(root / kind)]  # fmt: skip
        return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(zip(EXPECTED, pool.map(build, EXPECTED), strict=True))
    for kind, result in results.items():
        assert result.returncode == 0, (kind, result.stderr[-3000:])
    return {kind: load_dataset(str(root / kind), split="train") for kind in EXPECTED}


@pytest.mark.parametrize("kind", list(EXPECTED))
def test_builder_writes_each_kind_with_its_columns_and_rows(built, kind):
    columns, num_rows = EXPECTED[kind]
    rows = built[kind]
    assert set(rows.column_names) == columns
    assert len(rows) == num_rows
    assert len(set(rows["id"])) == num_rows


def test_built_rows_match_the_world(built):
    world = World()
    eval_scenes = {scene.seed: scene for scene in scenes("eval", 12, world)}
    train_seeds = {scene.seed for scene in scenes("train", 24, world)}
    for row in built["eval"]:
        scene = eval_scenes[row["scene_seed"]]
        assert np.array_equal(np.asarray(row["image"]), np.asarray(render(scene)))
        assert row["objects"] == object_list(scene)
        assert row["num_objects"] == len(scene.objects) == sum(row["shape_counts"].values())
        assert row["shape_counts"] == scene.shape_counts() and row["colour_counts"] == scene.colour_counts()
        assert [probe["answer"] for probe in row["pope"]].count("yes") * 2 == len(row["pope"]) > 0
        assert row["instruction"] in CAPTION_PROMPTS
    for kind in ("sft", "clip", "qa"):
        assert set(built[kind]["scene_seed"]) == train_seeds
    conversation = built["sft"][0]["messages"]
    assert [turn["role"] for turn in conversation] == ["user", "assistant"]
    assert [part["type"] for part in conversation[0]["content"]] == ["image", "text"]
    assert len(built["sft"][0]["images"]) == 1
    assert Counter(built["sft"]["task"])["caption"] == 24
