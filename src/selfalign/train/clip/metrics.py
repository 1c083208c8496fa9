"""The CLIP's held-out measures: image-text retrieval, and telling a present object's sentence
from an absent one's that differs in shape or in colour; and the training losses' summary."""

import math

import torch
from transformers import CLIPModel, CLIPProcessor

from selfalign.train.clip.scenes import EncodedScenes, pad_texts, scene_objects

RETRIEVAL_KS = (1, 5)


@torch.no_grad()
def retrieval_metrics(model: CLIPModel, processor: CLIPProcessor, scenes: EncodedScenes) -> dict[str, float]:
    """Top-k retrieval accuracy between the held-out images and their captions, both directions.

    A hit is the true partner or any scene whose caption is the same string: single-object scenes
    can share a caption word for word, and no scorer could tell those apart.
    """
    model.eval()
    # One batch of every held-out image with its caption: CLIP's loss and its normalised embeddings.
    captions = pad_texts(processor, [scene_ids[0] for scene_ids in scenes.text_ids])
    output = model(pixel_values=scenes.pixel_values, **captions, return_loss=True)
    similarity = output.image_embeds @ output.text_embeds.T  # (images, captions)
    same_caption = torch.tensor(
        [[first == second for second in scenes.captions] for first in scenes.captions], dtype=torch.bool
    )
    metrics = {}
    for direction, scores in (("image_to_text", similarity), ("text_to_image", similarity.T)):
        ranked = scores.argsort(dim=1, descending=True)
        for k in RETRIEVAL_KS:
            hits = same_caption.gather(1, ranked[:, :k]).any(dim=1)
            metrics[f"{direction}_top{k}"] = round(hits.float().mean().item(), 4)
    metrics["contrastive_loss"] = round(output.loss.item(), 4)
    return metrics


@torch.no_grad()
def attribute_discrimination(
    model: CLIPModel, processor: CLIPProcessor, scenes: EncodedScenes
) -> dict[str, float]:
    """How often "There is a <colour> <shape>." about a present object outscores the same sentence
    about an absent object that differs only in shape (or only in colour), over the held-out scenes.

    This is the distinction CSR asks of its scorer at sentence level; chance is 0.5. A scene's
    objects are read from its caption, which names all of them.
    """
    model.eval()
    present = scene_objects(scenes.captions)
    colours = sorted({obj.split()[0] for objects in present for obj in objects})
    shapes = sorted({obj.split()[1] for objects in present for obj in objects})
    vocabulary = [f"{colour} {shape}" for colour in colours for shape in shapes]
    sentences = [f"There is {'an' if obj[0] in 'aeiou' else 'a'} {obj}." for obj in vocabulary]
    texts = pad_texts(processor, processor.tokenizer(sentences)["input_ids"])
    output = model(pixel_values=scenes.pixel_values, **texts)
    similarity = output.image_embeds @ output.text_embeds.T  # (scenes, vocabulary)
    column = {obj: index for index, obj in enumerate(vocabulary)}
    wins: dict[str, list[bool]] = {"shape": [], "colour": []}
    for row, objects in enumerate(present):
        for obj in objects:
            colour, shape = obj.split()
            rivals = {
                "shape": [f"{colour} {other}" for other in shapes],
                "colour": [f"{other} {shape}" for other in colours],
            }
            for attribute, candidates in rivals.items():
                for absent in (candidate for candidate in candidates if candidate not in objects):
                    wins[attribute].append(
                        bool(similarity[row, column[obj]] > similarity[row, column[absent]])
                    )
    return {
        f"{attribute}_discrimination": round(sum(results) / len(results), 4) if results else math.nan
        for attribute, results in wins.items()
    }


def held_out_metrics(model: CLIPModel, processor: CLIPProcessor, scenes: EncodedScenes) -> dict[str, float]:
    return {
        **retrieval_metrics(model, processor, scenes),
        **attribute_discrimination(model, processor, scenes),
    }


def loss_windows(losses: list[float], name: str) -> dict[str, float]:
    """The mean loss over the first and over the last tenth of the steps."""
    window = max(1, len(losses) // 10)
    first, last = losses[:window], losses[-window:]
    return {
        f"{name}_loss_first_steps": round(sum(first) / window, 4),
        f"{name}_loss_last_steps": round(sum(last) / window, 4),
    }
