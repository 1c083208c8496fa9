"""Companions and the noisy annotator: the co-occurrence prior and the SFT captions that over-trust it.

Every claim is checked by counting over generated scenes and captions, against the scenes' truth.
"""

import hashlib
import math
import random
import subprocess
import sys

import pytest
from datasets import load_dataset
from helpers import REPO

from selfalign.build.runner import BuildArguments
from selfalign.config import RecipeError, parse_recipe
from selfalign.synthetic import ShapesWorldArguments, World, caption, mentioned_objects, object_list, rng_for
from selfalign.synthetic.annotator import NoisyAnnotator

WORLD = World(companions=True, companion_rate=0.5)


def scenes(world: World, split: str, count: int):
    return [world.scene(split, index) for index in range(count)]


def within(observed: int, trials: int, rate: float) -> bool:
    """`observed` successes of `trials` are within 4 standard deviations of `rate`."""
    return abs(observed - rate * trials) <= 4 * math.sqrt(trials * rate * (1 - rate)) + 1


def test_each_object_has_one_companion_of_another_colour_and_shape():
    pairs = WORLD.companion_pairs()
    assert set(pairs) == set(WORLD.object_vocabulary())
    assert sorted(pairs.values()) == sorted(pairs)  # each object is exactly one object's companion
    for phrase, companion in pairs.items():
        (colour, shape), (other_colour, other_shape) = phrase.split(), companion.split()
        assert colour != other_colour and shape != other_shape
    assert WORLD.companion("red circle") == "green square"
    assert World().companion("red circle") is None and World().companion_pairs() == {}


def test_a_companion_takes_the_next_object_at_the_set_rate():
    # At rate 1 with four objects, each placed object's companion is the next one: a chain of four.
    chained = World(companions=True, companion_rate=1.0, min_objects=4, max_objects=4)

    def chain_from(phrase):
        links = [phrase]
        while len(links) < 4:
            links.append(chained.companion(links[-1]))
        return set(links)

    for scene in scenes(chained, "train", 200):
        present = set(object_list(scene))
        assert any(chain_from(first) == present for first in present), present

    # At rate 0.5 a companion is present beside its object far more often than in a world without.
    def co_occurrence(world):
        with_object = [s for s in scenes(world, "train", 3000) if "red circle" in object_list(s)]
        return sum("green square" in object_list(s) for s in with_object) / len(with_object)

    assert co_occurrence(WORLD) > co_occurrence(World(companions=True)) + 0.2


# The scenes of the truthful world before companions existed (every earlier report was measured on them).
TRUTHFUL_WORLD_DIGEST = "6ee90fb745a16612d4a7ff0273f7135a8c007c7e34f6da0628a6e8c9366217e3"


def test_a_world_without_co_occurrence_draws_the_scenes_it_always_did():
    for world in (World(), World(companions=True)):
        drawn = [world.scene(split, index) for split in ("train", "eval") for index in range(500)]
        assert hashlib.sha256(repr(drawn).encode()).hexdigest() == TRUTHFUL_WORLD_DIGEST


ANNOTATOR = NoisyAnnotator(
    WORLD, noise_rate=0.2, strong_objects=("red circle", "green circle"), strong_noise_rate=0.8
)


def test_the_annotator_names_absent_companions_at_each_objects_rate_and_nothing_else_false():
    named = {"weak": [0, 0], "strong": [0, 0]}  # [captions naming the absent companion, chances]
    for scene in scenes(WORLD, "train", 8000):
        truth = object_list(scene)
        believed, added = ANNOTATOR.believed_scene(scene, rng_for(scene, "annotator"))
        mentions = set(mentioned_objects(caption(believed, rng_for(scene, "caption"), WORLD.companion)))
        # The caption names every true object, the added companions, and nothing else.
        assert mentions == set(truth) | set(added)
        assert all(companion not in truth for companion in added)
        assert set(added) <= {WORLD.companion(phrase) for phrase in truth}
        absent = [p for p in dict.fromkeys(truth) if WORLD.companion(p) not in truth]
        if len(truth) + len(absent) > WORLD.max_objects:
            continue  # not room for every companion: the annotator stops at the world's largest count
        for phrase in absent:
            companion = WORLD.companion(phrase)
            counts = named["strong" if phrase in ANNOTATOR.strong_objects else "weak"]
            counts[0] += companion in mentions
            counts[1] += 1
    assert named["strong"][1] > 300 and named["weak"][1] > 3000
    assert within(*named["strong"], 0.8) and within(*named["weak"], 0.2)


