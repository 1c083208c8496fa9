"""Shapes-world `clip` rows encoded once, before training: pixels, captions, token ids, objects."""

from dataclasses import dataclass

import torch
from transformers import CLIPProcessor

from selfalign.synthetic.language import mentioned_objects


@dataclass
class EncodedScenes:
    """Images as pixel tensors and each scene's texts as token ids, computed once before training."""

    pixel_values: torch.Tensor  # (scenes, 3, H, W)
    captions: list[str]
    text_ids: list[list[list[int]]]  # per scene: token ids of its caption, then of each sentence


def encode_scenes(rows, processor: CLIPProcessor) -> EncodedScenes:
    images = [image.convert("RGB") for image in rows["image"]]
    pixel_values = processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
    texts = [
        [caption, *sentences] for caption, sentences in zip(rows["caption"], rows["sentences"], strict=True)
    ]
    tokenizer = processor.tokenizer
    text_ids = [tokenizer(scene_texts, truncation=True)["input_ids"] for scene_texts in texts]
    return EncodedScenes(pixel_values, list(rows["caption"]), text_ids)


def pad_texts(processor: CLIPProcessor, token_ids: list[list[int]]) -> dict[str, torch.Tensor]:
    return processor.tokenizer.pad({"input_ids": token_ids}, return_tensors="pt")


def scene_objects(captions: list[str]) -> list[set[str]]:
    """Each scene's "<colour> <shape>" objects, read from its caption, which names them all."""
    return [{mention for mention in mentioned_objects(caption) if " " in mention} for caption in captions]
