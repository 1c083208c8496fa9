"""The corpus the tiny tokenizers are trained on: the words of the shapes world, the critic, the
verifier and the reviser prompts, and some general English."""

from __future__ import annotations

import itertools

COLORS = ("red", "green", "blue", "yellow", "purple", "orange", "black", "white", "gray", "pink", "brown")
SHAPES = ("circle", "square", "triangle", "star", "rectangle", "diamond", "heart", "hexagon")
SIZES = ("small", "medium", "large", "big", "tiny")
COUNT_WORDS = ("one", "two", "three", "four")
POSITIONS = (
    "left", "right", "top", "bottom", "center",
    "top left", "top right", "bottom left", "bottom right",
)  # fmt: skip

RELATIONS = ("above", "below", "to the left of", "to the right of", "next to", "far from")

_FIXED_SENTENCES = (
    # The plain-text markers of the chat templates, so that they tokenize into a few pieces.
    "USER: Describe the image. ASSISTANT: There is a red circle.",
    "[INST] What is in the image? [/INST] There is a blue square.",
    "system",
    "user",
    "assistant",
    # Prompts and short answers.
    "Describe the image.",
    "Describe the image in detail.",
    "Describe this picture briefly.",
    "What is in the image?",
    "What do you see in this picture?",
    "What shapes are in the image?",
    "How many shapes are there in the image?",
    "Are there any stars in the image?",
    "Answer with yes or no.",
    "Answer the question using a single word or phrase.",
    "Yes.",
    "No.",
    "Yes, there is.",
    "No, there is not.",
    "There are no shapes in the image.",
    "The image shows a white background with a few coloured shapes.",
    "The background of the image is white.",
    "The shapes do not overlap.",
    "I am not sure.",
    "I can not see that in the image.",
    "You are a helpful assistant.",
    "A chat between a curious human and an artificial intelligence assistant.",
    "The assistant gives helpful, detailed, and polite answers to the human's questions.",
    # Critic (EACO): scoring instructions and the scores format.
    "You are a critic. Evaluate the response to the question about the image.",
    "Rate the response on each dimension with a score from 1 to 5.",
    "Question: What is in the image?",
    "Response: There is a red circle and a blue square.",
    "Helpfulness: 4",
    "Visual Faithfulness: 2",
    "Ethical Considerations: 5",
    "Overall: 3",
    "Rationale: The response mentions a shape that is not in the image.",
    "Rationale: The response is accurate, complete and relevant to the question.",
    "The score is 1, 2, 3, 4 or 5, where 5 is the best.",
    # Verifier and reviser (IPA): criteria, feedback and refinement.
    "Instruction: Describe the colours of the shapes.",
    "Reference answer: There are two shapes, a green star and a yellow triangle.",
    "Compare the response with the reference answer.",
    "Does the response entail the reference answer?",
    "Is the response complete?",
    "Does the response contradict the reference answer?",
    "Does the response follow the instruction?",
    "Entailment: pass",
    "Completeness: fail",
    "No contradiction: pass",
    "Instruction compliance: pass",
    "Feedback: The response misses one shape and gives the wrong colour for another.",
    "Write feedback on the response, then write a refined answer.",
    "Refined answer: The image shows a large orange hexagon at the top right.",
    "The answer is correct.",
    "The answer is incorrect.",
    "The answer is incomplete.",
    # General English, so that prompts outside the shapes world still tokenize into real pieces.
    "The quick brown fox jumps over the lazy dog.",
    "Please think step by step and explain your answer.",
    "This is a photo of a cat sitting on a table next to a cup of coffee.",
    "A man is riding a bicycle down the street while people walk by.",
    "Two children are playing with a ball in the park on a sunny day.",
    "The text in the picture says hello world.",
    "Thank you for your question, I will do my best to help.",
    "The scene contains several objects of different sizes and colours.",
    "Five, six, seven, eight, nine and ten are numbers bigger than four.",
    "Each object is drawn near the middle, the corner or the edge of the picture.",
    "Please look carefully, count every object and mention only what is visible.",
    "The model should not describe things that are not there; that would be a hallucination.",
    "First, second, third and last are words for order; many, few, some, all, none and both are quantities.",
    "It might be bright, dark, light, round, pointed, filled, empty, thin, thick, tall or short.",
    "Although the picture looks simple, because the shapes are small they can be hard to see.",
    "We write, read, ask, tell, show, find, give, make, know, think, believe and check answers.",
    "Which one, when, why, who and whose are question words as well.",
)


def shapes_corpus() -> list[str]:
    """The fixed English corpus the tiny tokenizers are trained on (about 950 sentences)."""
    sentences = list(_FIXED_SENTENCES)
    for i, (color, shape) in enumerate(itertools.product(COLORS, SHAPES)):
        size = SIZES[i % len(SIZES)]
        position = POSITIONS[i % len(POSITIONS)]
        count = COUNT_WORDS[i % len(COUNT_WORDS)]
        plural = "is one" if count == "one" else f"are {count}"
        noun = shape if count == "one" else f"{shape}s"
        relation = RELATIONS[i % len(RELATIONS)]
        other_color, other_shape = COLORS[(i + 3) % len(COLORS)], SHAPES[(i + 5) % len(SHAPES)]
        sentences += [
            f"There is a {color} {shape} in the image.",
            f"There is a {size} {color} {shape} at the {position} of the image.",
            f"Is there a {color} {shape} in the image?",
            f"Yes, there is a {color} {shape}.",
            f"No, there is no {color} {shape} in the image.",
            f"How many {color} {shape}s are there?",
            f"There {plural} {color} {noun}.",
            f"What color is the {shape}? The {shape} is {color}.",
            f"Where is the {color} {shape}? It is at the {position}.",
            f"The {color} {shape} is {relation} the {other_color} {other_shape}.",
        ]
    return sentences