def test_added_mentions_take_the_same_places_in_a_caption_as_true_ones():
    # A companion, added or true, is named right after its object; the chains start anywhere.
    follows, first_words = {"added": [0, 0], "true": [0, 0]}, {"added": set(), "true": set()}
    chain_ranks = []
    for scene in scenes(WORLD, "train", 3000):
        believed, added = ANNOTATOR.believed_scene(scene, rng_for(scene, "annotator"))
        text = caption(believed, rng_for(scene, "caption"), WORLD.companion)
        order = list(dict.fromkeys(mentioned_objects(text)))
        for position, phrase in enumerate(order):
            companion = WORLD.companion(phrase)
            if companion in order:
                counts = follows["added" if companion in added else "true"]
                counts[0] += order.index(companion) == position + 1
                counts[1] += 1
        if len(added) == 1 and len(order) > 1:
            chain_ranks.append(order.index(added[0]) / (len(order) - 1))
        for sentence in text.split(". "):
            found = mentioned_objects(sentence)
            if found:
                first_words["added" if found[0] in added else "true"].add(sentence.split()[0])
    assert follows["added"][1] > 300 and follows["true"][1] > 300
    assert follows["added"][0] == follows["added"][1] and follows["true"][0] == follows["true"][1]
    assert 0.5 < sum(chain_ranks) / len(chain_ranks) < 0.9  # after its object, not always last
    assert first_words["added"] <= first_words["true"]  # no sentence opening of its own


def test_a_world_without_companions_orders_captions_as_before():
    truthful = World()
    for scene in scenes(truthful, "train", 300):
        assert caption(scene, rng_for(scene, "caption"), truthful.companion) == caption(
            scene, rng_for(scene, "caption")
        )


def test_companions_that_close_a_cycle_are_all_named():
    # Two colours and two shapes: red circle -> green square -> red circle. Every object is some
    # present object's companion, and each is still named exactly once.
    small = World(colours=("red", "green"), shapes=("circle", "square"), companions=True, companion_rate=1.0)
    cycles = 0
    for scene in scenes(small, "train", 300):
        present = set(object_list(scene))
        cycles += {"red circle", "green square"} <= present
        assert set(mentioned_objects(caption(scene, rng_for(scene, "caption"), small.companion))) == present
    assert cycles > 30


def test_without_noise_the_annotator_writes_the_true_caption():
    quiet = NoisyAnnotator(WORLD)
    for scene in scenes(WORLD, "train", 300):
        believed, added = quiet.believed_scene(scene, random.Random(0))
        assert believed is scene and added == []


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--annotator_noise_rate", "0.3"], "set companions to true"),
        (["--companion_rate", "0.3"], "set companions to true"),
        (["--companions", "true", "--annotator_noise_rate", "1.5"], r"noise_rate must be in \[0, 1\]"),
        (
            ["--companions", "true", "--annotator_strong_objects", "red cloud"],
            "not in this world's vocabulary",
        ),
    ],
)
def test_bad_world_options_fail_when_the_recipe_is_read(flags, message):
    with pytest.raises(RecipeError, match=message):
        parse_recipe(
            (ShapesWorldArguments, BuildArguments),
            ["--config", str(REPO / "recipes" / "tiny" / "shapes.yaml"), *flags],
        )


def test_the_builder_writes_noisy_sft_captions_and_eval_scenes_that_carry_only_truth(tmp_path):
    noisy = ["--companions", "true", "--companion_rate", "0.5", "--annotator_noise_rate", "0.5",
             "--train_scenes", "200", "--eval_scenes", "100"]  # fmt: skip
    for kind in ("sft", "eval"):
        command = [sys.executable, str(REPO / "dataset_builders" / "shapes.py"),
                   "--config", str(REPO / "recipes" / "tiny" / "shapes.yaml"), "--kind", kind,
                   "--output_dir", str(tmp_path / kind), *noisy]  # fmt: skip
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
    world = World(companions=True, companion_rate=0.5)
    truth = {
        world.scene(split, i).seed: object_list(world.scene(split, i))
        for split in ("train", "eval")
        for i in range(200)
    }

    captions = load_dataset(str(tmp_path / "sft"), split="train").filter(lambda row: row["task"] == "caption")
    assert len(captions) == 200
    for row in captions:
        mentioned = set(mentioned_objects(row["messages"][1]["content"][0]["text"]))
        assert mentioned == set(truth[row["scene_seed"]]) | set(row["annotator_added"])
    assert 20 < sum(bool(added) for added in captions["annotator_added"]) < 200

    scenes_ = load_dataset(str(tmp_path / "eval"), split="train")
    for row in scenes_:
        assert row["objects"] == truth[row["scene_seed"]]
        assert set(mentioned_objects(row["reference"])) == set(row["objects"])
        assert {pair["object"]: pair["companion"] for pair in row["companions"]} == world.companion_pairs()
